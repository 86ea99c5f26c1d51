//! DICOM files: the header read and checked once, then each frame the [`DicomFrames`] policy
//! asks for decompressed (JPEG baseline/extended/lossless, RLE, JPEG 2000, deflate through
//! dicom-pixeldata; JPEG-LS through `encapsulated`) into [`DicomValues`] — the modality-LUT
//! output, colour converted to RGB — and, by [`dicom_image`], mapped to `[0, 1]` with the
//! [`DicomWindow`] policy. It never resizes or normalises.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_pixeldata::{DecodedPixelData, PhotometricInterpretation, PixelDecoder};

use super::encapsulated::{is_jpeg_ls, jpeg_ls_frame, native_header, DicomFile};
use super::lut::{apply_palette, sequence_lut, LookupTable};
use super::voi::{Voi, VoiFunction};
use super::{decode_error, DecodedImage, DicomFrames, DicomWindow, SourceInfo, MAX_PIXELS};
use crate::{Error, Result};

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
        .map_err(|e| malformed_header(path, e))?;
    Ok(identity_of(&obj))
}

/// [`read_dicom_identity`] of a file already in memory (Part 10 bytes, preamble included).
pub fn dicom_identity_from_bytes(path: &Path, bytes: &[u8]) -> Result<DicomIdentity> {
    let body = bytes
        .get(128..)
        .ok_or_else(|| malformed_header(path, "shorter than the 128-byte preamble"))?;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(body)
        .map_err(|e| malformed_header(path, e))?;
    Ok(identity_of(&obj))
}

fn malformed_header(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        reason: format!("malformed DICOM header: {e}"),
    }
}

fn identity_of(obj: &dicom_object::InMemDicomObject) -> DicomIdentity {
    let text = |tag| text_element(obj, tag);
    DicomIdentity {
        patient_id: text(tags::PATIENT_ID),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        series_uid: text(tags::SERIES_INSTANCE_UID),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
    }
}

/// A text attribute, trimmed of DICOM padding; `None` when absent or empty.
fn text_element(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A DICOM image's frame before windowing: what pydicom calls the modality-LUT output.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomValues {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// 1 (monochrome) or 3 (RGB after colour-space conversion or palette lookup).
    pub channels: u32,
    /// Monochrome: stored values after rescale slope/intercept. Colour: R, G, B on the stored
    /// scale (0..2^bits - 1; palette entries on their 16-bit or 8-bit scale).
    pub values: Vec<f32>,
    /// The photometric interpretation in the file.
    pub photometric: String,
    /// Bits stored per sample (for palette images, bits per palette entry).
    pub bits_stored: u16,
    /// Frames in the file.
    pub frames: u32,
    /// Which frame this is (0-based).
    pub frame: u32,
    /// The transfer syntax UID.
    pub transfer_syntax: String,
    /// (0008,0060) Modality.
    pub modality: Option<String>,
    /// Window centre and width, when the file has one.
    pub window: Option<(f64, f64)>,
    /// (0028,1056) VOI LUT Function the file's window is meant with.
    pub voi_function: VoiFunction,
    /// The first table of the VOI LUT Sequence, when the file has one (the `file` policy
    /// prefers it to the window, as pydicom's `apply_voi_lut` does).
    pub voi_lut: Option<LookupTable>,
}

/// Reads a DICOM file's first frame: decompresses it (JPEG baseline/extended/lossless, RLE,
/// JPEG 2000, deflate), applies the modality LUT to monochrome images, converts YBR to RGB and
/// looks palette colour up. `path` names the file in errors.
pub fn read_dicom_values(path: &Path, bytes: &[u8]) -> Result<DicomValues> {
    let mut first = None;
    read_dicom_frames(path, bytes, DicomFrames::First, |values| {
        first = Some(values);
        Ok(())
    })?;
    first.ok_or_else(|| decode_error(path, "no frame decoded"))
}

/// The most frames [`read_dicom_frames`] decodes from one file under [`DicomFrames::Every`];
/// a longer file is refused (a forged Number of Frames cannot make a screening run endless).
pub const MAX_FRAMES: u32 = 1024;

/// [`read_dicom_values`] for the frames the policy asks for, handing each to `each` in order
/// as soon as it is decoded (one frame in memory at a time). The header is parsed and checked
/// once.
pub fn read_dicom_frames(
    path: &Path,
    bytes: &[u8],
    policy: DicomFrames,
    mut each: impl FnMut(DicomValues) -> Result<()>,
) -> Result<()> {
    let err = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let obj = parse_part10(bytes).map_err(err)?;
    let layout = FrameLayout::read(&obj, policy).map_err(err)?;
    for frame in 0..layout.decoded_frames {
        each(layout.frame(&obj, frame).map_err(err)?)?;
    }
    Ok(())
}

/// The data set of a Part 10 file (after its 128-byte preamble and `DICM`).
fn parse_part10(bytes: &[u8]) -> std::result::Result<DicomFile, String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("no DICOM Part 10 header (128-byte preamble + DICM)".into());
    }
    dicom_object::from_reader(&bytes[128..]).map_err(|e| format!("malformed DICOM: {e}"))
}

/// What the header says about every frame of a file, read and checked once.
struct FrameLayout {
    transfer_syntax: String,
    modality: Option<String>,
    rows: u64,
    cols: u64,
    /// Frames in the file.
    frames: u32,
    /// Frames the policy decodes.
    decoded_frames: u32,
    photometric_in_file: String,
    big_endian: bool,
    modality_lut: Option<LookupTable>,
    voi_function: VoiFunction,
    voi_lut: Option<LookupTable>,
    /// For JPEG-LS: the header without the encapsulated pixel data, as explicit VR little
    /// endian; each frame's decoded samples are put into a copy of it.
    native_header: Option<DicomFile>,
}

impl FrameLayout {
    /// Reads and checks the header: an image, of a size and frame count within the limits,
    /// with lookup tables and a VOI LUT Function this decoder knows.
    fn read(obj: &DicomFile, policy: DicomFrames) -> std::result::Result<Self, String> {
        let transfer_syntax = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let text = |tag| text_element(obj, tag);
        let uint = |tag| {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u32>().ok())
        };
        let modality = text(tags::MODALITY);
        if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            return Err(format!(
                "no pixel data (modality {}, SOP class {}): not an image",
                modality.as_deref().unwrap_or("unknown"),
                text(tags::SOP_CLASS_UID).as_deref().unwrap_or("unknown")
            ));
        }
        let (rows, cols) = (
            u64::from(uint(tags::ROWS).unwrap_or(0)),
            u64::from(uint(tags::COLUMNS).unwrap_or(0)),
        );
        if rows == 0 || cols == 0 {
            return Err("image has no pixels (Rows or Columns is 0 or missing)".into());
        }
        if rows * cols > MAX_PIXELS {
            return Err(format!(
                "{cols}x{rows} pixels is larger than the {MAX_PIXELS}-pixel limit"
            ));
        }
        let frames = text(tags::NUMBER_OF_FRAMES)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let decoded_frames = match policy {
            DicomFrames::First => 1,
            DicomFrames::Every if frames > MAX_FRAMES => {
                return Err(format!(
                    "{frames} frames is more than the {MAX_FRAMES}-frame limit of the every-frame policy"
                ))
            }
            DicomFrames::Every => frames,
        };
        let photometric_in_file = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
        let big_endian = transfer_syntax == "1.2.840.10008.1.2.2";
        let modality_lut = sequence_lut(
            obj,
            tags::MODALITY_LUT_SEQUENCE,
            "Modality LUT Sequence",
            big_endian,
        )?;
        let voi_function = match text(tags::VOILUT_FUNCTION).as_deref() {
            None | Some("LINEAR") | Some("") => VoiFunction::Linear,
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            Some(other) => {
                return Err(format!(
                    "VOI LUT Function {other:?} is not one of LINEAR, LINEAR_EXACT, SIGMOID"
                ))
            }
        };
        // Read once for all frames (a VOI LUT can hold 65,536 entries).
        let voi_lut = if photometric_in_file.starts_with("MONOCHROME") {
            sequence_lut(obj, tags::VOILUT_SEQUENCE, "VOI LUT Sequence", big_endian)?
        } else {
            None
        };
        let native_header = is_jpeg_ls(&transfer_syntax).then(|| native_header(obj));
        Ok(Self {
            transfer_syntax,
            modality,
            rows,
            cols,
            frames,
            decoded_frames,
            photometric_in_file,
            big_endian,
            modality_lut,
            voi_function,
            voi_lut,
            native_header,
        })
    }

    /// Decodes frame `frame` (0-based) of `obj` into its values.
    fn frame(&self, obj: &DicomFile, frame: u32) -> std::result::Result<DicomValues, String> {
        let native_frame;
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "cannot decode pixel data of frame {} ({}): {e}",
                frame + 1,
                self.transfer_syntax
            )
        };
        let pixel = match &self.native_header {
            Some(header) => {
                native_frame =
                    jpeg_ls_frame(obj, header, frame, self.frames, self.rows * self.cols)
                        .map_err(|e| cannot(&e))?;
                native_frame.decode_pixel_data_frame(0)
            }
            None => obj.decode_pixel_data_frame(frame),
        }
        .map_err(|e| cannot(&e))?;
        let window = self.window(&pixel);
        let (channels, values, bits_stored) = self.samples(obj, &pixel)?;
        Ok(DicomValues {
            width: pixel.columns(),
            height: pixel.rows(),
            channels,
            values,
            photometric: self.photometric_in_file.clone(),
            bits_stored,
            frames: self.frames,
            frame,
            transfer_syntax: self.transfer_syntax.clone(),
            modality: self.modality.clone(),
            window,
            voi_function: self.voi_function,
            voi_lut: self.voi_lut.clone(),
        })
    }

    /// The frame's first window `(center, width)`, when it has a usable one.
    fn window(&self, pixel: &DecodedPixelData<'_>) -> Option<(f64, f64)> {
        pixel
            .window()
            .ok()
            .flatten()
            .and_then(|w| w.first().copied())
            // LINEAR needs width ≥ 1 (it divides by width − 1), the others width > 0.
            .filter(|w| {
                w.width.is_finite()
                    && w.center.is_finite()
                    && if self.voi_function == VoiFunction::Linear {
                        w.width >= 1.0
                    } else {
                        w.width > 0.0
                    }
            })
            .map(|w| (w.center, w.width))
    }

    /// The frame's channels, values and bits per value: monochrome with the modality LUT
    /// applied, palette colour looked up, YBR converted to RGB.
    fn samples(
        &self,
        obj: &DicomFile,
        pixel: &DecodedPixelData<'_>,
    ) -> std::result::Result<(u32, Vec<f32>, u16), String> {
        let (width, height) = (pixel.columns(), pixel.rows());
        let samples = u32::from(pixel.samples_per_pixel());
        let photometric = pixel.photometric_interpretation().clone();
        let bits_stored = pixel.bits_stored();
        let pixel_count = width as usize * height as usize;
        let check_len = |n: usize, per_pixel: usize| {
            if n == pixel_count * per_pixel {
                Ok(())
            } else {
                Err(format!(
                    "pixel data holds {n} samples, {width}x{height}x{per_pixel} expected (truncated?)"
                ))
            }
        };
        match (&photometric, samples) {
            (
                PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2,
                1,
            ) => {
                // Stored values with the modality LUT applied: rescale slope/intercept (by
                // dicom-pixeldata, also from enhanced objects' functional groups) or a LUT.
                let mut values: Vec<f32> = pixel
                    .to_vec_frame(0)
                    .map_err(|e| format!("cannot read pixel values: {e}"))?;
                check_len(values.len(), 1)?;
                if let Some(lut) = &self.modality_lut {
                    values.iter_mut().for_each(|v| *v = lut.look_up(*v));
                }
                Ok((1, values, bits_stored))
            }
            (PhotometricInterpretation::PaletteColor, 1) => {
                let indices: Vec<f32> = pixel
                    .to_vec_frame(0)
                    .map_err(|e| format!("cannot read palette indices: {e}"))?;
                check_len(indices.len(), 1)?;
                let (values, bits) = apply_palette(obj, &indices, self.big_endian)?;
                Ok((3, values, bits))
            }
            (
                PhotometricInterpretation::Rgb
                | PhotometricInterpretation::YbrFull
                | PhotometricInterpretation::YbrFull422,
                3,
            ) => {
                let mut values = color_samples(pixel, pixel_count)?;
                check_len(values.len(), 3)?;
                if photometric != PhotometricInterpretation::Rgb {
                    let max = ((1_u32 << bits_stored.min(16)) - 1) as f32;
                    ybr_full_to_rgb(&mut values, max);
                }
                Ok((3, values, bits_stored))
            }
            (other, n) => Err(format!(
                "photometric interpretation {other} with {n} samples per pixel is not supported"
            )),
        }
    }
}

/// Maps a DICOM frame's values to `[0, 1]`: monochrome by the windowing policy (MONOCHROME1
/// inverted), colour by the stored bit depth.
pub fn dicom_image(dicom: DicomValues, policy: DicomWindow) -> DecodedImage {
    let (pixels, windowing) = if dicom.channels == 1 {
        let voi = Voi::choose(
            policy,
            dicom.voi_lut.as_ref(),
            dicom.window,
            dicom.voi_function,
        );
        let (mut mapped, how) = voi.apply(&dicom.values);
        if dicom.photometric == "MONOCHROME1" {
            mapped.iter_mut().for_each(|v| *v = 1.0 - *v);
        }
        (mapped, how)
    } else {
        let max = ((1_u32 << dicom.bits_stored.clamp(1, 16)) - 1) as f32;
        (
            dicom
                .values
                .iter()
                .map(|&v| (v / max).clamp(0.0, 1.0))
                .collect(),
            "full range".into(),
        )
    };
    DecodedImage {
        width: dicom.width,
        height: dicom.height,
        channels: dicom.channels,
        pixels,
        source: SourceInfo::Dicom {
            modality: dicom.modality,
            photometric: dicom.photometric,
            bits_stored: dicom.bits_stored,
            windowing,
        },
    }
}

/// A colour frame's samples, interleaved (R G B R G B ...), from either planar configuration
/// (dicom-pixeldata converts only the interleaved one).
fn color_samples(
    pixel: &dicom_pixeldata::DecodedPixelData<'_>,
    pixel_count: usize,
) -> std::result::Result<Vec<f32>, String> {
    if pixel.planar_configuration() == dicom_pixeldata::PlanarConfiguration::Standard {
        return pixel
            .to_vec_frame(0)
            .map_err(|e| format!("cannot read pixel values: {e}"));
    }
    let raw = pixel
        .frame_data(0)
        .map_err(|e| format!("cannot read pixel values: {e}"))?;
    let planes: Vec<f32> = match pixel.bits_allocated() {
        8 => raw.iter().map(|&b| f32::from(b)).collect(),
        16 => raw
            .chunks_exact(2)
            .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        bits => return Err(format!("{bits}-bit colour samples are not supported")),
    };
    if planes.len() < 3 * pixel_count {
        return Err(format!(
            "pixel data holds {} samples, {} expected (truncated?)",
            planes.len(),
            3 * pixel_count
        ));
    }
    let (r, rest) = planes.split_at(pixel_count);
    let (g, b) = rest.split_at(pixel_count);
    Ok((0..pixel_count).flat_map(|i| [r[i], g[i], b[i]]).collect())
}

/// YBR_FULL → RGB (PS3.3 C.7.6.3.1.2, the inverse of its RGB → YBR_FULL equations), on a
/// `0..=max` scale, rounded and clamped as the stored integers are.
fn ybr_full_to_rgb(values: &mut [f32], max: f32) {
    let half = (max + 1.0) / 2.0;
    for px in values.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0], px[1] - half, px[2] - half);
        let r = y + 1.402 * cr;
        let g = y - 0.344_136 * cb - 0.714_136 * cr;
        let b = y + 1.772 * cb;
        px[0] = r.round().clamp(0.0, max);
        px[1] = g.round().clamp(0.0, max);
        px[2] = b.round().clamp(0.0, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ybr_full_converts_to_the_rgb_it_came_from() {
        // PS3.3 C.7.6.3.1.2 forward equations applied to known RGB triples, then inverted.
        let rgb = [
            [255.0_f32, 0.0, 0.0],
            [0.0, 255.0, 0.0],
            [30.0, 120.0, 200.0],
            [128.0; 3],
        ];
        let mut ybr: Vec<f32> = rgb
            .iter()
            .flat_map(|&[r, g, b]| {
                let y = 0.299 * r + 0.587 * g + 0.114 * b;
                let cb = -0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0;
                let cr = 0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0;
                [y.round(), cb.round(), cr.round()]
            })
            .collect();
        ybr_full_to_rgb(&mut ybr, 255.0);
        for (got, want) in ybr.chunks(3).zip(rgb) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2.0, "{got:?} vs {want:?}");
            }
        }
    }
}
