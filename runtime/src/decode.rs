//! Image decoding: PNG and JPEG (8/16-bit, gray or colour) through the `image` crate, DICOM
//! through the dicom-rs crates (JPEG-LS through [`jpegls`], then as native data). Every decoder yields the same [`DecodedImage`]: float samples
//! in `[0, 1]`, interleaved, 1 or 3 channels, so that preprocessing is one code path.
//!
//! This stage only decodes: it never resizes or normalises (that is [`crate::preprocess`], driven
//! by the bundle) and never guesses a format from a file name, only from the bytes.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder};

use crate::preprocess::{DicomFrames, DicomWindow};
use crate::{Error, Result};

mod jpegls;

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
/// Monochrome DICOM is windowed with the file's own window ([`DicomWindow::File`]).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    decode_bytes_with(path, bytes, DicomWindow::File)
}

/// [`decode_bytes`] with the windowing policy a bundle prescribes.
pub fn decode_bytes_with(path: &Path, bytes: &[u8], window: DicomWindow) -> Result<DecodedImage> {
    match sniff(bytes) {
        Some(FileFormat::Png) | Some(FileFormat::Jpeg) => decode_raster(path, bytes),
        Some(FileFormat::Dicom) => decode_dicom(path, bytes, window),
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

/// The largest image decoded (rows × columns): 8192 × 8192, above any radiograph or
/// mammogram; a 30k × 30k slide or a forged header is refused before memory is spent on it.
pub const MAX_PIXELS: u64 = 8192 * 8192;

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

/// (0028,1056) VOI LUT Function: how a window centre/width maps values (PS3.3 C.11.2.1.2–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiFunction {
    /// `LINEAR` (the default): the centre − 0.5, width − 1 formula.
    #[default]
    Linear,
    /// `LINEAR_EXACT`: `(x − c) / w + 0.5`, clamped.
    LinearExact,
    /// `SIGMOID`: `1 / (1 + exp(−4 (x − c) / w))`.
    Sigmoid,
}

impl VoiFunction {
    /// Maps `x` to `[0, 1]` with the window `(center, width)`.
    pub fn apply(self, x: f64, center: f64, width: f64) -> f32 {
        match self {
            VoiFunction::Linear => linear_window(x, center, width),
            VoiFunction::LinearExact => {
                if x <= center - width / 2.0 {
                    0.0
                } else if x > center + width / 2.0 {
                    1.0
                } else {
                    ((x - center) / width + 0.5).clamp(0.0, 1.0) as f32
                }
            }
            VoiFunction::Sigmoid => (1.0 / (1.0 + (-4.0 * (x - center) / width).exp())) as f32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            VoiFunction::Linear => "LINEAR",
            VoiFunction::LinearExact => "LINEAR_EXACT",
            VoiFunction::Sigmoid => "SIGMOID",
        }
    }
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
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(err(
            "no DICOM Part 10 header (128-byte preamble + DICM)".into()
        ));
    }
    let obj = dicom_object::from_reader(&bytes[128..])
        .map_err(|e| err(format!("malformed DICOM: {e}")))?;
    let transfer_syntax = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    // 1.2.840.10008.1.2.4.80 / .81: decoded here (see `jpegls`), then read as native data.
    let jpeg_ls = matches!(
        transfer_syntax.as_str(),
        JPEG_LS_LOSSLESS | JPEG_LS_NEAR_LOSSLESS
    );
    let text = |tag| text_element(&obj, tag);
    let uint = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
    };
    let modality = text(tags::MODALITY);
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(err(format!(
            "no pixel data (modality {}, SOP class {}): not an image",
            modality.as_deref().unwrap_or("unknown"),
            text(tags::SOP_CLASS_UID).as_deref().unwrap_or("unknown")
        )));
    }
    let (rows, cols) = (
        u64::from(uint(tags::ROWS).unwrap_or(0)),
        u64::from(uint(tags::COLUMNS).unwrap_or(0)),
    );
    if rows == 0 || cols == 0 {
        return Err(err(
            "image has no pixels (Rows or Columns is 0 or missing)".into()
        ));
    }
    if rows * cols > MAX_PIXELS {
        return Err(err(format!(
            "{cols}x{rows} pixels is larger than the {MAX_PIXELS}-pixel limit"
        )));
    }
    let frames = text(tags::NUMBER_OF_FRAMES)
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let decoded_frames = match policy {
        DicomFrames::First => 1,
        DicomFrames::Every if frames > MAX_FRAMES => {
            return Err(err(format!(
            "{frames} frames is more than the {MAX_FRAMES}-frame limit of the every-frame policy"
        )))
        }
        DicomFrames::Every => frames,
    };
    let photometric_in_file = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let big_endian = transfer_syntax == "1.2.840.10008.1.2.2";
    let lut = sequence_lut(
        &obj,
        tags::MODALITY_LUT_SEQUENCE,
        "Modality LUT Sequence",
        big_endian,
    )
    .map_err(err)?;
    let voi_function = match text(tags::VOILUT_FUNCTION).as_deref() {
        None | Some("LINEAR") | Some("") => VoiFunction::Linear,
        Some("LINEAR_EXACT") => VoiFunction::LinearExact,
        Some("SIGMOID") => VoiFunction::Sigmoid,
        Some(other) => {
            return Err(err(format!(
                "VOI LUT Function {other:?} is not one of LINEAR, LINEAR_EXACT, SIGMOID"
            )))
        }
    };
    // Read once for all frames (a VOI LUT can hold 65,536 entries).
    let voi_lut = if photometric_in_file.starts_with("MONOCHROME") {
        sequence_lut(&obj, tags::VOILUT_SEQUENCE, "VOI LUT Sequence", big_endian).map_err(err)?
    } else {
        None
    };
    // For JPEG-LS: the header without the encapsulated pixel data, as explicit VR little
    // endian; each frame's decoded samples are put into a copy of it.
    let native_header = jpeg_ls.then(|| native_header(&obj));
    for frame in 0..decoded_frames {
        let native_frame;
        let cannot = |e: &dyn std::fmt::Display| {
            err(format!(
                "cannot decode pixel data of frame {} ({transfer_syntax}): {e}",
                frame + 1
            ))
        };
        let pixel = match &native_header {
            Some(header) => {
                native_frame = jpeg_ls_frame(&obj, header, frame, frames, rows * cols)
                    .map_err(|e| cannot(&e))?;
                native_frame.decode_pixel_data_frame(0)
            }
            None => obj.decode_pixel_data_frame(frame),
        }
        .map_err(|e| cannot(&e))?;
        let (width, height) = (pixel.columns(), pixel.rows());
        let samples = u32::from(pixel.samples_per_pixel());
        let photometric = pixel.photometric_interpretation().clone();
        let bits_stored = pixel.bits_stored();
        let window = pixel
            .window()
            .ok()
            .flatten()
            .and_then(|w| w.first().copied())
            // LINEAR needs width ≥ 1 (it divides by width − 1), the others width > 0.
            .filter(|w| {
                w.width.is_finite()
                    && w.center.is_finite()
                    && if voi_function == VoiFunction::Linear {
                        w.width >= 1.0
                    } else {
                        w.width > 0.0
                    }
            })
            .map(|w| (w.center, w.width));
        let pixel_count = width as usize * height as usize;
        let check_len = |n: usize, per_pixel: usize| {
            if n == pixel_count * per_pixel {
                Ok(())
            } else {
                Err(err(format!(
                "pixel data holds {n} samples, {width}x{height}x{per_pixel} expected (truncated?)"
            )))
            }
        };
        let (channels, values, bits_stored) = match (&photometric, samples) {
            (
                PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2,
                1,
            ) => {
                // Stored values with the modality LUT applied: rescale slope/intercept (by
                // dicom-pixeldata, also from enhanced objects' functional groups) or a LUT.
                let mut values: Vec<f32> = pixel
                    .to_vec_frame(0)
                    .map_err(|e| err(format!("cannot read pixel values: {e}")))?;
                check_len(values.len(), 1)?;
                if let Some(lut) = &lut {
                    values.iter_mut().for_each(|v| *v = lut.look_up(*v));
                }
                (1, values, bits_stored)
            }
            (PhotometricInterpretation::PaletteColor, 1) => {
                let indices: Vec<f32> = pixel
                    .to_vec_frame(0)
                    .map_err(|e| err(format!("cannot read palette indices: {e}")))?;
                check_len(indices.len(), 1)?;
                let (values, bits) = apply_palette(&obj, &indices, big_endian).map_err(err)?;
                (3, values, bits)
            }
            (
                PhotometricInterpretation::Rgb
                | PhotometricInterpretation::YbrFull
                | PhotometricInterpretation::YbrFull422,
                3,
            ) => {
                let mut values = color_samples(&pixel, pixel_count).map_err(err)?;
                check_len(values.len(), 3)?;
                if photometric != PhotometricInterpretation::Rgb {
                    let max = ((1_u32 << bits_stored.min(16)) - 1) as f32;
                    ybr_full_to_rgb(&mut values, max);
                }
                (3, values, bits_stored)
            }
            (other, n) => {
                return Err(err(format!(
                "photometric interpretation {other} with {n} samples per pixel is not supported"
            )))
            }
        };
        each(DicomValues {
            width,
            height,
            channels,
            values,
            photometric: photometric_in_file.clone(),
            bits_stored,
            frames,
            frame,
            transfer_syntax: transfer_syntax.clone(),
            modality: modality.clone(),
            window,
            voi_function,
            voi_lut: voi_lut.clone(),
        })?;
    }
    Ok(())
}

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

type DicomFile = dicom_object::FileDicomObject<dicom_object::InMemDicomObject>;

/// `obj` without its pixel data, declared explicit VR little endian with interleaved samples:
/// what a frame decoded by [`jpeg_ls_frame`] is put into.
fn native_header(obj: &DicomFile) -> DicomFile {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    // Every element but the (possibly large) encapsulated pixel data, which is not copied.
    let elements = obj
        .iter()
        .filter(|e| e.header().tag != tags::PIXEL_DATA)
        .cloned();
    let mut meta = obj.meta().clone();
    meta.transfer_syntax = EXPLICIT_VR_LITTLE_ENDIAN.to_string();
    meta.update_information_group_length();
    let mut header =
        dicom_object::InMemDicomObject::from_element_iter(elements).with_exact_meta(meta);
    if header
        .element_opt(tags::PLANAR_CONFIGURATION)
        .ok()
        .flatten()
        .is_some()
    {
        // JPEG-LS decodes to interleaved samples whatever the header said.
        header.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0_u16),
        ));
    }
    header
}

/// Frame `frame` (of `frames`) of a JPEG-LS encapsulated file, decoded and put into a copy of
/// `header` as native pixel data (frame 0 of the copy).
fn jpeg_ls_frame(
    obj: &DicomFile,
    header: &DicomFile,
    frame: u32,
    frames: u32,
    max_pixels: u64,
) -> std::result::Result<DicomFile, String> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let codestream = encapsulated_frame(obj, frame, frames)?;
    let samples_per_pixel = header
        .element_opt(tags::SAMPLES_PER_PIXEL)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u16>().ok())
        .unwrap_or(1);
    let max_samples = usize::try_from(max_pixels.saturating_mul(u64::from(samples_per_pixel)))
        .unwrap_or(usize::MAX);
    let image = jpegls::decode(&codestream, max_samples)?;
    let int = |tag| {
        header
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let (rows, columns, bits_allocated) = (
        int(tags::ROWS) as usize,
        int(tags::COLUMNS) as usize,
        int(tags::BITS_ALLOCATED),
    );
    if (image.width, image.height, image.components)
        != (columns, rows, usize::from(samples_per_pixel))
    {
        return Err(format!(
            "the JPEG-LS stream is {}x{} with {} components, the header says {columns}x{rows} with {samples_per_pixel}",
            image.width, image.height, image.components
        ));
    }
    let bytes: Vec<u8> = match bits_allocated {
        8 if image.bits <= 8 => image.samples.iter().map(|&v| v as u8).collect(),
        16 => image.samples.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => {
            return Err(format!(
                "{}-bit JPEG-LS samples in {other}-bit allocated pixels",
                image.bits
            ))
        }
    };
    let vr = if bits_allocated == 8 { VR::OB } else { VR::OW };
    let mut native = header.clone();
    native.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::from(bytes),
    ));
    Ok(native)
}

/// The bytes of frame `frame` of an encapsulated Pixel Data element: every fragment for a
/// single frame, one fragment per frame, or the fragments the Basic Offset Table assigns.
fn encapsulated_frame(
    obj: &DicomFile,
    frame: u32,
    frames: u32,
) -> std::result::Result<Vec<u8>, String> {
    let element = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| format!("no pixel data: {e}"))?;
    let fragments = element
        .value()
        .fragments()
        .ok_or("the pixel data is not encapsulated, as its transfer syntax requires")?;
    let offsets = element.value().offset_table().unwrap_or(&[]);
    let frame = frame as usize;
    if frames == 1 {
        return Ok(fragments.concat());
    }
    if fragments.len() == frames as usize {
        return Ok(fragments[frame].clone());
    }
    if offsets.len() == frames as usize {
        // Offsets count from the first fragment item: each item is an 8-byte header + data.
        let start = u64::from(offsets[frame]);
        let end = offsets.get(frame + 1).map_or(u64::MAX, |&o| u64::from(o));
        let mut position = 0_u64;
        let mut bytes = Vec::new();
        for fragment in fragments {
            if (start..end).contains(&position) {
                bytes.extend_from_slice(fragment);
            }
            position += 8 + fragment.len() as u64;
        }
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    Err(format!(
        "cannot tell which of the {} fragments hold frame {} of {frames}",
        fragments.len(),
        frame + 1
    ))
}

fn decode_dicom(path: &Path, bytes: &[u8], policy: DicomWindow) -> Result<DecodedImage> {
    Ok(dicom_image(read_dicom_values(path, bytes)?, policy))
}

/// Maps a DICOM frame's values to `[0, 1]`: monochrome by the windowing policy (MONOCHROME1
/// inverted), colour by the stored bit depth.
pub fn dicom_image(dicom: DicomValues, policy: DicomWindow) -> DecodedImage {
    enum Voi<'a> {
        Table(&'a LookupTable),
        Window(VoiFunction, f64, f64),
        MinMax,
    }
    let voi = match (policy, &dicom.voi_lut, dicom.window) {
        (DicomWindow::File, Some(table), _) => Voi::Table(table),
        (DicomWindow::File, None, Some((center, width))) => {
            Voi::Window(dicom.voi_function, center, width)
        }
        (DicomWindow::File, None, None) | (DicomWindow::MinMax, ..) => Voi::MinMax,
        (DicomWindow::Fixed { center, width }, ..) => {
            Voi::Window(VoiFunction::Linear, center, width.max(1.0))
        }
    };
    let (pixels, windowing) = if dicom.channels == 1 {
        let (mut mapped, how): (Vec<f32>, String) = match voi {
            Voi::Table(table) => {
                let top = ((1_u32 << table.bits) - 1) as f32;
                (
                    dicom
                        .values
                        .iter()
                        .map(|&v| (table.look_up(v) / top).clamp(0.0, 1.0))
                        .collect(),
                    format!(
                        "VOI LUT ({} entries from {}, {} bits)",
                        table.entries.len(),
                        table.first,
                        table.bits
                    ),
                )
            }
            Voi::Window(function, center, width) => (
                dicom
                    .values
                    .iter()
                    .map(|&v| function.apply(f64::from(v), center, width))
                    .collect(),
                match function {
                    VoiFunction::Linear => format!("window center {center} width {width}"),
                    other => format!("window center {center} width {width} ({})", other.name()),
                },
            ),
            Voi::MinMax => {
                let (lo, hi) = min_max(&dicom.values);
                let span = if hi > lo { hi - lo } else { 1.0 };
                (
                    dicom.values.iter().map(|&v| (v - lo) / span).collect(),
                    format!("min-max {lo}..{hi}"),
                )
            }
        };
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

/// A lookup table (palette, modality or VOI LUT): entries, the first stored value mapped, and
/// the bits per entry, from a descriptor (US/SS ×3) and its data (US or OW, 8 or 16 bits).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupTable {
    entries: Vec<u16>,
    first: f32,
    bits: u16,
}

impl LookupTable {
    fn read(
        obj: &dicom_object::InMemDicomObject,
        descriptor: dicom_core::Tag,
        data: dicom_core::Tag,
        name: &str,
        big_endian: bool,
    ) -> std::result::Result<Self, String> {
        use dicom_core::{DicomValue, PrimitiveValue};
        let d: Vec<i32> = obj
            .element(descriptor)
            .map_err(|_| format!("{name} without its lookup table descriptor"))?
            .to_multi_int()
            .map_err(|e| format!("{name} descriptor: {e}"))?;
        if d.len() != 3 {
            return Err(format!(
                "{name} descriptor has {} values, 3 expected",
                d.len()
            ));
        }
        // Entries: 0 means 65536; the first mapped value is US or SS (PS3.3 C.7.6.3.1.5).
        let count = if d[0] == 0 {
            65536
        } else {
            d[0] as u16 as usize
        };
        let first = if d[1] < 0 {
            d[1] as f32
        } else {
            d[1] as u16 as f32
        };
        let bits = d[2].clamp(1, 16) as u16;
        let element = obj.element(data).map_err(|_| {
            format!("{name} without lookup table data (segmented tables are not supported)")
        })?;
        let entries: Vec<u16> = match element.value() {
            DicomValue::Primitive(PrimitiveValue::U16(v)) => v.to_vec(),
            DicomValue::Primitive(PrimitiveValue::U8(b)) if bits <= 8 && b.len() == count => {
                b.iter().map(|&x| u16::from(x)).collect()
            }
            // OW read as bytes: in the file's byte order.
            DicomValue::Primitive(PrimitiveValue::U8(b)) => b
                .chunks_exact(2)
                .map(|c| {
                    if big_endian {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect(),
            _ => element
                .to_multi_int::<u16>()
                .map_err(|e| format!("{name} data: {e}"))?,
        };
        if entries.len() < count {
            return Err(format!(
                "{name} data holds {} entries, {count} expected",
                entries.len()
            ));
        }
        Ok(Self {
            entries: entries[..count].to_vec(),
            first,
            bits,
        })
    }

    /// Below the first mapped value: the first entry; above the last: the last.
    fn look_up(&self, value: f32) -> f32 {
        let i = ((value - self.first).max(0.0) as usize).min(self.entries.len() - 1);
        f32::from(self.entries[i])
    }
}

/// PALETTE COLOR: each stored index looked up in the red, green and blue palette tables
/// (PS3.3 C.7.6.3.1.5). Returns interleaved RGB and the bits per entry.
fn apply_palette(
    obj: &dicom_object::DefaultDicomObject,
    indices: &[f32],
    big_endian: bool,
) -> std::result::Result<(Vec<f32>, u16), String> {
    let table = |descriptor, data, name| LookupTable::read(obj, descriptor, data, name, big_endian);
    let r = table(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR red",
    )?;
    let g = table(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR green",
    )?;
    let b = table(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR blue",
    )?;
    let out = indices
        .iter()
        .flat_map(|&v| [r.look_up(v), g.look_up(v), b.look_up(v)])
        .collect();
    Ok((out, r.bits))
}

/// The first table of a LUT sequence (the Modality LUT Sequence, used instead of rescale
/// slope/intercept, or the VOI LUT Sequence, PS3.3 C.11.2), when the file has one.
fn sequence_lut(
    obj: &dicom_object::DefaultDicomObject,
    sequence_tag: dicom_core::Tag,
    name: &str,
    big_endian: bool,
) -> std::result::Result<Option<LookupTable>, String> {
    let Some(sequence) = obj.element_opt(sequence_tag).ok().flatten() else {
        return Ok(None);
    };
    let Some(item) = sequence.items().and_then(|items| items.first()) else {
        return Ok(None);
    };
    LookupTable::read(item, tags::LUT_DESCRIPTOR, tags::LUT_DATA, name, big_endian).map(Some)
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
