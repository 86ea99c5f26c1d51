//! Image decoding: PNG and JPEG (8/16-bit, gray or colour) through the `image` crate
//! (`raster`), DICOM through the dicom-rs crates (`dicom`; JPEG-LS through `jpegls`, then
//! as native data). Every decoder yields the same [`DecodedImage`]: float samples in `[0, 1]`,
//! interleaved, 1 or 3 channels, so that preprocessing is one code path.
//!
//! The DICOM policies a bundle prescribes ([`DicomWindow`], [`DicomFrames`]) are defined here,
//! beside the code that applies them; the bundle's preprocessing settings only name them.
//!
//! This stage only decodes: it never resizes or normalises (that is [`crate::preprocess`], driven
//! by the bundle) and never guesses a format from a file name, only from the bytes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod attributes;
mod dicom;
mod dicomdir;
mod encapsulated;
mod j2k;
mod jpeg;
pub mod jpegls;
mod lut;
mod native;
mod part10;
mod pixel_module;
mod raster;
mod rle;
mod voi;

pub use dicom::{
    dicom_attributes_from_bytes, dicom_identity_from_bytes, dicom_image,
    dicom_study_header_from_bytes, read_dicom_frames, read_dicom_identity, read_dicom_values,
    DicomAttributes, DicomIdentity, DicomStudyHeader, DicomValues, MAX_FRAMES,
};
pub use dicomdir::{dicomdir_references, is_dicomdir, MEDIA_STORAGE_DIRECTORY};
pub use lut::LookupTable;
pub use part10::{MAX_INFLATED_BYTES, MAX_SEQUENCE_DEPTH};
pub use voi::VoiFunction;

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

impl DecodedImage {
    /// The channels the content has: 1 for a grey image, also for one stored as three equal
    /// channels (chest films saved as RGB PNGs; JPEG's rounding of such an image allowed for),
    /// otherwise its channels.
    pub fn content_channels(&self) -> u32 {
        const TOLERANCE: f32 = 3.0 / 255.0;
        let grey_in_colour = self.channels == 3
            && self
                .pixels
                .chunks_exact(3)
                .all(|p| (p[0] - p[1]).abs() <= TOLERANCE && (p[0] - p[2]).abs() <= TOLERANCE);
        if grey_in_colour {
            1
        } else {
            self.channels
        }
    }
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
/// Monochrome DICOM is windowed with the file's own window ([`DicomWindow::File`]).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    decode_bytes_with(path, bytes, DicomWindow::File)
}

/// [`decode_bytes`] with the windowing policy a bundle prescribes.
pub fn decode_bytes_with(path: &Path, bytes: &[u8], window: DicomWindow) -> Result<DecodedImage> {
    match sniff(bytes) {
        Some(FileFormat::Png) | Some(FileFormat::Jpeg) => raster::decode(path, bytes),
        Some(FileFormat::Dicom) => Ok(dicom_image(read_dicom_values(path, bytes)?, window)),
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

/// The windowing policy for monochrome DICOM images: a bundle's preprocessing names it, the
/// decoder applies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum DicomWindow {
    /// The file's VOI LUT Sequence, else its first window centre/width (0028,1050/1051) with
    /// its VOI LUT Function; min–max when it has neither. What the trainer trains with.
    #[default]
    File,
    /// Always the image's own minimum and maximum.
    MinMax,
    /// One window for every file (e.g. a lung window for CT), in modality units.
    Fixed {
        /// Window centre.
        center: f64,
        /// Window width (≥ 1).
        width: f64,
    },
}

/// The frame policy for multi-frame DICOM files (cine loops, tomosynthesis, enhanced objects):
/// a bundle's preprocessing names it, the decoder applies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DicomFrames {
    /// The first frame only (what the trainer trains with).
    #[default]
    First,
    /// Every frame (up to [`MAX_FRAMES`]), each screened on its own; the file's result is the
    /// per-class maximum, with each frame's result beside it.
    Every,
}

/// The largest image decoded (rows × columns): 8192 × 8192, above any radiograph or
/// mammogram; a 30k × 30k slide or a forged header is refused before memory is spent on it.
pub const MAX_PIXELS: u64 = 8192 * 8192;

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
    fn grey_stored_as_three_equal_channels_counts_as_grey() {
        let image = |pixels: Vec<f32>| DecodedImage {
            width: 2,
            height: 1,
            channels: 3,
            pixels,
            source: SourceInfo::Jpeg,
        };
        let jpeg_grey = image(vec![0.5, 0.5 + 2.0 / 255.0, 0.5, 0.1, 0.1, 0.1]);
        assert_eq!(jpeg_grey.content_channels(), 1);
        let colour = image(vec![0.5, 0.3, 0.2, 0.1, 0.1, 0.1]);
        assert_eq!(colour.content_channels(), 3);
    }

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
