//! JPEG streams (ISO/IEC 10918-1): a completeness check used for every JPEG this crate decodes
//! (plain files and DICOM frames), and the DICOM JPEG frames themselves — baseline, extended
//! 8-bit, progressive and lossless (2–16 bits) — through the `jpeg-decoder` crate.
//!
//! Both JPEG decoders in the tree fill a stream that ends early with grey rather than failing,
//! so a partial upload would be screened as if whole: [`check_complete`] walks the markers and
//! entropy-coded data to the end-of-image marker first and refuses a stream without one;
//! [`check_scan_data`] then refuses one whose scans are too short for its frame (an EOI
//! appended to a cut stream, or scans left out).
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
    walk(data).map(|_| ())
}

/// Checks that a whole stream's entropy-coded data can hold its frame. Huffman coding spends at
/// least one bit on every 8×8 block (a DC difference code; sequential scans also end each block
/// with an EOB code) and, in lossless mode, on every sample: fewer bytes than that means scans
/// are missing or cut short with an EOI appended, which both decoders fill with grey (found by
/// cargo-fuzz: 977 bytes declaring 564 × 54,576 pixels decoded, 0.9 s of invented pixels).
/// Call it after the frame's size has been checked against the caller's limit.
pub(super) fn check_scan_data(data: &[u8]) -> Result<(), String> {
    let stream = walk(data)?;
    let Some(frame) = stream.frame else {
        return Ok(());
    };
    match frame.least_entropy_bytes() {
        Some(needed) if (stream.entropy_bytes as u64) < needed => Err(format!(
            "JPEG: {} bytes of entropy-coded data cannot hold a {}x{} frame of {} components \
             (at least {needed}): scans are missing or cut short (truncated or corrupt)",
            stream.entropy_bytes,
            frame.width,
            frame.height,
            frame.sampling.len()
        )),
        _ => Ok(()),
    }
}

/// What a walk over a whole stream found.
struct Stream {
    frame: Option<FrameHeader>,
    /// Bytes between the scan headers and the markers that end their scans, over all scans.
    entropy_bytes: usize,
}

/// A start-of-frame segment: its marker (the coding process), size and sampling factors.
struct FrameHeader {
    marker: u8,
    height: u16,
    width: u16,
    /// (horizontal, vertical) sampling factor of each component.
    sampling: Vec<(u8, u8)>,
}

impl FrameHeader {
    /// Parses a start-of-frame segment's body (after its length).
    fn parse(marker: u8, body: &[u8]) -> Option<Self> {
        let count = usize::from(*body.get(5)?);
        let sampling = body
            .get(6..6 + 3 * count)?
            .chunks_exact(3)
            .map(|c| (c[1] >> 4, c[1] & 0x0F))
            .collect();
        Some(Self {
            marker,
            height: u16::from_be_bytes([body[1], body[2]]),
            width: u16::from_be_bytes([body[3], body[4]]),
            sampling,
        })
    }

    /// The fewest entropy-coded bytes a Huffman-coded frame can have (the least bits per unit
    /// are 1); `None` where no such bound is known: arithmetic or hierarchical coding, a height
    /// defined later by a DNL marker, or sampling factors the decoder will refuse.
    fn least_entropy_bytes(&self) -> Option<u64> {
        let block = match self.marker {
            0xC0..=0xC2 => 8,
            0xC3 => 1,
            _ => return None,
        };
        let h_max = u64::from(self.sampling.iter().map(|s| s.0).max()?);
        let v_max = u64::from(self.sampling.iter().map(|s| s.1).max()?);
        if self.height == 0 || h_max == 0 || v_max == 0 {
            return None;
        }
        let (w, h) = (u64::from(self.width), u64::from(self.height));
        let units: u64 = self
            .sampling
            .iter()
            .map(|&(hs, vs)| {
                let cols = (w * u64::from(hs)).div_ceil(h_max);
                let rows = (h * u64::from(vs)).div_ceil(v_max);
                cols.div_ceil(block) * rows.div_ceil(block)
            })
            .sum();
        Some(units.div_ceil(8))
    }
}

/// Walks the markers of a stream to its EOI, measuring its scans and reading its frame header.
fn walk(data: &[u8]) -> Result<Stream, String> {
    if !data.starts_with(&[0xFF, SOI]) {
        return Err("JPEG: no start-of-image marker".into());
    }
    let truncated =
        || "JPEG: the stream ends before its end-of-image marker (truncated)".to_string();
    let mut stream = Stream {
        frame: None,
        entropy_bytes: 0,
    };
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
            EOI => return Ok(stream),
            0xD0..=0xD7 | 0x01 | 0x00 => {}
            _ => {
                let len = data
                    .get(at..at + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .ok_or_else(truncated)?;
                let body = data.get(at + 2..at + len.max(2)).ok_or_else(truncated)?;
                if is_start_of_frame(marker) && stream.frame.is_none() {
                    stream.frame = FrameHeader::parse(marker, body);
                }
                at += len;
                if marker == SOS {
                    let end = scan_end(data, at).ok_or_else(truncated)?;
                    stream.entropy_bytes += end - at;
                    at = end;
                }
            }
        }
    }
}

/// SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC).
fn is_start_of_frame(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
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
    check_scan_data(data)?;
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

    fn encoded(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        out
    }

    #[test]
    fn the_most_compressible_whole_jpegs_have_enough_scan_data() {
        // Flat images are the fewest bits an encoder can spend per block: the bound must hold.
        let gray = image::GrayImage::from_pixel(1024, 1024, image::Luma([0]));
        let rgb = image::RgbImage::from_pixel(333, 517, image::Rgb([200, 10, 90]));
        for jpeg in [small_jpeg(), encoded(gray.into()), encoded(rgb.into())] {
            assert_eq!(check_scan_data(&jpeg), Ok(()));
        }
    }

    #[test]
    fn a_frame_larger_than_its_scans_can_hold_is_refused() {
        let mut jpeg = small_jpeg();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x04, 0x00, 0x04, 0x00]);
        assert_eq!(check_complete(&jpeg), Ok(()));
        let e = check_scan_data(&jpeg).unwrap_err();
        // 1024 x 1024 gray: 16,384 blocks, at least one bit each.
        assert!(
            e.contains("1024x1024") && e.contains("at least 2048"),
            "{e}"
        );
    }

    #[test]
    fn the_least_scan_data_follows_the_coding_process_and_sampling() {
        let frame = |marker, height, sampling: &[(u8, u8)]| FrameHeader {
            marker,
            height,
            width: 16,
            sampling: sampling.to_vec(),
        };
        // 4:2:0 colour, 16 x 16: four luma blocks and one of each chroma: 6 bits.
        let subsampled = frame(0xC0, 16, &[(2, 2), (1, 1), (1, 1)]);
        assert_eq!(subsampled.least_entropy_bytes(), Some(1));
        // Progressive gray 16 x 72: 2 x 9 blocks, 18 bits; lossless: one bit per sample.
        assert_eq!(frame(0xC2, 72, &[(1, 1)]).least_entropy_bytes(), Some(3));
        assert_eq!(frame(0xC3, 16, &[(1, 1)]).least_entropy_bytes(), Some(32));
        // No bound: arithmetic coding, a height left to a DNL marker, a zero sampling factor.
        assert_eq!(frame(0xC9, 16, &[(1, 1)]).least_entropy_bytes(), None);
        assert_eq!(frame(0xC0, 0, &[(1, 1)]).least_entropy_bytes(), None);
        assert_eq!(frame(0xC0, 16, &[(0, 0)]).least_entropy_bytes(), None);
    }
}
