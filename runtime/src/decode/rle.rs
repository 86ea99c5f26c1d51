//! RLE Lossless frames (PS3.5 Annex G): a 64-byte header with up to 15 segment offsets, one
//! PackBits segment per byte of each sample, most significant byte first. Decoded here rather
//! than by dicom-rs's adapter, which indexes past the end of a frame split over fragments or
//! cut short (a panic); here every read is bounds-checked and a segment that ends before it
//! has filled its plane is an error, never padded.

use super::native::stored_value;
use super::pixel_module::PixelModule;

/// Decodes one RLE frame (all its fragments concatenated) into pixel-interleaved values.
pub(super) fn decode_rle_frame(data: &[u8], module: &PixelModule) -> Result<Vec<f32>, String> {
    let bytes_per_sample = usize::from(module.bits_allocated / 8);
    let expected_segments = module.samples * bytes_per_sample;
    let header = |i: usize| -> Result<usize, String> {
        data.get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "RLE: the frame is shorter than its 64-byte header".to_string())
    };
    let segments = header(0)?;
    if segments != expected_segments {
        return Err(format!(
            "RLE: the frame has {segments} segments, {expected_segments} expected for {} samples of {} bits",
            module.samples, module.bits_allocated
        ));
    }
    let offsets: Vec<usize> = (1..=segments).map(header).collect::<Result<_, _>>()?;
    let pixels = module.rows * module.cols;
    let mut values = vec![0_u32; pixels * module.samples];
    for (n, &start) in offsets.iter().enumerate() {
        let end = offsets.get(n + 1).copied().unwrap_or(data.len());
        let segment = data
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| format!("RLE: segment {} lies outside the frame", n + 1))?;
        let plane =
            unpack_segment(segment, pixels).map_err(|e| format!("RLE: segment {} {e}", n + 1))?;
        // Segment n holds byte (n % bytes_per_sample) (MSB first) of sample n / bytes_per_sample.
        let sample = n / bytes_per_sample;
        let shift = 8 * (bytes_per_sample - 1 - n % bytes_per_sample);
        for (i, &b) in plane.iter().enumerate() {
            values[i * module.samples + sample] |= u32::from(b) << shift;
        }
    }
    Ok(values
        .into_iter()
        .map(|v| stored_value(v, module.bits_stored, module.signed))
        .collect())
}

/// One PackBits segment, which must fill `len` bytes (extra bytes after that are padding).
fn unpack_segment(segment: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    let mut at = 0;
    while out.len() < len {
        let Some(&n) = segment.get(at) else {
            return Err(format!("ends after {} of {len} bytes", out.len()));
        };
        at += 1;
        match n as i8 {
            0..=127 => {
                let count = usize::from(n) + 1;
                let literal = segment.get(at..at + count).ok_or_else(|| {
                    format!("ends inside a literal run after {} bytes", out.len())
                })?;
                out.extend_from_slice(literal);
                at += count;
            }
            -128 => {}
            r => {
                let &b = segment
                    .get(at)
                    .ok_or_else(|| format!("ends inside a repeat run after {} bytes", out.len()))?;
                out.extend(std::iter::repeat_n(b, 1 + usize::from(r.unsigned_abs())));
                at += 1;
            }
        }
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_runs_and_literals_fill_the_plane_and_a_short_segment_is_an_error() {
        // literal 2 bytes (1, 2), then 3 x 7
        assert_eq!(
            unpack_segment(&[1, 1, 2, 0xFE, 7], 5),
            Ok(vec![1, 2, 7, 7, 7])
        );
        let e = unpack_segment(&[1, 1, 2, 0xFE, 7], 6).unwrap_err();
        assert!(e.contains("ends after 5 of 6"), "{e}");
        let e = unpack_segment(&[4, 1, 2], 5).unwrap_err();
        assert!(e.contains("literal"), "{e}");
    }
}
