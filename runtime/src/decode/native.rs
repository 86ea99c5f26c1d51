//! Native (uncompressed) pixel data: 8-, 16- and 32-bit integer samples in either byte order,
//! Float and Double Float Pixel Data, planar configuration 1, and YBR_FULL_422's two chroma
//! samples per pixel pair — unpacked into pixel-interleaved values on the stored scale (masked
//! to Bits Stored, two's complement where Pixel Representation says so). The whole element is
//! checked against the size the header implies: a short one is refused, never padded.

use super::pixel_module::{PixelKind, PixelModule};

/// One decoded frame: pixel-interleaved samples on the stored scale and the photometric
/// interpretation they are in now (a codec may have converted YBR to RGB, 4:2:2 is expanded).
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) samples: Vec<f32>,
    pub(super) photometric: String,
}

/// A stored integer sample masked to `bits` and sign-extended when `signed`.
pub(super) fn stored_value(raw: u32, bits: u16, signed: bool) -> f32 {
    let bits = u32::from(bits.clamp(1, 32));
    let masked = if bits == 32 {
        raw
    } else {
        raw & ((1_u32 << bits) - 1)
    };
    if signed && masked >> (bits - 1) & 1 == 1 {
        (i64::from(masked) - (1_i64 << bits)) as f32
    } else {
        masked as f32
    }
}

/// One frame of native pixel data, `bytes` holding exactly its bytes (`big_endian` for
/// explicit VR big endian).
pub(super) fn native_frame(
    bytes: &[u8],
    module: &PixelModule,
    big_endian: bool,
) -> Result<Frame, String> {
    if bytes.len() != module.native_frame_bytes() {
        return Err(format!(
            "a frame holds {} bytes, {} expected (truncated?)",
            bytes.len(),
            module.native_frame_bytes()
        ));
    }
    arrange(unpack(bytes, module, big_endian), module)
}

/// 16-bit samples dicom-rs already holds as words (OW in either byte order): read without
/// going back to bytes — the common case, kept cheap.
pub(super) fn native_frame_from_words(
    words: &[u16],
    module: &PixelModule,
) -> Result<Frame, String> {
    let (bits, signed) = (module.bits_stored, module.signed);
    let samples = words
        .iter()
        .map(|&w| stored_value(u32::from(w), bits, signed))
        .collect();
    arrange(samples, module)
}

/// A frame's samples in pixel order: 4:2:2 expanded, planes interleaved.
fn arrange(mut samples: Vec<f32>, module: &PixelModule) -> Result<Frame, String> {
    let mut photometric = module.photometric.clone();
    if module.photometric == "YBR_FULL_422" {
        samples = expand_422(&samples, module)?;
        photometric = "YBR_FULL".into();
    } else if module.planar && module.samples > 1 {
        samples = interleave(&samples, module.samples);
    }
    Ok(Frame {
        samples,
        photometric,
    })
}

/// Every sample of `bytes` as a value.
fn unpack(bytes: &[u8], module: &PixelModule, big_endian: bool) -> Vec<f32> {
    let (bits, signed) = (module.bits_stored, module.signed);
    match (module.kind, module.bits_allocated) {
        (PixelKind::Float, _) => bytes
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        (PixelKind::Double, _) => bytes
            .chunks_exact(8)
            .map(|c| {
                let b: [u8; 8] = c.try_into().unwrap_or([0; 8]);
                (if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            })
            .collect(),
        (_, 8) => bytes
            .iter()
            .map(|&b| stored_value(u32::from(b), bits, signed))
            .collect(),
        (_, 16) => bytes
            .chunks_exact(2)
            .map(|c| {
                let v = if big_endian {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                };
                stored_value(u32::from(v), bits, signed)
            })
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                let v = if big_endian {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                };
                stored_value(v, bits, signed)
            })
            .collect(),
    }
}

/// Planes (all of sample 0, then 1, …) to pixel-interleaved samples.
pub(super) fn interleave(planes: &[f32], samples: usize) -> Vec<f32> {
    let pixels = planes.len() / samples;
    let mut out = vec![0.0; pixels * samples];
    for (s, plane) in planes.chunks_exact(pixels).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            out[i * samples + s] = v;
        }
    }
    out
}

/// YBR_FULL_422 native data (Y1 Y2 Cb Cr per pair of pixels) to YBR_FULL, each chroma pair
/// shared by its two pixels (as pydicom and dcmtk expand it).
fn expand_422(packed: &[f32], module: &PixelModule) -> Result<Vec<f32>, String> {
    if !module.cols.is_multiple_of(2) {
        return Err(format!(
            "YBR_FULL_422 with an odd number of columns ({})",
            module.cols
        ));
    }
    Ok(packed
        .chunks_exact(4)
        .flat_map(|q| [q[0], q[2], q[3], q[1], q[2], q[3]])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_are_masked_and_sign_extended_from_bits_stored() {
        assert_eq!(stored_value(0xF800, 12, false), 2048.0);
        assert_eq!(stored_value(0x0800, 12, true), -2048.0);
        assert_eq!(stored_value(0xFFFF_FFFF, 32, true), -1.0);
        assert_eq!(stored_value(0xFFFF_FFFF, 32, false), 4_294_967_295.0);
    }

    #[test]
    fn ybr_full_422_pairs_share_their_chroma() {
        let module = PixelModule {
            rows: 1,
            cols: 2,
            samples: 3,
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            planar: false,
            photometric: "YBR_FULL_422".into(),
            frames: 1,
            kind: PixelKind::Integer,
        };
        let frame = native_frame(&[10, 20, 100, 200], &module, false).unwrap();
        assert_eq!(frame.samples, vec![10.0, 100.0, 200.0, 20.0, 100.0, 200.0]);
        assert_eq!(frame.photometric, "YBR_FULL");
        let e = native_frame(&[10, 20, 100], &module, false).unwrap_err();
        assert!(e.contains("holds 3 bytes, 4 expected"), "{e}");
    }
}
