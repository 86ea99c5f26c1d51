//! The Image Pixel module of a DICOM file (PS3.3 C.7.6.3): rows, columns, samples, bits, sign,
//! planar configuration, photometric interpretation and frames, read once and checked against
//! the decoder's limits before any pixel is touched. An object this decoder does not screen
//! (binary segmentation masks, four-sample colour, a frame too large) is refused here, with a
//! sentence saying what the object is and why.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::attributes::{text, uint};
use super::MAX_PIXELS;

/// Which Pixel Data element holds the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PixelKind {
    /// (7FE0,0010) Pixel Data: integers.
    Integer,
    /// (7FE0,0008) Float Pixel Data: 32-bit IEEE floats.
    Float,
    /// (7FE0,0009) Double Float Pixel Data: 64-bit IEEE floats.
    Double,
}

/// The pixel attributes of a file.
#[derive(Debug, Clone)]
pub(super) struct PixelModule {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) samples: usize,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    /// Pixel Representation 1: two's complement samples.
    pub(super) signed: bool,
    /// Planar Configuration 1: all samples of one colour plane, then the next.
    pub(super) planar: bool,
    /// (0028,0004) as written.
    pub(super) photometric: String,
    /// Number of Frames (1 when absent).
    pub(super) frames: u32,
    pub(super) kind: PixelKind,
}

impl PixelModule {
    /// Reads and checks the module. `what` names the object in refusals (modality, SOP class).
    pub(super) fn read(obj: &InMemDicomObject) -> Result<Self, String> {
        let kind = pixel_kind(obj)?;
        let (rows, cols) = (uint(obj, tags::ROWS), uint(obj, tags::COLUMNS));
        let (rows, cols) = match (rows, cols) {
            (Some(r), Some(c)) if r > 0 && c > 0 => (r as usize, c as usize),
            _ => return Err("image has no pixels (Rows or Columns is 0 or missing)".into()),
        };
        if rows as u64 * cols as u64 > MAX_PIXELS {
            return Err(format!(
                "{cols}x{rows} pixels is larger than the {MAX_PIXELS}-pixel limit"
            ));
        }
        let bits_allocated = match kind {
            PixelKind::Integer => uint(obj, tags::BITS_ALLOCATED).unwrap_or(0) as u16,
            PixelKind::Float => 32,
            PixelKind::Double => 64,
        };
        let photometric =
            text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
        let samples = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
        let module = Self {
            rows,
            cols,
            samples,
            bits_allocated,
            bits_stored: uint(obj, tags::BITS_STORED)
                .map_or(bits_allocated, |b| b as u16)
                .min(bits_allocated),
            signed: uint(obj, tags::PIXEL_REPRESENTATION) == Some(1),
            planar: uint(obj, tags::PLANAR_CONFIGURATION) == Some(1),
            photometric,
            frames: frames(obj),
            kind,
        };
        module.check(obj)?;
        Ok(module)
    }

    fn check(&self, obj: &InMemDicomObject) -> Result<(), String> {
        if self.bits_allocated == 1 {
            return Err(format!(
                "{} (Bits Allocated 1): binary masks are not screened",
                describe(obj)
            ));
        }
        if !matches!(self.bits_allocated, 8 | 16 | 32 | 64)
            || (self.bits_allocated == 64 && self.kind != PixelKind::Double)
        {
            return Err(format!(
                "{} with Bits Allocated {}: only 8, 16 and 32 (64 for Double Float Pixel Data) are images",
                describe(obj),
                self.bits_allocated
            ));
        }
        if self.bits_stored == 0 {
            return Err("Bits Stored is 0".into());
        }
        match (self.samples, self.photometric.as_str()) {
            (1, "MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR") => Ok(()),
            (3, "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_ICT" | "YBR_RCT") => Ok(()),
            (n, p) => Err(format!(
                "{}: photometric interpretation {p:?} with {n} samples per pixel is not supported",
                describe(obj)
            )),
        }?;
        if self.kind != PixelKind::Integer && self.samples != 1 {
            return Err("float pixel data with more than one sample per pixel".into());
        }
        Ok(())
    }

    /// Samples in one decoded frame.
    pub(super) fn frame_samples(&self) -> usize {
        self.rows * self.cols * self.samples
    }

    /// Bytes of one frame of native (uncompressed) pixel data: YBR_FULL_422 keeps two chroma
    /// samples per pair of pixels (PS3.3 C.7.6.3.1.2).
    pub(super) fn native_frame_bytes(&self) -> usize {
        let samples = if self.photometric == "YBR_FULL_422" {
            self.rows * self.cols * 2
        } else {
            self.frame_samples()
        };
        samples * usize::from(self.bits_allocated / 8)
    }
}

/// (7FE0,0010), else Float or Double Float Pixel Data; a clear error for an object without any.
fn pixel_kind(obj: &InMemDicomObject) -> Result<PixelKind, String> {
    let has = |tag| obj.element_opt(tag).ok().flatten().is_some();
    if has(tags::PIXEL_DATA) {
        Ok(PixelKind::Integer)
    } else if has(tags::FLOAT_PIXEL_DATA) {
        Ok(PixelKind::Float)
    } else if has(tags::DOUBLE_FLOAT_PIXEL_DATA) {
        Ok(PixelKind::Double)
    } else {
        Err(format!("{}: no pixel data, not an image", describe(obj)))
    }
}

/// Number of Frames, 1 when absent or not a number.
fn frames(obj: &InMemDicomObject) -> u32 {
    uint(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1)
}

/// What the object is, for refusals: "a Segmentation object (modality SEG, SOP class …)".
pub(super) fn describe(obj: &InMemDicomObject) -> String {
    let sop_class = text(obj, tags::SOP_CLASS_UID);
    let modality = text(obj, tags::MODALITY);
    let name = match sop_class.as_deref() {
        Some("1.2.840.10008.5.1.4.1.1.66.4") => "a Segmentation object",
        Some("1.2.840.10008.5.1.4.1.1.66.7") => "a Label Map Segmentation object",
        Some("1.2.840.10008.5.1.4.1.1.481.2") => "an RT Dose object",
        Some("1.2.840.10008.5.1.4.1.1.30") => "a Parametric Map object",
        Some("1.2.840.10008.5.1.4.1.1.7") => "a Secondary Capture image",
        _ => "an object",
    };
    format!(
        "{name} (modality {}, SOP class {})",
        modality.as_deref().unwrap_or("unknown"),
        sop_class.as_deref().unwrap_or("unknown")
    )
}
