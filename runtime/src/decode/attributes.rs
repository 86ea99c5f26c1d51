//! Reading single attributes of a DICOM data set as numbers or text, including values stored
//! with VR UN (an explicit-VR writer that did not know the tag): those are reinterpreted with
//! the dictionary's VR, as PS3.5 6.2.2 says a reader may (pydicom does), so that an image whose
//! Pixel Representation is UN is not read as unsigned. It only reads; what the values mean is
//! for the modules that use them.

use dicom_core::{DicomValue, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;

/// The raw bytes of an element stored with VR UN, when it is one.
fn unknown_bytes(obj: &InMemDicomObject, tag: Tag) -> Option<&[u8]> {
    let element = obj.element_opt(tag).ok().flatten()?;
    if element.vr() != VR::UN {
        return None;
    }
    match element.value() {
        DicomValue::Primitive(PrimitiveValue::U8(bytes)) => Some(bytes),
        _ => None,
    }
}

/// An unsigned integer attribute (US/UL/IS), the first value.
pub(super) fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    if let Some(bytes) = unknown_bytes(obj, tag) {
        return match bytes.len() {
            2 => Some(u32::from(u16::from_le_bytes([bytes[0], bytes[1]]))),
            4 => Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            _ => text_of(bytes).and_then(|s| s.split('\\').next()?.trim().parse().ok()),
        };
    }
    let element = obj.element_opt(tag).ok().flatten()?;
    element.to_int::<u32>().ok().or_else(|| {
        // IS values such as "1.0" or " 2": what pydicom accepts.
        let text = element.to_str().ok()?;
        let first = text.split('\\').next()?.trim();
        first.parse::<f64>().ok().map(|v| v as u32)
    })
}

/// A text attribute, trimmed of DICOM padding; `None` when absent or empty.
pub(super) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    if let Some(bytes) = unknown_bytes(obj, tag) {
        return text_of(bytes);
    }
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

fn text_of(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes)
        .trim_matches(['\0', ' '])
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// A decimal attribute (DS/FD/FL), the first value.
pub(super) fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    if unknown_bytes(obj, tag).is_some() {
        return text(obj, tag)?.split('\\').next()?.trim().parse().ok();
    }
    let element = obj.element_opt(tag).ok().flatten()?;
    element
        .to_float64()
        .ok()
        .or_else(|| {
            element
                .to_str()
                .ok()?
                .split('\\')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .filter(|v: &f64| v.is_finite())
}

/// The `index`-th item of a sequence attribute.
pub(super) fn item(obj: &InMemDicomObject, tag: Tag, index: usize) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok().flatten()?.items()?.get(index)
}
