//! Folders of class sub-folders: each sub-folder's name is a class, every PNG, JPEG or DICOM
//! image below it (found by extension, or DICOM by its magic) one sample, grouped by DICOM
//! PatientID when a file carries one. Only DICOM headers are read, never pixels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scanside_runtime::decode::{read_dicom_identity, sniff, FileFormat};
use sha2::{Digest, Sha256};

use super::{hash_file_entry, SourceSpec, SUPPORTED_LAYOUTS};
use crate::data::{hex, DatasetIndex, ImageRef, Sample, Target, Task, UncertaintyPolicy};
use crate::{Error, Result};

/// Whether a file is an image the runtime's decoder reads: by extension, or (for DICOM files,
/// which often have none) by the `DICM` magic.
fn is_image_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png" | "jpg" | "jpeg" | "dcm" | "dicom") => true,
        Some(_) => false,
        None => {
            let mut head = [0_u8; 132];
            std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok()
                && sniff(&head) == Some(FileFormat::Dicom)
        }
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(crate::io_error(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(crate::io_error(dir))?;
    entries.retain(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in list_dir(dir)? {
        if entry.is_dir() {
            collect_images(&entry, out)?;
        } else if is_image_file(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Reads a folder of class sub-folders.
pub(super) fn read_folder(root: &Path) -> Result<DatasetIndex> {
    let bad = |path: &Path, reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let mut class_names = Vec::new();
    let mut samples = Vec::new();
    let mut hasher = Sha256::new();
    let mut dicom_groups = 0;
    for entry in list_dir(root)? {
        if !entry.is_dir() {
            if is_image_file(&entry) {
                return Err(bad(
                    &entry,
                    "image is not inside a class sub-folder (the sub-folder names are the \
                     labels)"
                        .into(),
                ));
            }
            continue;
        }
        let class = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = Vec::new();
        collect_images(&entry, &mut files)?;
        if files.is_empty() {
            return Err(bad(
                &entry,
                "class folder holds no PNG, JPEG or DICOM images".into(),
            ));
        }
        let label = class_names.len();
        class_names.push(class);
        for file in files {
            let id = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            hash_file_entry(&mut hasher, &id, &file);
            let is_dicom = std::fs::File::open(&file)
                .and_then(|mut f| {
                    let mut head = [0_u8; 132];
                    std::io::Read::read_exact(&mut f, &mut head).map(|_| head)
                })
                .is_ok_and(|head| sniff(&head) == Some(FileFormat::Dicom));
            // A patient's images must stay together; DICOM says whose they are.
            let group = if is_dicom {
                match read_dicom_identity(&file)?.patient_id {
                    Some(p) => {
                        dicom_groups += 1;
                        format!("patient:{p}")
                    }
                    None => id.clone(),
                }
            } else {
                id.clone()
            };
            samples.push(Sample {
                id,
                group,
                target: Target::Class(label),
                image: ImageRef::File(file),
                official: None,
                attributes: BTreeMap::new(),
            });
        }
    }
    if class_names.is_empty() {
        return Err(bad(
            root,
            format!("has no class sub-folders; expected {SUPPORTED_LAYOUTS}"),
        ));
    }
    Ok(DatasetIndex {
        source: SourceSpec::Folder {
            path: root.to_path_buf(),
        },
        task: Task::MultiClass,
        class_names,
        uncertainty: UncertaintyPolicy::default(),
        grouped_by: if dicom_groups > 0 {
            "DICOM PatientID (files without one: one group each)".into()
        } else {
            "none (one group per image)".into()
        },
        samples,
        content_sha256: hex(&hasher.finalize()),
        arrays: None,
    })
}
