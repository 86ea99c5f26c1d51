//! JPEG-LS pixel data (which dicom-pixeldata cannot decode without CharLS, a C++ library that
//! would break the static aarch64 build): each frame's codestream is cut out of the
//! encapsulated Pixel Data, decoded with `jpegls` and put into a copy of the header as native
//! pixel data, which the usual path then reads. It never windows or converts colour.

use dicom_dictionary_std::tags;

use super::jpegls;

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// A DICOM Part 10 file in memory.
pub(super) type DicomFile = dicom_object::FileDicomObject<dicom_object::InMemDicomObject>;

/// Whether frames of this transfer syntax are decoded here (1.2.840.10008.1.2.4.80 / .81)
/// rather than by dicom-pixeldata.
pub(super) fn is_jpeg_ls(transfer_syntax: &str) -> bool {
    matches!(transfer_syntax, JPEG_LS_LOSSLESS | JPEG_LS_NEAR_LOSSLESS)
}

/// `obj` without its pixel data, declared explicit VR little endian with interleaved samples:
/// what a frame decoded by [`jpeg_ls_frame`] is put into.
pub(super) fn native_header(obj: &DicomFile) -> DicomFile {
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
pub(super) fn jpeg_ls_frame(
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
