//! PNG and JPEG files (8 or 16 bits, gray or colour) through the `image` crate, as a
//! [`DecodedImage`]. It never windows, resizes or normalises: raster samples are mapped to
//! `[0, 1]` by their bit depth only.

use std::path::Path;

use super::{decode_error, DecodedImage, SourceInfo};
use crate::Result;

/// Decodes a PNG or JPEG file held in memory; `path` names it in errors.
pub(super) fn decode(path: &Path, bytes: &[u8]) -> Result<DecodedImage> {
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
