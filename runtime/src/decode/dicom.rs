//! DICOM files: the file read defensively (`part10`), the header checked once (`pixel_module`),
//! then each frame the [`DicomFrames`] policy asks for decoded by its transfer syntax's codec —
//! native data (`native`), RLE (`rle`), JPEG (`jpeg`), JPEG-LS (`jpegls`), JPEG 2000 (`j2k`),
//! frames found among the fragments by `encapsulated` — into [`DicomValues`]: the modality-LUT
//! output, colour converted to RGB. [`dicom_image`] maps them to `[0, 1]` with the
//! [`DicomWindow`] policy. It never resizes or normalises.

use std::borrow::Cow;
use std::path::Path;

use dicom_core::{DicomValue, PrimitiveValue};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::attributes::{float, item, text};
use super::encapsulated::{encapsulated_frame, FrameStart};
use super::j2k::decode_j2k_frame;
use super::jpeg::decode_jpeg_frame;
use super::lut::{apply_palette, sequence_lut, LookupTable};
use super::native::{native_frame, native_frame_from_words, stored_value, Frame};
use super::part10::{read_part10, DicomFile};
use super::pixel_module::{describe, PixelKind, PixelModule};
use super::rle::decode_rle_frame;
use super::voi::{Voi, VoiFunction};
use super::{decode_error, jpegls, DecodedImage, DicomFrames, DicomWindow, SourceInfo, MAX_PIXELS};
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
    /// (0008,0016) SOP Class UID (what a report referencing the instance must name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sop_class_uid: Option<String>,
}

/// The data set up to the pixel data, for the header readers below.
fn read_header(path: &Path, bytes: &[u8]) -> Result<DicomFile> {
    read_part10(bytes, true).map_err(|e| Error::Decode {
        path: path.to_path_buf(),
        reason: format!("malformed DICOM header: {e}"),
    })
}

/// Reads a DICOM file's header up to the pixel data: who and which study it belongs to.
pub fn read_dicom_identity(path: &Path) -> Result<DicomIdentity> {
    let bytes = crate::persist::read(path)?;
    dicom_identity_from_bytes(path, &bytes)
}

/// [`read_dicom_identity`] of a file already in memory (Part 10 bytes, preamble included).
pub fn dicom_identity_from_bytes(path: &Path, bytes: &[u8]) -> Result<DicomIdentity> {
    let obj = read_header(path, bytes)?;
    let text = |tag| text(&obj, tag);
    Ok(DicomIdentity {
        patient_id: text(tags::PATIENT_ID),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        series_uid: text(tags::SERIES_INSTANCE_UID),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
        sop_class_uid: text(tags::SOP_CLASS_UID),
    })
}

/// The Patient and General Study modules of a DICOM file (PS3.3 C.7.1.1, C.7.2.1): what a
/// report about the study copies so that the PACS files it with the images. Values as stored
/// (person names keep their `^` separators); absent attributes are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DicomStudyHeader {
    /// (0010,0010) Patient's Name.
    pub patient_name: Option<String>,
    /// (0010,0020) Patient ID.
    pub patient_id: Option<String>,
    /// (0010,0021) Issuer of Patient ID.
    pub issuer_of_patient_id: Option<String>,
    /// (0010,0030) Patient's Birth Date.
    pub patient_birth_date: Option<String>,
    /// (0010,0040) Patient's Sex.
    pub patient_sex: Option<String>,
    /// (0020,000D) Study Instance UID.
    pub study_uid: Option<String>,
    /// (0008,0020) Study Date.
    pub study_date: Option<String>,
    /// (0008,0030) Study Time.
    pub study_time: Option<String>,
    /// (0008,0090) Referring Physician's Name.
    pub referring_physician_name: Option<String>,
    /// (0020,0010) Study ID.
    pub study_id: Option<String>,
    /// (0008,0050) Accession Number.
    pub accession_number: Option<String>,
    /// (0008,1030) Study Description.
    pub study_description: Option<String>,
}

/// Reads the Patient and General Study modules of a DICOM file (Part 10 bytes) without
/// decoding pixels.
pub fn dicom_study_header_from_bytes(path: &Path, bytes: &[u8]) -> Result<DicomStudyHeader> {
    let obj = read_header(path, bytes)?;
    let text = |tag| text(&obj, tag);
    Ok(DicomStudyHeader {
        patient_name: text(tags::PATIENT_NAME),
        patient_id: text(tags::PATIENT_ID),
        issuer_of_patient_id: text(tags::ISSUER_OF_PATIENT_ID),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
        referring_physician_name: text(tags::REFERRING_PHYSICIAN_NAME),
        study_id: text(tags::STUDY_ID),
        accession_number: text(tags::ACCESSION_NUMBER),
        study_description: text(tags::STUDY_DESCRIPTION),
    })
}

/// The DICOM attributes that say what an image is — what a bundle's input rules test
/// (`bundle::guard`) — read without decoding pixels.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DicomAttributes {
    /// (0008,0060) Modality.
    pub modality: Option<String>,
    /// (0018,0015) Body Part Examined.
    pub body_part_examined: Option<String>,
    /// (0008,0016) SOP Class UID.
    pub sop_class_uid: Option<String>,
    /// (0028,0004) Photometric Interpretation.
    pub photometric_interpretation: Option<String>,
    /// (0008,0008) Image Type, its values joined by backslashes, as stored.
    pub image_type: Option<String>,
    /// (0018,5101) View Position.
    pub view_position: Option<String>,
    /// (0028,0101) Bits Stored.
    pub bits_stored: Option<u32>,
}

/// Reads what a DICOM file (Part 10 bytes, preamble included) says it is, from its header.
pub fn dicom_attributes_from_bytes(path: &Path, bytes: &[u8]) -> Result<DicomAttributes> {
    let obj = read_header(path, bytes)?;
    let text = |tag| text(&obj, tag);
    Ok(DicomAttributes {
        modality: text(tags::MODALITY),
        body_part_examined: text(tags::BODY_PART_EXAMINED),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        photometric_interpretation: text(tags::PHOTOMETRIC_INTERPRETATION),
        image_type: text(tags::IMAGE_TYPE),
        view_position: text(tags::VIEW_POSITION),
        bits_stored: super::attributes::uint(&obj, tags::BITS_STORED),
    })
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
/// JPEG-LS, JPEG 2000, deflate), applies the modality LUT to monochrome images, converts YBR to
/// RGB and looks palette colour up. `path` names the file in errors.
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
    let obj = read_part10(bytes, false).map_err(|e| err(format!("malformed DICOM: {e}")))?;
    let layout = FrameLayout::read(&obj, policy).map_err(err)?;
    for frame in 0..layout.decoded_frames {
        each(layout.frame(&obj, frame).map_err(err)?)?;
    }
    Ok(())
}

/// The codec a transfer syntax's frames go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// Uncompressed (also deflated, whose data set is inflated on reading).
    Native {
        big_endian: bool,
    },
    Rle,
    Jpeg,
    JpegLs,
    J2k,
}

impl Codec {
    fn of(uid: &str) -> std::result::Result<Self, String> {
        let jpeg_process = uid
            .strip_prefix("1.2.840.10008.1.2.4.")
            .and_then(|n| n.parse::<u32>().ok());
        Ok(match uid {
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.1.99" => {
                Codec::Native { big_endian: false }
            }
            "1.2.840.10008.1.2.2" => Codec::Native { big_endian: true },
            "1.2.840.10008.1.2.5" => Codec::Rle,
            _ => match jpeg_process {
                Some(50..=70) => Codec::Jpeg,
                Some(80 | 81) => Codec::JpegLs,
                Some(90..=93 | 201..=203) => Codec::J2k,
                _ => {
                    return Err(format!(
                        "transfer syntax {uid} is not one this decoder reads (native, deflated, RLE, JPEG, JPEG-LS, JPEG 2000)"
                    ))
                }
            },
        })
    }
}

/// What the header says about every frame of a file, read and checked once.
struct FrameLayout {
    transfer_syntax: String,
    codec: Codec,
    module: PixelModule,
    modality: Option<String>,
    /// Frames the policy decodes.
    decoded_frames: u32,
    big_endian: bool,
    modality_lut: Option<LookupTable>,
    voi_function: VoiFunction,
    voi_lut: Option<LookupTable>,
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
        let module = PixelModule::read(obj)?;
        let codec = if module.kind == PixelKind::Integer {
            Codec::of(&transfer_syntax)?
        } else {
            // Float pixel data is never encapsulated.
            Codec::Native {
                big_endian: transfer_syntax == "1.2.840.10008.1.2.2",
            }
        };
        let big_endian = transfer_syntax == "1.2.840.10008.1.2.2";
        let decoded_frames = match policy {
            DicomFrames::First => 1,
            DicomFrames::Every if module.frames > MAX_FRAMES => {
                return Err(format!(
                    "{} frames is more than the {MAX_FRAMES}-frame limit of the every-frame policy",
                    module.frames
                ))
            }
            DicomFrames::Every => module.frames,
        };
        let monochrome = module.photometric.starts_with("MONOCHROME");
        Ok(Self {
            modality_lut: if monochrome {
                sequence_lut(
                    obj,
                    tags::MODALITY_LUT_SEQUENCE,
                    "Modality LUT Sequence",
                    big_endian,
                )?
            } else {
                None
            },
            voi_function: voi_function(obj)?,
            // Read once for all frames (a VOI LUT can hold 65,536 entries).
            voi_lut: if monochrome {
                sequence_lut(obj, tags::VOILUT_SEQUENCE, "VOI LUT Sequence", big_endian)?
            } else {
                None
            },
            modality: text(obj, tags::MODALITY),
            transfer_syntax,
            codec,
            module,
            decoded_frames,
            big_endian,
        })
    }

    /// Decodes frame `frame` (0-based) of `obj` into its values.
    fn frame(&self, obj: &DicomFile, frame: u32) -> std::result::Result<DicomValues, String> {
        let decoded = self.decode(obj, frame).map_err(|e| {
            format!(
                "cannot decode pixel data of frame {} ({}): {e}",
                frame + 1,
                self.transfer_syntax
            )
        })?;
        if decoded.samples.len() != self.module.frame_samples() {
            return Err(format!(
                "frame {} decoded to {} samples, {} expected",
                frame + 1,
                decoded.samples.len(),
                self.module.frame_samples()
            ));
        }
        let (channels, values, bits_stored) = self.values(obj, decoded, frame)?;
        Ok(DicomValues {
            width: self.module.cols as u32,
            height: self.module.rows as u32,
            channels,
            values,
            photometric: self.module.photometric.clone(),
            bits_stored,
            frames: self.module.frames,
            frame,
            transfer_syntax: self.transfer_syntax.clone(),
            modality: self.modality.clone(),
            window: self.window(obj, frame as usize),
            voi_function: self.voi_function,
            voi_lut: self.voi_lut.clone(),
        })
    }

    /// Frame `frame`'s samples on the stored scale, by the transfer syntax's codec.
    fn decode(&self, obj: &DicomFile, frame: u32) -> std::result::Result<Frame, String> {
        let m = &self.module;
        let fragments = |start| encapsulated_frame(obj, frame, m.frames, start);
        match self.codec {
            Codec::Native { big_endian } => {
                let element = pixel_element(obj, m.kind)?;
                let have = element_len(element.value());
                if (have as u64) < m.native_frame_bytes() as u64 * u64::from(m.frames) {
                    return Err(native_size_error(m, have));
                }
                let range = native_range(m, frame)?;
                if let (DicomValue::Primitive(PrimitiveValue::U16(words)), 16) =
                    (element.value(), m.bits_allocated)
                {
                    let words = words
                        .get(range.start / 2..range.end / 2)
                        .ok_or_else(|| native_size_error(m, have))?;
                    return native_frame_from_words(words, m);
                }
                let (bytes, big_endian) =
                    value_bytes(element.value(), range.clone(), big_endian, m.bits_allocated)
                        .ok_or_else(|| native_size_error(m, element_len(element.value())))?;
                native_frame(&bytes, m, big_endian)
            }
            Codec::Rle => {
                let samples = decode_rle_frame(&fragments(FrameStart::Unmarked)?, m)?;
                Ok(Frame {
                    samples,
                    photometric: m.photometric.clone(),
                })
            }
            Codec::Jpeg => decode_jpeg_frame(&fragments(FrameStart::Jpeg)?, m),
            Codec::JpegLs => jpeg_ls_frame(&fragments(FrameStart::Jpeg)?, m),
            Codec::J2k => decode_j2k_frame(&fragments(FrameStart::J2k)?, m),
        }
    }

    /// The frame's channels, values and bits per value: monochrome with the modality LUT
    /// applied, palette colour looked up, YBR converted to RGB.
    fn values(
        &self,
        obj: &DicomFile,
        decoded: Frame,
        frame: u32,
    ) -> std::result::Result<(u32, Vec<f32>, u16), String> {
        let m = &self.module;
        let mut values = decoded.samples;
        match (m.samples, decoded.photometric.as_str()) {
            (1, "MONOCHROME1" | "MONOCHROME2") => {
                if let Some(lut) = &self.modality_lut {
                    values.iter_mut().for_each(|v| *v = lut.look_up(*v));
                } else if let Some((slope, intercept)) = rescale(obj, frame as usize) {
                    values
                        .iter_mut()
                        .for_each(|v| *v = (f64::from(*v) * slope + intercept) as f32);
                }
                Ok((1, values, m.bits_stored))
            }
            (1, "PALETTE COLOR") => {
                let (rgb, bits) = apply_palette(obj, &values, self.big_endian)?;
                Ok((3, rgb, bits))
            }
            (3, "RGB") => Ok((3, values, m.bits_stored)),
            (3, "YBR_FULL" | "YBR_FULL_422") => {
                let max = (2_f64.powi(i32::from(m.bits_stored.min(16))) - 1.0) as f32;
                ybr_full_to_rgb(&mut values, max);
                Ok((3, values, m.bits_stored))
            }
            (n, p) => Err(format!(
                "{}: photometric interpretation {p} with {n} samples per pixel is not supported",
                describe(obj)
            )),
        }
    }

    /// The frame's first window `(center, width)`, when it has a usable one: the data set's,
    /// else the frame's functional group, else the shared one.
    fn window(&self, obj: &InMemDicomObject, frame: usize) -> Option<(f64, f64)> {
        let pair = |o: &InMemDicomObject| {
            Some((
                float(o, tags::WINDOW_CENTER)?,
                float(o, tags::WINDOW_WIDTH)?,
            ))
        };
        pair(obj)
            .or_else(|| functional_group(obj, frame, tags::FRAME_VOILUT_SEQUENCE).and_then(pair))
            // LINEAR needs width ≥ 1 (it divides by width − 1), the others width > 0.
            .filter(|&(_, width)| {
                if self.voi_function == VoiFunction::Linear {
                    width >= 1.0
                } else {
                    width > 0.0
                }
            })
    }
}

/// (0028,1056) VOI LUT Function.
fn voi_function(obj: &InMemDicomObject) -> std::result::Result<VoiFunction, String> {
    match text(obj, tags::VOILUT_FUNCTION).as_deref() {
        None | Some("LINEAR") => Ok(VoiFunction::Linear),
        Some("LINEAR_EXACT") => Ok(VoiFunction::LinearExact),
        Some("SIGMOID") => Ok(VoiFunction::Sigmoid),
        Some(other) => Err(format!(
            "VOI LUT Function {other:?} is not one of LINEAR, LINEAR_EXACT, SIGMOID"
        )),
    }
}

/// Rescale slope and intercept: the data set's, else the frame's Pixel Value Transformation
/// functional group, else the shared one (enhanced objects, PS3.3 C.7.6.16.2.9).
fn rescale(obj: &InMemDicomObject, frame: usize) -> Option<(f64, f64)> {
    let pair = |o: &InMemDicomObject| {
        let intercept = float(o, tags::RESCALE_INTERCEPT)?;
        Some((float(o, tags::RESCALE_SLOPE).unwrap_or(1.0), intercept))
    };
    pair(obj).or_else(|| {
        functional_group(obj, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE).and_then(pair)
    })
}

/// The first item of functional group `group` for `frame`: per-frame, else shared.
fn functional_group(
    obj: &InMemDicomObject,
    frame: usize,
    group: dicom_core::Tag,
) -> Option<&InMemDicomObject> {
    item(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame)
        .and_then(|o| item(o, group, 0))
        .or_else(|| {
            item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0).and_then(|o| item(o, group, 0))
        })
}

/// The element holding native pixels of this kind.
fn pixel_element(
    obj: &InMemDicomObject,
    kind: PixelKind,
) -> std::result::Result<&dicom_object::mem::InMemElement, String> {
    let tag = match kind {
        PixelKind::Integer => tags::PIXEL_DATA,
        PixelKind::Float => tags::FLOAT_PIXEL_DATA,
        PixelKind::Double => tags::DOUBLE_FLOAT_PIXEL_DATA,
    };
    let element = obj
        .element(tag)
        .map_err(|e| format!("no pixel data: {e}"))?;
    if element.value().fragments().is_some() {
        return Err("the pixel data is encapsulated, but the transfer syntax is native".into());
    }
    Ok(element)
}

/// The byte range of frame `frame` in native pixel data.
fn native_range(
    m: &PixelModule,
    frame: u32,
) -> std::result::Result<std::ops::Range<usize>, String> {
    let size = m.native_frame_bytes();
    let start = size
        .checked_mul(frame as usize)
        .ok_or("frame offset overflows")?;
    Ok(start..start + size)
}

fn native_size_error(m: &PixelModule, have: usize) -> String {
    format!(
        "the pixel data holds {have} bytes, {} expected for {} frame(s) of {}x{}x{} at {} bits (truncated?)",
        m.native_frame_bytes() as u64 * u64::from(m.frames),
        m.frames,
        m.cols,
        m.rows,
        m.samples,
        m.bits_allocated
    )
}

/// A data element's value as dicom-rs holds it.
type PixelValue = dicom_core::value::Value<InMemDicomObject, dicom_object::mem::InMemFragment>;

/// Bytes in a native pixel value.
fn element_len(value: &PixelValue) -> usize {
    match value {
        DicomValue::Primitive(p) => p.calculate_byte_len(),
        _ => 0,
    }
}

/// `range` of a native pixel value as bytes, and their byte order. Values dicom-rs decoded
/// into words (OW, OL, OF, OD) are turned back into little-endian bytes (for 8-bit samples in
/// big-endian OW this swaps each byte pair back, as PS3.5 8.1.1 requires), except 32-bit
/// samples held in big-endian OW words, which go back to the file's big-endian bytes; bytes
/// (OB) keep the file's order. `None` when the value is shorter than the header implies.
fn value_bytes(
    value: &PixelValue,
    range: std::ops::Range<usize>,
    file_big_endian: bool,
    bits_allocated: u16,
) -> Option<(Cow<'_, [u8]>, bool)> {
    fn words<T: Copy, const N: usize>(
        v: &[T],
        range: std::ops::Range<usize>,
        le: impl Fn(T) -> [u8; N],
    ) -> Option<Vec<u8>> {
        let (first, last) = (range.start / N, range.end.div_ceil(N));
        let bytes: Vec<u8> = v.get(first..last)?.iter().flat_map(|&x| le(x)).collect();
        Some(bytes[range.start - first * N..range.end - first * N].to_vec())
    }
    let DicomValue::Primitive(p) = value else {
        return None;
    };
    Some(match p {
        PrimitiveValue::U8(b) => (Cow::Borrowed(b.get(range)?), file_big_endian),
        PrimitiveValue::U16(v) if file_big_endian && bits_allocated > 16 => {
            (Cow::Owned(words(v, range, u16::to_be_bytes)?), true)
        }
        PrimitiveValue::U16(v) => (Cow::Owned(words(v, range, u16::to_le_bytes)?), false),
        PrimitiveValue::I16(v) => (Cow::Owned(words(v, range, i16::to_le_bytes)?), false),
        PrimitiveValue::U32(v) => (Cow::Owned(words(v, range, u32::to_le_bytes)?), false),
        PrimitiveValue::I32(v) => (Cow::Owned(words(v, range, i32::to_le_bytes)?), false),
        PrimitiveValue::F32(v) => (Cow::Owned(words(v, range, f32::to_le_bytes)?), false),
        PrimitiveValue::F64(v) => (Cow::Owned(words(v, range, f64::to_le_bytes)?), false),
        _ => return None,
    })
}

/// A JPEG-LS frame decoded by `jpegls`, its samples read with the sign the header gives at the
/// codestream's precision (pydicom does the same; a near-lossless CT stream is often coded at
/// fewer bits than Bits Stored).
fn jpeg_ls_frame(data: &[u8], m: &PixelModule) -> std::result::Result<Frame, String> {
    let max_samples =
        usize::try_from(MAX_PIXELS.saturating_mul(m.samples as u64)).unwrap_or(usize::MAX);
    let image = jpegls::decode(data, max_samples)?;
    if (image.width, image.height, image.components) != (m.cols, m.rows, m.samples) {
        return Err(format!(
            "the JPEG-LS stream is {}x{} with {} components, the header says {}x{} with {}",
            image.width, image.height, image.components, m.cols, m.rows, m.samples
        ));
    }
    let bits = u16::from(image.bits).min(m.bits_stored);
    let samples = image
        .samples
        .iter()
        .map(|&v| stored_value(u32::from(v), bits, m.signed))
        .collect();
    Ok(Frame {
        samples,
        photometric: m.photometric.clone(),
    })
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
        let max = (2_f64.powi(i32::from(dicom.bits_stored.clamp(1, 32))) - 1.0) as f32;
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
