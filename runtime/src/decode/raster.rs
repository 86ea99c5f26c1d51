//! PNG and JPEG files (8 or 16 bits, gray or colour) through the `image` crate, as a
//! [`DecodedImage`]. It never windows, resizes or normalises: raster samples are mapped to
//! `[0, 1]` by their bit depth only. A file must be whole: a PNG without its IEND chunk or a
//! JPEG without its end-of-image marker, or with less entropy-coded data than its frame needs, is
//! refused (the decoders would fill the rest in).

use std::path::Path;

use super::jpeg::{check_complete as check_jpeg_complete, check_scan_data as check_jpeg_scan_data};
use super::{decode_error, DecodedImage, SourceInfo, MAX_PIXELS};
use crate::Result;

/// Decodes a PNG or JPEG file held in memory; `path` names it in errors.
pub(super) fn decode(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    let format = image::guess_format(bytes).map_err(|e| decode_error(path, e))?;
    match format {
        image::ImageFormat::Png => check_png_complete(bytes),
        image::ImageFormat::Jpeg => check_jpeg_complete(bytes),
        _ => Ok(()),
    }
    .map_err(|e| decode_error(path, e))?;
    let source = match format {
        image::ImageFormat::Png => SourceInfo::Png { bit_depth: 0 },
        _ => SourceInfo::Jpeg,
    };
    // The header's size first: a few kB of JPEG can declare 13312 x 12288 pixels (found by
    // cargo-fuzz), seconds and most of a gigabyte to decode; DICOM has the same bound.
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| decode_error(path, e))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(decode_error(
            path,
            format!("{w}x{h} pixels is larger than the {MAX_PIXELS}-pixel limit"),
        ));
    }
    if format == image::ImageFormat::Jpeg {
        check_jpeg_scan_data(bytes).map_err(|e| decode_error(path, e))?;
    }
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

/// Checks that a PNG is whole: every chunk (length, type, data, CRC) fits in the file and the
/// IEND chunk is there.
fn check_png_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut at = 8;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let kind = bytes.get(at + 4..at + 8);
        let end = at.saturating_add(12).saturating_add(len);
        if end > bytes.len() {
            break;
        }
        if kind == Some(b"IEND") {
            return Ok(());
        }
        at = end;
    }
    Err("PNG: the file ends before its IEND chunk (truncated)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_cut_anywhere_before_its_iend_chunk_is_refused() {
        let mut png = Vec::new();
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * y) as u8]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(check_png_complete(&png), Ok(()));
        for cut in 8..png.len() {
            assert!(check_png_complete(&png[..cut]).is_err(), "cut at {cut}");
        }
    }
}
