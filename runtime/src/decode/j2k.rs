//! JPEG 2000 frames (DICOM 1.2.840.10008.1.2.4.90/.91, HTJ2K .201–.203) through `jpeg2k` on
//! the pure-Rust OpenJPEG port, in strict mode so that a codestream that ends early is an error
//! (the default decodes what is there, for progressive downloads). The samples are taken as the
//! codestream gives them — its precision and sign, never rescaled to Bits Stored — and lossy
//! overshoot is clamped to the stored range rather than wrapped.

use super::native::{stored_value, Frame};
use super::pixel_module::PixelModule;

/// Decodes one JPEG 2000 frame into pixel-interleaved values on the stored scale.
pub(super) fn decode_j2k_frame(data: &[u8], module: &PixelModule) -> Result<Frame, String> {
    check_complete(data)?;
    check_size(data, module)?;
    let params = jpeg2k::DecodeParameters::new().strict(true);
    let image =
        jpeg2k::Image::from_bytes_with(data, params).map_err(|e| format!("JPEG 2000: {e}"))?;
    let components = image.components();
    if (
        image.width() as usize,
        image.height() as usize,
        components.len(),
    ) != (module.cols, module.rows, module.samples)
    {
        return Err(format!(
            "the JPEG 2000 frame is {}x{} with {} components, the header says {}x{} with {}",
            image.width(),
            image.height(),
            components.len(),
            module.cols,
            module.rows,
            module.samples
        ));
    }
    let (lo, hi) = stored_range(module);
    let pixels = module.rows * module.cols;
    let mut samples = vec![0.0_f32; pixels * module.samples];
    for (c, component) in components.iter().enumerate() {
        let data = component.data();
        if data.len() != pixels {
            return Err(format!(
                "JPEG 2000 component {c} holds {} samples, {pixels} expected (subsampled components are not supported)",
                data.len()
            ));
        }
        let precision = component.precision().clamp(1, 32) as u16;
        // An unsigned codestream in a signed image: two's complement at the codestream's
        // precision (pydicom does the same).
        // A signed codestream in an unsigned image: the bit patterns as unsigned.
        let (to_signed, to_unsigned) = (
            module.signed && !component.is_signed(),
            !module.signed && component.is_signed(),
        );
        for (i, &v) in data.iter().enumerate() {
            let v = if to_signed || to_unsigned {
                stored_value(v as u32, precision, to_signed)
            } else {
                v as f32
            };
            samples[i * module.samples + c] = v.clamp(lo, hi);
        }
    }
    // The decoder undoes the reversible/irreversible colour transform (YBR_RCT/YBR_ICT).
    let photometric = match module.photometric.as_str() {
        "YBR_RCT" | "YBR_ICT" => "RGB".to_string(),
        other => other.to_string(),
    };
    Ok(Frame {
        samples,
        photometric,
    })
}

/// The values Bits Stored and Pixel Representation allow.
fn stored_range(module: &PixelModule) -> (f32, f32) {
    let bits = i32::from(module.bits_stored.clamp(1, 31));
    if module.signed {
        (-(2_f32.powi(bits - 1)), 2_f32.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2_f32.powi(bits) - 1.0)
    }
}

/// A codestream (or JP2 file) must end with its EOC marker (FF D9), the even-length padding
/// aside: OpenJPEG's strict mode misses some cuts at tile-part boundaries.
/// The image size the codestream's SIZ segment declares, checked against the header before
/// OpenJPEG sees it: OpenJPEG allocates and clears the whole declared image before decoding, so
/// 3.6 kB declaring 512 x 2,883,584 samples took 2 GB (found by cargo-fuzz). Every codestream
/// (raw, or in a JP2 `jp2c` box) starts with SOC then SIZ.
fn check_size(data: &[u8], module: &PixelModule) -> Result<(), String> {
    let at = data
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .ok_or("JPEG 2000: no codestream header (SOC and SIZ markers)")?;
    let siz = data
        .get(at + 4..at + 42)
        .ok_or("JPEG 2000: the SIZ segment is cut short")?;
    let u32_at = |i: usize| u32::from_be_bytes([siz[i], siz[i + 1], siz[i + 2], siz[i + 3]]);
    // Lsiz, Rsiz, then Xsiz, Ysiz, XOsiz, YOsiz, four tile fields, Csiz.
    let (width, height) = (
        u32_at(4).saturating_sub(u32_at(12)) as usize,
        u32_at(8).saturating_sub(u32_at(16)) as usize,
    );
    let components = u16::from_be_bytes([siz[36], siz[37]]) as usize;
    if (width, height, components) != (module.cols, module.rows, module.samples) {
        return Err(format!(
            "the JPEG 2000 frame is {width}x{height} with {components} components, the header says {}x{} with {}",
            module.cols, module.rows, module.samples
        ));
    }
    Ok(())
}

fn check_complete(data: &[u8]) -> Result<(), String> {
    // Padding to an even length is a 0x00 or (some writers) a 0xFF byte.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let data = &data[..end];
    if data.ends_with(&[0xFF, 0xD9]) || data.ends_with(&[0xFF, 0xD9, 0xFF]) {
        Ok(())
    } else {
        Err(
            "JPEG 2000: the codestream does not end with its end-of-codestream marker (truncated)"
                .into(),
        )
    }
}
