//! DICOMDIR files (PS3.10 media directories): the instances a directory record references,
//! read with the same defensive Part 10 reader as images. Only the file references are read;
//! the patient / study / series hierarchy is not needed to find the images.

use std::path::Path;

use dicom_dictionary_std::tags;

use super::part10::read_part10;
use crate::{Error, Result};

/// The Media Storage SOP Class of a DICOMDIR.
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// Whether Part 10 `bytes` are a DICOMDIR (by the file meta's Media Storage SOP Class).
pub fn is_dicomdir(bytes: &[u8]) -> bool {
    read_part10(bytes, true).is_ok_and(|obj| {
        obj.meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            == MEDIA_STORAGE_DIRECTORY
    })
}

/// The Referenced File IDs of a DICOMDIR's directory records, in record order: each a list of
/// path components relative to the DICOMDIR's folder (`["DICOM", "ST000", "IM0001"]`).
pub fn dicomdir_references(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<String>>> {
    let bad = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let obj = read_part10(bytes, false).map_err(|e| bad(format!("malformed DICOMDIR: {e}")))?;
    let records = obj
        .element_opt(tags::DIRECTORY_RECORD_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .ok_or_else(|| bad("a DICOMDIR without a Directory Record Sequence".into()))?;
    let mut references = Vec::new();
    for record in records {
        let Some(id) = record
            .element_opt(tags::REFERENCED_FILE_ID)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
        else {
            continue; // patient, study and series records reference no file
        };
        let components: Vec<String> = id
            .split('\\')
            .map(|c| c.trim_matches(['\0', ' ']).to_string())
            .collect();
        // PS3.10 8.2: components are 1-8 characters of upper-case letters, digits and `_`
        // (up to 16 and lower case accepted: writers stretch it); anything else (`..`,
        // separators) could leave the directory.
        let valid = |c: &String| {
            !c.is_empty()
                && c.len() <= 16
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !components.iter().all(valid) {
            return Err(bad(format!(
                "Referenced File ID {id:?} is not a file ID of this media"
            )));
        }
        references.push(components);
    }
    Ok(references)
}
