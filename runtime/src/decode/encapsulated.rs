//! Encapsulated Pixel Data (PS3.5 A.4): which fragments hold which frame. The Extended Offset
//! Table or the Basic Offset Table when present, one fragment per frame, every fragment for a
//! single frame, and otherwise — as pydicom does — the codestreams' own start markers (JPEG and
//! JPEG-LS SOI, JPEG 2000 SOC or the JP2 signature) to split the fragments into frames. The
//! frame's bytes are handed whole to the codec; a frame the data cannot account for is an error.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// How a codec's frames start, for splitting fragments without an offset table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameStart {
    /// JPEG and JPEG-LS: SOI (FF D8).
    Jpeg,
    /// JPEG 2000: SOC (FF 4F FF 51) or the JP2 signature box.
    J2k,
    /// RLE and others: no marker to go by.
    Unmarked,
}

impl FrameStart {
    fn starts_frame(self, fragment: &[u8]) -> bool {
        match self {
            FrameStart::Jpeg => fragment.starts_with(&[0xFF, 0xD8]),
            FrameStart::J2k => {
                fragment.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
                    || fragment.starts_with(&[0, 0, 0, 0x0C, b'j', b'P', b' ', b' '])
            }
            FrameStart::Unmarked => false,
        }
    }
}

/// The bytes of frame `frame` (0-based) of `frames` in `obj`'s encapsulated Pixel Data.
pub(super) fn encapsulated_frame(
    obj: &InMemDicomObject,
    frame: u32,
    frames: u32,
    start: FrameStart,
) -> Result<Vec<u8>, String> {
    let element = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| format!("no pixel data: {e}"))?;
    let fragments = element
        .value()
        .fragments()
        .ok_or("the pixel data is not encapsulated, as its transfer syntax requires")?;
    if fragments.is_empty() {
        return Err("the encapsulated pixel data has no fragments".into());
    }
    let (index, frames) = (frame as usize, frames as usize);
    if let Some(offsets) = extended_offsets(obj).filter(|o| o.len() == frames) {
        return by_offsets(fragments, &offsets, index);
    }
    let basic: Vec<u64> = element
        .value()
        .offset_table()
        .map(|o| o.iter().map(|&v| u64::from(v)).collect())
        .unwrap_or_default();
    if frames == 1 {
        return Ok(fragments.concat());
    }
    if basic.len() == frames {
        return by_offsets(fragments, &basic, index);
    }
    if fragments.len() == frames {
        return Ok(fragments[index].clone());
    }
    if start != FrameStart::Unmarked {
        let firsts: Vec<usize> = (0..fragments.len())
            .filter(|&i| start.starts_frame(&fragments[i]))
            .collect();
        if firsts.len() == frames && firsts.first() == Some(&0) {
            let end = firsts.get(index + 1).copied().unwrap_or(fragments.len());
            return Ok(fragments[firsts[index]..end].concat());
        }
    }
    Err(format!(
        "cannot tell which of the {} fragments hold frame {} of {frames} (no usable offset table)",
        fragments.len(),
        index + 1
    ))
}

/// The fragments whose items start in `[offsets[i], offsets[i + 1])`, counted from the first
/// fragment item (each item is an 8-byte header and its data).
fn by_offsets(fragments: &[Vec<u8>], offsets: &[u64], index: usize) -> Result<Vec<u8>, String> {
    let start = offsets[index];
    let end = offsets.get(index + 1).copied().unwrap_or(u64::MAX);
    if end <= start {
        return Err(format!(
            "the offset table's entries {} and {} are not increasing",
            index + 1,
            index + 2
        ));
    }
    let mut position = 0_u64;
    let mut bytes = Vec::new();
    for fragment in fragments {
        if (start..end).contains(&position) {
            bytes.extend_from_slice(fragment);
        }
        position += 8 + fragment.len() as u64;
    }
    if bytes.is_empty() {
        return Err(format!(
            "the offset table points frame {} past the fragments",
            index + 1
        ));
    }
    Ok(bytes)
}

/// (7FE0,0001) Extended Offset Table: one 64-bit little-endian offset per frame.
fn extended_offsets(obj: &InMemDicomObject) -> Option<Vec<u64>> {
    let element = obj
        .element_opt(tags::EXTENDED_OFFSET_TABLE)
        .ok()
        .flatten()?;
    let bytes = element.to_bytes().ok()?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}
