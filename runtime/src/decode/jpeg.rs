//! JPEG streams (ISO/IEC 10918-1): a completeness check used for every JPEG this crate decodes
//! (plain files and DICOM frames), and the DICOM JPEG frames themselves — baseline, extended
//! 8-bit, progressive and lossless (2–16 bits) — through the `jpeg-decoder` crate.
//!
//! Both JPEG decoders in the tree fill a stream that ends early with grey rather than failing,
//! so a partial upload would be screened as if whole: [`check_complete`] walks the markers and
//! entropy-coded data to the end-of-image marker first and refuses a stream without one.
//! Lossy JPEG with more than 8 bits (12-bit extended, process 4) is refused with that reason:
//! neither `jpeg-decoder` nor `zune-jpeg` decodes it, and no C library may be linked.

use jpeg_decoder::{ColorTransform, Error as JpegError, PixelFormat, UnsupportedFeature};

use super::native::{stored_value, Frame};
use super::pixel_module::PixelModule;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

/// Checks that `data` is a whole JPEG stream: SOI, marker segments that fit, and scans followed
/// by an EOI marker. Bytes after the EOI (DICOM's even-length padding) are allowed.
pub(super) fn check_complete(data: &[u8]) -> Result<(), String> {
    if !data.starts_with(&[0xFF, SOI]) {
        return Err("JPEG: no start-of-image marker".into());
    }
    let truncated =
        || "JPEG: the stream ends before its end-of-image marker (truncated)".to_string();
    let mut at = 2;
    loop {
        // The next marker (bytes between segments are skipped, as libjpeg does with a warning).
        while data.get(at).is_some_and(|&b| b != 0xFF) {
            at += 1;
        }
        while data.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *data.get(at).ok_or_else(truncated)?;
        at += 1;
        match marker {
            EOI => return Ok(()),
            0xD0..=0xD7 | 0x01 | 0x00 => {}
            _ => {
                let len = data
                    .get(at..at + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .ok_or_else(truncated)?;
                at += len;
                if at > data.len() {
                    return Err(truncated());
                }
                if marker == SOS {
                    at = scan_end(data, at).ok_or_else(truncated)?;
                }
            }
        }
    }
}

/// Where the entropy-coded data starting at `at` ends: the first marker that is neither a
/// stuffed zero nor a restart marker; `None` when the data runs to the end.
fn scan_end(data: &[u8], mut at: usize) -> Option<usize> {
    while at + 1 < data.len() {
        if data[at] == 0xFF {
            match data[at + 1] {
                0x00 | 0xD0..=0xD7 => at += 2,
                0xFF => at += 1,
                _ => return Some(at),
            }
        } else {
            at += 1;
        }
    }
    None
}

/// Whether a JFIF (APP0) segment, or an Adobe (APP14) one with transform 1, says the
/// components are YCbCr.
fn marked_as_ycbcr(data: &[u8]) -> bool {
    let mut at = 2;
    while let Some(s) = data.get(at..at + 4) {
        let (marker, len) = (s[1], usize::from(u16::from_be_bytes([s[2], s[3]])));
        if s[0] != 0xFF || marker == SOS || !(0xC0..=0xFE).contains(&marker) {
            return false;
        }
        let segment = data.get(at + 4..at + 2 + len).unwrap_or(&[]);
        if marker == 0xE0 && segment.starts_with(b"JFIF\0") {
            return true;
        }
        if marker == 0xEE && segment.starts_with(b"Adobe") && segment.len() >= 12 {
            return segment[11] == 1;
        }
        at += 2 + len;
    }
    false
}

/// Decodes one DICOM JPEG frame into pixel-interleaved values on the stored scale.
pub(super) fn decode_jpeg_frame(data: &[u8], module: &PixelModule) -> Result<Frame, String> {
    check_complete(data)?;
    let mut decoder = jpeg_decoder::Decoder::new(data);
    decoder.set_max_decoding_buffer_size(module.frame_samples().saturating_mul(2) + 4096);
    decoder.read_info().map_err(describe_error)?;
    let info = decoder.info().ok_or("JPEG: no frame header")?;
    let components = match info.pixel_format {
        PixelFormat::L8 | PixelFormat::L16 => 1,
        PixelFormat::RGB24 => 3,
        PixelFormat::CMYK32 => 4,
    };
    if (
        usize::from(info.width),
        usize::from(info.height),
        components,
    ) != (module.cols, module.rows, module.samples)
    {
        return Err(format!(
            "the JPEG frame is {}x{} with {components} components, the header says {}x{} with {}",
            info.width, info.height, module.cols, module.rows, module.samples
        ));
    }
    let lossless = info.coding_process == jpeg_decoder::CodingProcess::Lossless;
    // DICOM's RGB means the components are RGB unless a JFIF or Adobe (transform 1) marker
    // says they were coded as YCbCr: without one they are not converted (pydicom's libjpeg
    // agrees; jpeg-decoder alone would convert any unmarked 3-component frame).
    let keep_as_coded =
        module.samples == 3 && module.photometric == "RGB" && !marked_as_ycbcr(data);
    if keep_as_coded {
        // RGB, not None: jpeg-decoder 0.3.2's no-conversion path panics on subsampled frames.
        decoder.set_color_transform(ColorTransform::RGB);
    }
    let pixels = decoder.decode().map_err(describe_error)?;
    // The frame header's precision is not exposed: samples are read with Bits Stored's sign.
    let bits = module.bits_stored;
    let samples: Vec<f32> = if info.pixel_format == PixelFormat::L16 {
        pixels
            .chunks_exact(2)
            .map(|c| {
                stored_value(
                    u32::from(u16::from_ne_bytes([c[0], c[1]])),
                    bits,
                    module.signed,
                )
            })
            .collect()
    } else {
        pixels
            .iter()
            .map(|&b| stored_value(u32::from(b), bits.min(8), module.signed))
            .collect()
    };
    if samples.len() != module.frame_samples() {
        return Err(format!(
            "the JPEG frame decoded to {} samples, {} expected",
            samples.len(),
            module.frame_samples()
        ));
    }
    // Lossy colour frames come out as RGB (jpeg-decoder converts YCbCr); lossless ones as coded.
    let photometric = if module.samples == 3 && !lossless {
        "RGB".to_string()
    } else {
        module.photometric.clone()
    };
    Ok(Frame {
        samples,
        photometric,
    })
}

fn describe_error(e: JpegError) -> String {
    match e {
        JpegError::Unsupported(UnsupportedFeature::SamplePrecision(p)) => format!(
            "a lossy JPEG frame with {p}-bit samples (JPEG Extended, process 4): the pure-Rust \
             JPEG decoders decode 8-bit DCT only, so it is not decoded"
        ),
        other => format!("JPEG: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_jpeg() -> Vec<u8> {
        let img = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
        let mut out = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        out
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_shorter_cut_is_refused() {
        let jpeg = small_jpeg();
        assert_eq!(check_complete(&jpeg), Ok(()));
        let mut padded = jpeg.clone();
        padded.push(0);
        assert_eq!(check_complete(&padded), Ok(()));
        for cut in 2..jpeg.len() {
            assert!(check_complete(&jpeg[..cut]).is_err(), "cut at {cut}");
        }
    }
}
