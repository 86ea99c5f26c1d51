//! The DIMSE command sets both ends of the service exchange (PS3.7): read element by element
//! (the receiver's requests, the forwarder's responses) and written in implicit VR little
//! endian, as every command set is.

use dicom_object::InMemDicomObject;

/// C-STORE-RQ's command field (PS3.7 E.1).
pub(super) const C_STORE_RQ: u16 = 0x0001;

/// Reads a command set itself rather than through dicom-rs: a command set is a flat list of
/// group-0000 elements in implicit VR little endian (PS3.7 6.3.1, E.1), and dicom-rs, given a
/// value length its VR does not divide (89 bytes of UL), read the next header out of step and
/// reserved the gigabytes it claimed (found by cargo-fuzz).
pub(super) fn command_elements(bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut elements = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("the command set ends inside an element at byte {at}"))?;
        let word = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
        let (group, element) = (word(0), word(2));
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if group != 0x0000 {
            return Err(format!(
                "element ({group:04X},{element:04X}) in a command set (group 0000 only)"
            ));
        }
        let value = bytes
            .get(at + 8..(at + 8).saturating_add(len))
            .ok_or_else(|| {
                format!("element (0000,{element:04X}) claims {len} bytes past the end")
            })?;
        elements.push((element, value));
        at += 8 + len;
    }
    Ok(elements)
}

/// A command set's bytes (implicit VR little endian, with its group length).
pub(super) fn encode_command(command: &InMemDicomObject) -> Result<Vec<u8>, String> {
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut bytes = Vec::new();
    command
        .write_dataset_with_ts(&mut bytes, &ts)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A 16-bit element's value (US), when it has exactly two bytes.
pub(super) fn uint(elements: &[(u16, &[u8])], tag: dicom_core::Tag) -> Option<u16> {
    match elements
        .iter()
        .find(|(element, _)| *element == tag.element())?
        .1
    {
        &[lo, hi] => Some(u16::from_le_bytes([lo, hi])),
        _ => None,
    }
}
