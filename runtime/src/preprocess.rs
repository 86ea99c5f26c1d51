//! Preprocessing: turns a [`DecodedImage`] into the model's input tensor (`C×H×W`, normalised).
//!
//! The settings come from the bundle's manifest, never from command-line flags, and the trainer
//! calls these same functions when it builds its datasets, so a model is always fed exactly
//! the pixels it was trained on.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb};
use serde::{Deserialize, Serialize};

use crate::decode::{DecodedImage, DicomFrames, DicomWindow};
use crate::{Error, Result};

/// How images become model inputs. Saved with the training config and inside every bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Model input height in pixels.
    pub height: u32,
    /// Model input width in pixels.
    pub width: u32,
    /// Model input channels: 1 (gray images; colour is converted with Rec. 601 luma) or 3
    /// (colour; gray is replicated).
    pub channels: u32,
    /// Per-channel mean subtracted after resizing (values in `[0, 1]` units).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
    /// How the image is brought to the model's size.
    #[serde(default)]
    pub resize: ResizeMethod,
    /// How monochrome DICOM values are mapped to `[0, 1]` (VOI windowing; the decoder applies
    /// it); the runtime takes it from the bundle, never from a flag.
    #[serde(default)]
    pub dicom_window: DicomWindow,
    /// Which frames of a multi-frame DICOM file are screened (the decoder reads them).
    #[serde(default)]
    pub dicom_frames: DicomFrames,
}

/// Resizing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    /// Scale the whole image to the model size (aspect ratio not kept), antialiased bilinear.
    /// Nothing is cropped, so a lesion at the border of the field of view is never cut off.
    #[default]
    StretchBilinear,
}

impl PreprocessConfig {
    /// A config for `size × size` inputs with the given channel count and normalisation.
    pub fn new(size: u32, channels: u32, mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self {
            height: size,
            width: size,
            channels,
            mean,
            std,
            resize: ResizeMethod::StretchBilinear,
            dicom_window: DicomWindow::File,
            dicom_frames: DicomFrames::First,
        }
    }

    /// Number of floats in one input tensor.
    pub fn input_len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    /// Checks the settings are usable; `path` names the file they came from.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Bundle {
                path: path.to_path_buf(),
                reason,
            })
        };
        if !(self.channels == 1 || self.channels == 3) {
            return bad(format!(
                "preprocess.channels must be 1 or 3, not {}",
                self.channels
            ));
        }
        if self.height == 0 || self.width == 0 || self.height > 4096 || self.width > 4096 {
            return bad(format!(
                "preprocess size {}x{} is out of range",
                self.width, self.height
            ));
        }
        if self.mean.len() != self.channels as usize || self.std.len() != self.channels as usize {
            return bad("preprocess.mean and preprocess.std need one value per channel".into());
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return bad("preprocess.std must be positive and mean finite".into());
        }
        Ok(())
    }
}

/// Resizes and converts channels: `C×H×W` values still in `[0, 1]` (not normalised).
/// The trainer caches this form and normalises per batch after augmentation.
pub fn to_model_pixels(
    image: &DecodedImage,
    config: &PreprocessConfig,
    path: &Path,
) -> Result<Vec<f32>> {
    let expected = image.width as usize * image.height as usize * image.channels as usize;
    if image.pixels.len() != expected || image.width == 0 || image.height == 0 {
        return Err(Error::Preprocess {
            path: path.to_path_buf(),
            reason: format!(
                "decoded buffer has {} samples, {expected} expected",
                image.pixels.len()
            ),
        });
    }
    let (w, h) = (image.width, image.height);
    let gray_or_rgb: Vec<f32> = match (image.channels, config.channels) {
        (1, 1) | (3, 3) => image.pixels.clone(),
        (1, 3) => image.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        (3, 1) => image
            .pixels
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect(),
        (c, m) => {
            return Err(Error::Preprocess {
                path: path.to_path_buf(),
                reason: format!("cannot map a {c}-channel image to {m} model channels"),
            })
        }
    };
    let (nw, nh) = (config.width, config.height);
    let hwc: Vec<f32> = if config.channels == 1 {
        let buf =
            ImageBuffer::<Luma<f32>, _>::from_raw(w, h, gray_or_rgb).expect("length checked above");
        resize(&buf, nw, nh).into_raw()
    } else {
        let buf =
            ImageBuffer::<Rgb<f32>, _>::from_raw(w, h, gray_or_rgb).expect("length checked above");
        resize(&buf, nw, nh).into_raw()
    };
    let c = config.channels as usize;
    let plane = (nw * nh) as usize;
    let mut chw = vec![0.0; c * plane];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * plane + i] = v.clamp(0.0, 1.0);
        }
    }
    Ok(chw)
}

fn resize<P>(buf: &ImageBuffer<P, Vec<f32>>, w: u32, h: u32) -> ImageBuffer<P, Vec<f32>>
where
    P: image::Pixel<Subpixel = f32> + 'static,
{
    if buf.width() == w && buf.height() == h {
        return buf.clone();
    }
    // Triangle = bilinear, widened when shrinking so that downscaling is antialiased.
    imageops::resize(buf, w, h, FilterType::Triangle)
}

/// Normalises `C×H×W` pixels in place with the config's mean and std.
pub fn normalize_in_place(chw: &mut [f32], config: &PreprocessConfig) {
    let plane = (config.width * config.height) as usize;
    for (ch, values) in chw.chunks_mut(plane).enumerate() {
        let (m, s) = (config.mean[ch], config.std[ch]);
        values.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// The full path from decoded image to model input.
pub fn preprocess(
    image: &DecodedImage,
    config: &PreprocessConfig,
    path: &Path,
) -> Result<Vec<f32>> {
    let mut chw = to_model_pixels(image, config, path)?;
    normalize_in_place(&mut chw, config);
    Ok(chw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_without_a_windowing_policy_use_the_files_window() {
        let old: PreprocessConfig = serde_json::from_str(
            r#"{"height":4,"width":4,"channels":3,"mean":[0,0,0],"std":[1,1,1]}"#,
        )
        .unwrap();
        assert_eq!(old.dicom_window, DicomWindow::File);
        let fixed: DicomWindow =
            serde_json::from_str(r#"{"policy":"fixed","center":-600,"width":1500}"#).unwrap();
        assert_eq!(
            fixed,
            DicomWindow::Fixed {
                center: -600.0,
                width: 1500.0
            }
        );
    }
    use crate::decode::SourceInfo;

    fn image(w: u32, h: u32, channels: u32, f: impl Fn(usize) -> f32) -> DecodedImage {
        let n = (w * h * channels) as usize;
        DecodedImage {
            width: w,
            height: h,
            channels,
            pixels: (0..n).map(f).collect(),
            source: SourceInfo::Jpeg,
        }
    }

    #[test]
    fn output_is_channel_major_and_normalised() {
        let cfg = PreprocessConfig::new(2, 3, vec![0.5, 0.5, 0.5], vec![0.25, 0.25, 0.25]);
        // Constant colour image: every output pixel of channel c equals (value_c - 0.5) / 0.25.
        let img = image(5, 3, 3, |i| [0.0, 0.5, 1.0][i % 3]);
        let x = preprocess(&img, &cfg, Path::new("t")).unwrap();
        assert_eq!(x.len(), 12);
        for (ch, want) in [-2.0_f32, 0.0, 2.0].iter().enumerate() {
            assert!(
                x[ch * 4..ch * 4 + 4]
                    .iter()
                    .all(|v| (v - want).abs() < 1e-5),
                "{x:?}"
            );
        }
    }

    #[test]
    fn gray_is_replicated_and_colour_becomes_luma() {
        let to_rgb = PreprocessConfig::new(1, 3, vec![0.0; 3], vec![1.0; 3]);
        let x = to_model_pixels(&image(1, 1, 1, |_| 0.25), &to_rgb, Path::new("t")).unwrap();
        assert_eq!(x, vec![0.25, 0.25, 0.25]);
        let to_gray = PreprocessConfig::new(1, 1, vec![0.0], vec![1.0]);
        let x = to_model_pixels(
            &image(1, 1, 3, |i| [1.0, 0.0, 0.0][i]),
            &to_gray,
            Path::new("t"),
        )
        .unwrap();
        assert!((x[0] - 0.299).abs() < 1e-6);
    }

    #[test]
    fn validate_rejects_mismatched_normalisation() {
        let mut cfg = PreprocessConfig::new(32, 3, vec![0.5; 3], vec![0.2; 3]);
        cfg.std = vec![0.2; 2];
        let e = cfg
            .validate(Path::new("manifest.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest.json") && e.contains("one value per channel"),
            "{e}"
        );
    }
}
