//! Image decoding: PNG and JPEG (8/16-bit, gray or colour) through the `image` crate, DICOM
//! through the dicom-rs crates. Every decoder yields the same [`DecodedImage`]: float samples
//! in `[0, 1]`, interleaved, 1 or 3 channels, so that preprocessing is one code path.
//!
//! This stage only decodes: it never resizes or normalises (that is [`crate::preprocess`], driven
//! by the bundle) and never guesses a format from a file name, only from the bytes.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder};

use crate::{Error, Result};

/// A decoded image: `height × width × channels` samples in `[0, 1]`, row-major, interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u32,
    /// Samples in `[0, 1]`.
    pub pixels: Vec<f32>,
    /// What the decoder read, for reports.
    pub source: SourceInfo,
}

/// What kind of file an image came from and how its values were mapped to `[0, 1]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum SourceInfo {
    /// A PNG file.
    Png {
        /// Bits per sample in the file.
        bit_depth: u8,
    },
    /// A JPEG file.
    Jpeg,
    /// A DICOM file.
    Dicom {
        /// (0008,0060) Modality, when present.
        modality: Option<String>,
        /// Photometric interpretation of the stored pixels.
        photometric: String,
        /// Bits stored per sample.
        bits_stored: u16,
        /// How stored values were mapped to `[0, 1]`.
        windowing: String,
    },
}

/// The file formats recognised from their leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// PNG signature.
    Png,
    /// JPEG SOI marker.
    Jpeg,
    /// DICOM Part 10: 128-byte preamble then `DICM`.
    Dicom,
}

/// Recognises the format from the magic bytes.
pub fn sniff(bytes: &[u8]) -> Option<FileFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(FileFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(FileFormat::Jpeg)
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(FileFormat::Dicom)
    } else {
        None
    }
}

/// Reads and decodes an image file.
pub fn decode_file(path: &Path) -> Result<DecodedImage> {
    let bytes = crate::persist::read(path)?;
    decode_bytes(path, &bytes)
}

/// Decodes an image held in memory; `path` is only used to name the image in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    match sniff(bytes) {
        Some(FileFormat::Png) | Some(FileFormat::Jpeg) => decode_raster(path, bytes),
        Some(FileFormat::Dicom) => decode_dicom(path, bytes),
        None => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: if bytes.is_empty() {
                "the file is empty".into()
            } else {
                "unrecognised leading bytes".into()
            },
        }),
    }
}

/// The DICOM attributes that group images by case, read without decoding pixels.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DicomIdentity {
    /// (0010,0020) Patient ID.
    pub patient_id: Option<String>,
    /// (0020,000D) Study Instance UID.
    pub study_uid: Option<String>,
    /// (0020,000E) Series Instance UID.
    pub series_uid: Option<String>,
    /// (0008,0018) SOP Instance UID.
    pub sop_instance_uid: Option<String>,
}

/// Reads a DICOM file's header up to the pixel data: who and which study it belongs to.
pub fn read_dicom_identity(path: &Path) -> Result<DicomIdentity> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| Error::Decode {
            path: path.to_path_buf(),
            reason: format!("malformed DICOM header: {e}"),
        })?;
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Ok(DicomIdentity {
        patient_id: text(tags::PATIENT_ID),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        series_uid: text(tags::SERIES_INSTANCE_UID),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
    })
}

fn decode_raster(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    let format = image::guess_format(bytes).map_err(|e| decode_error(path, e))?;
    let source = match format {
        image::ImageFormat::Png => SourceInfo::Png { bit_depth: 0 },
        _ => SourceInfo::Jpeg,
    };
    let img =
        image::load_from_memory_with_format(bytes, format).map_err(|e| decode_error(path, e))?;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(decode_error(path, "image has no pixels"));
    }
    let color = img.color();
    let source = match source {
        SourceInfo::Png { .. } => SourceInfo::Png {
            bit_depth: (color.bits_per_pixel() / u16::from(color.channel_count())) as u8,
        },
        other => other,
    };
    // Colour images keep three channels; gray and gray+alpha become one channel. Alpha is
    // dropped: medical images do not use it, and compositing would invent background values.
    let (channels, pixels) = if color.has_color() {
        (3, img.into_rgb32f().into_raw())
    } else {
        (1, img.to_luma32f().into_raw())
    };
    Ok(DecodedImage {
        width,
        height,
        channels,
        pixels,
        source,
    })
}

fn decode_dicom(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    let err = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let obj = dicom_object::from_reader(&bytes[128..])
        .map_err(|e| err(format!("malformed DICOM: {e}")))?;
    let modality = obj
        .element_opt(tags::MODALITY)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string());
    let pixel = obj
        .decode_pixel_data_frame(0)
        .map_err(|e| err(format!("cannot decode pixel data: {e}")))?;
    let (width, height) = (pixel.columns(), pixel.rows());
    let samples = u32::from(pixel.samples_per_pixel());
    let photometric = pixel.photometric_interpretation().clone();
    let bits_stored = pixel.bits_stored();
    if width == 0 || height == 0 {
        return Err(err("image has no pixels".into()));
    }
    // Stored values with the modality LUT (rescale slope/intercept) applied.
    let values: Vec<f32> = pixel
        .to_vec_frame(0)
        .map_err(|e| err(format!("cannot read pixel values: {e}")))?;
    let expected = width as usize * height as usize * samples as usize;
    if values.len() != expected {
        return Err(err(format!(
            "pixel data holds {} samples, {width}x{height}x{samples} expected (truncated?)",
            values.len()
        )));
    }
    let (channels, pixels, windowing) = match (&photometric, samples) {
        (PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2, 1) => {
            let window = pixel
                .window()
                .ok()
                .flatten()
                .and_then(|w| w.first().copied());
            let (mut mapped, how) = match window {
                Some(w) if w.width >= 1.0 => (
                    values
                        .iter()
                        .map(|&v| linear_window(f64::from(v), w.center, w.width))
                        .collect(),
                    format!("window center {} width {}", w.center, w.width),
                ),
                _ => {
                    let (lo, hi) = min_max(&values);
                    let span = if hi > lo { hi - lo } else { 1.0 };
                    (
                        values
                            .iter()
                            .map(|&v| (v - lo) / span)
                            .collect::<Vec<f32>>(),
                        format!("min-max {lo}..{hi}"),
                    )
                }
            };
            if photometric == PhotometricInterpretation::Monochrome1 {
                mapped.iter_mut().for_each(|v| *v = 1.0 - *v);
            }
            (1, mapped, how)
        }
        (PhotometricInterpretation::Rgb, 3) => {
            let max = ((1_u32 << bits_stored.min(16)) - 1) as f32;
            (
                3,
                values.iter().map(|&v| (v / max).clamp(0.0, 1.0)).collect(),
                "full range".into(),
            )
        }
        (other, n) => {
            return Err(err(format!(
                "photometric interpretation {other} with {n} samples per pixel is not supported yet"
            )))
        }
    };
    Ok(DecodedImage {
        width,
        height,
        channels,
        pixels,
        source: SourceInfo::Dicom {
            modality,
            photometric: photometric.to_string(),
            bits_stored,
            windowing,
        },
    })
}

/// DICOM PS3.3 C.11.2.1.2.1 linear VOI function, mapped to `[0, 1]` instead of an integer
/// output range (dicom-pixeldata applies windows only when producing integer images).
fn linear_window(x: f64, center: f64, width: f64) -> f32 {
    let lower = center - 0.5 - (width - 1.0) / 2.0;
    let upper = center - 0.5 + (width - 1.0) / 2.0;
    if x <= lower {
        0.0
    } else if x > upper {
        1.0
    } else {
        (((x - (center - 0.5)) / (width - 1.0)) + 0.5).clamp(0.0, 1.0) as f32
    }
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn decode_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The decoded image (after DICOM rescale and windowing: the values the preprocessing starts
/// from) as a 16-bit PNG, grayscale or RGB, at its native size — for a person to check what the
/// model is given.
pub fn to_png16(image: &DecodedImage, path: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let samples: Vec<u16> = image
        .pixels
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let dynamic = match image.channels {
        1 => {
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(image.width, image.height, samples)
                .map(image::DynamicImage::ImageLuma16)
        }
        3 => image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(image.width, image.height, samples)
            .map(image::DynamicImage::ImageRgb16),
        c => return Err(bad(format!("{c} channels cannot be written as PNG"))),
    }
    .ok_or_else(|| bad("decoded buffer does not match its size".into()))?;
    let mut png = Vec::new();
    dynamic
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| bad(format!("PNG encoding failed: {e}")))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats_from_bytes_not_names() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some(FileFormat::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(FileFormat::Jpeg));
        let mut dicom = vec![0_u8; 128];
        dicom.extend_from_slice(b"DICM");
        assert_eq!(sniff(&dicom), Some(FileFormat::Dicom));
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn linear_window_follows_the_dicom_formula() {
        assert_eq!(linear_window(-1000.0, 40.0, 400.0), 0.0);
        assert_eq!(linear_window(1000.0, 40.0, 400.0), 1.0);
        let mid = linear_window(39.5, 40.0, 400.0);
        assert!((mid - 0.5).abs() < 1e-6, "{mid}");
    }

    #[test]
    fn empty_and_unknown_files_get_a_clear_error() {
        let e = decode_bytes(Path::new("x.png"), b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.png") && e.contains("empty"), "{e}");
        let e = decode_bytes(Path::new("y.bin"), b"hello")
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.bin") && e.contains("not a PNG"), "{e}");
    }

    #[test]
    fn truncated_png_is_a_decode_error_not_a_panic() {
        let mut png = Vec::new();
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let e = decode_bytes(Path::new("cut.png"), &png[..png.len() / 2]).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
    }

    #[test]
    fn sixteen_bit_gray_png_keeps_its_precision() {
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 1, |x, _| {
            image::Luma([x as u16 * 20_000])
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let d = decode_bytes(Path::new("g16.png"), &png).unwrap();
        assert_eq!(
            (d.channels, d.source.clone()),
            (1, SourceInfo::Png { bit_depth: 16 })
        );
        assert!((d.pixels[1] - 20_000.0 / 65_535.0).abs() < 1e-6);
    }
}
