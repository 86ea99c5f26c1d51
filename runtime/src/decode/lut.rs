//! DICOM lookup tables: the Modality LUT and VOI LUT Sequences and the palette colour tables,
//! read once per file from their descriptor and data. It only looks values up: which table
//! applies, and when, is decided by the code that reads frames and the windowing policy.

use dicom_dictionary_std::tags;

/// A lookup table (palette, modality or VOI LUT): entries, the first stored value mapped, and
/// the bits per entry, from a descriptor (US/SS ×3) and its data (US or OW, 8 or 16 bits).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupTable {
    pub(super) entries: Vec<u16>,
    pub(super) first: f32,
    pub(super) bits: u16,
}

impl LookupTable {
    /// Reads a table from its descriptor and data; `segmented` names the segmented data
    /// element to expand when the plain one is absent (palettes, PS3.3 C.7.9.2).
    fn read(
        obj: &dicom_object::InMemDicomObject,
        descriptor: dicom_core::Tag,
        data: dicom_core::Tag,
        segmented: Option<dicom_core::Tag>,
        name: &str,
        big_endian: bool,
    ) -> std::result::Result<Self, String> {
        let d: Vec<i32> = obj
            .element(descriptor)
            .map_err(|_| format!("{name} without its lookup table descriptor"))?
            .to_multi_int()
            .map_err(|e| format!("{name} descriptor: {e}"))?;
        if d.len() != 3 {
            return Err(format!(
                "{name} descriptor has {} values, 3 expected",
                d.len()
            ));
        }
        // Entries: 0 means 65536; the first mapped value is US or SS (PS3.3 C.7.6.3.1.5).
        let count = if d[0] == 0 {
            65536
        } else {
            d[0] as u16 as usize
        };
        let first = if d[1] < 0 {
            d[1] as f32
        } else {
            d[1] as u16 as f32
        };
        let bits = d[2].clamp(1, 16) as u16;
        let entries = match obj.element_opt(data).ok().flatten() {
            Some(element) => table_entries(element, count, bits, big_endian)
                .map_err(|e| format!("{name} data: {e}"))?,
            None => {
                let element = segmented
                    .and_then(|tag| obj.element_opt(tag).ok().flatten())
                    .ok_or_else(|| format!("{name} without lookup table data"))?;
                let words = words_of(element, big_endian)
                    .map_err(|e| format!("{name} segmented data: {e}"))?;
                expand_segmented(&words, count)
                    .map_err(|e| format!("{name} segmented data: {e}"))?
            }
        };
        if entries.len() < count {
            return Err(format!(
                "{name} data holds {} entries, {count} expected",
                entries.len()
            ));
        }
        Ok(Self {
            entries: entries[..count].to_vec(),
            first,
            bits,
        })
    }

    /// Below the first mapped value: the first entry; above the last: the last.
    pub(super) fn look_up(&self, value: f32) -> f32 {
        let i = ((value - self.first).max(0.0) as usize).min(self.entries.len() - 1);
        f32::from(self.entries[i])
    }
}

/// PALETTE COLOR: each stored index looked up in the red, green and blue palette tables
/// (PS3.3 C.7.6.3.1.5). Returns interleaved RGB and the bits per entry.
pub(super) fn apply_palette(
    obj: &dicom_object::InMemDicomObject,
    indices: &[f32],
    big_endian: bool,
) -> std::result::Result<(Vec<f32>, u16), String> {
    let table = |descriptor, data, segmented, name| {
        LookupTable::read(obj, descriptor, data, Some(segmented), name, big_endian)
    };
    let r = table(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR red",
    )?;
    let g = table(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR green",
    )?;
    let b = table(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR blue",
    )?;
    let out = indices
        .iter()
        .flat_map(|&v| [r.look_up(v), g.look_up(v), b.look_up(v)])
        .collect();
    Ok((out, r.bits))
}

/// The first table of a LUT sequence (the Modality LUT Sequence, used instead of rescale
/// slope/intercept, or the VOI LUT Sequence, PS3.3 C.11.2), when the file has one.
pub(super) fn sequence_lut(
    obj: &dicom_object::InMemDicomObject,
    sequence_tag: dicom_core::Tag,
    name: &str,
    big_endian: bool,
) -> std::result::Result<Option<LookupTable>, String> {
    let Some(sequence) = obj.element_opt(sequence_tag).ok().flatten() else {
        return Ok(None);
    };
    let Some(item) = sequence.items().and_then(|items| items.first()) else {
        return Ok(None);
    };
    LookupTable::read(
        item,
        tags::LUT_DESCRIPTOR,
        tags::LUT_DATA,
        None,
        name,
        big_endian,
    )
    .map(Some)
}

/// A table's data as entries: 16-bit words, or (descriptor bits 8) bytes — 8-bit entries are
/// packed two to a word in OW data, so N entries arrive as N/2 words (pydicom reads them so).
fn table_entries(
    element: &dicom_object::mem::InMemElement,
    count: usize,
    bits: u16,
    big_endian: bool,
) -> std::result::Result<Vec<u16>, String> {
    use dicom_core::{DicomValue, PrimitiveValue};
    if let DicomValue::Primitive(PrimitiveValue::U8(b)) = element.value() {
        if bits <= 8 && b.len() >= count {
            return Ok(b.iter().map(|&x| u16::from(x)).collect());
        }
    }
    let words = words_of(element, big_endian)?;
    if bits <= 8 && words.len() < count && words.len() == count.div_ceil(2) {
        // The bytes as they lie in the file.
        return Ok(words
            .iter()
            .flat_map(|w| {
                if big_endian {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                }
            })
            .map(u16::from)
            .collect());
    }
    Ok(words)
}

/// An element's value as 16-bit words (OW read as bytes: in the file's byte order).
fn words_of(
    element: &dicom_object::mem::InMemElement,
    big_endian: bool,
) -> std::result::Result<Vec<u16>, String> {
    use dicom_core::{DicomValue, PrimitiveValue};
    Ok(match element.value() {
        DicomValue::Primitive(PrimitiveValue::U16(v)) => v.to_vec(),
        DicomValue::Primitive(PrimitiveValue::U8(b)) => b
            .chunks_exact(2)
            .map(|c| {
                if big_endian {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect(),
        _ => element.to_multi_int::<u16>().map_err(|e| e.to_string())?,
    })
}

/// Expands segmented palette data (PS3.3 C.7.9.2): discrete (opcode 0), linear (1) and
/// indirect (2) segments, up to `count` entries. Indirect segments may not point at further
/// indirect ones, so expansion always ends.
fn expand_segmented(words: &[u16], count: usize) -> std::result::Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::with_capacity(count);
    expand_segments(words, usize::MAX, count, &mut out, true)?;
    Ok(out)
}

fn expand_segments(
    words: &[u16],
    max_segments: usize,
    count: usize,
    out: &mut Vec<u16>,
    allow_indirect: bool,
) -> std::result::Result<(), String> {
    let word = |i: usize| {
        words
            .get(i)
            .copied()
            .ok_or_else(|| "a segment runs past the end of the data".to_string())
    };
    let (mut at, mut segments) = (0, 0);
    while at < words.len() && segments < max_segments && out.len() < count {
        let length = usize::from(word(at + 1)?);
        match word(at)? {
            0 => {
                out.extend(
                    words
                        .get(at + 2..at + 2 + length)
                        .ok_or("a discrete segment runs past the end of the data")?,
                );
                at += 2 + length;
            }
            1 => {
                let y0 = f64::from(*out.last().ok_or("a linear segment comes first")?);
                let y1 = f64::from(word(at + 2)?);
                let n = length as f64;
                out.extend(
                    (1..=length.min(count))
                        .map(|i| (y0 + (y1 - y0) * i as f64 / n).round_ties_even() as u16),
                );
                at += 3;
            }
            2 if allow_indirect => {
                if out.is_empty() {
                    return Err("an indirect segment comes first".into());
                }
                let offset = usize::from(word(at + 2)?) | usize::from(word(at + 3)?) << 16;
                let target = words
                    .get(offset..)
                    .ok_or("an indirect segment points past the data")?;
                expand_segments(target, length, count, out, false)?;
                at += 4;
            }
            2 => return Err("an indirect segment points at another indirect segment".into()),
            op => return Err(format!("unknown segment type {op}")),
        }
        segments += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmented_tables_expand_discrete_linear_and_indirect_segments() {
        // discrete [0, 10], linear to 40 over 3, indirect: the first segment again.
        let words = [0, 2, 0, 10, 1, 3, 40, 2, 1, 0, 0];
        assert_eq!(
            expand_segmented(&words, 100),
            Ok(vec![0, 10, 20, 30, 40, 0, 10])
        );
        // An indirect segment pointing at itself is refused, not followed for ever.
        assert!(expand_segmented(&[0, 1, 5, 2, 1, 3, 0], 100).is_err());
    }
}
