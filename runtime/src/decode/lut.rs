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
    fn read(
        obj: &dicom_object::InMemDicomObject,
        descriptor: dicom_core::Tag,
        data: dicom_core::Tag,
        name: &str,
        big_endian: bool,
    ) -> std::result::Result<Self, String> {
        use dicom_core::{DicomValue, PrimitiveValue};
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
        let element = obj.element(data).map_err(|_| {
            format!("{name} without lookup table data (segmented tables are not supported)")
        })?;
        let entries: Vec<u16> = match element.value() {
            DicomValue::Primitive(PrimitiveValue::U16(v)) => v.to_vec(),
            DicomValue::Primitive(PrimitiveValue::U8(b)) if bits <= 8 && b.len() == count => {
                b.iter().map(|&x| u16::from(x)).collect()
            }
            // OW read as bytes: in the file's byte order.
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
            _ => element
                .to_multi_int::<u16>()
                .map_err(|e| format!("{name} data: {e}"))?,
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
    obj: &dicom_object::DefaultDicomObject,
    indices: &[f32],
    big_endian: bool,
) -> std::result::Result<(Vec<f32>, u16), String> {
    let table = |descriptor, data, name| LookupTable::read(obj, descriptor, data, name, big_endian);
    let r = table(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR red",
    )?;
    let g = table(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "PALETTE COLOR green",
    )?;
    let b = table(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
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
    obj: &dicom_object::DefaultDicomObject,
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
    LookupTable::read(item, tags::LUT_DESCRIPTOR, tags::LUT_DATA, name, big_endian).map(Some)
}
