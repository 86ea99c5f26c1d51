//! Dataset readers: the layouts in `../shared/data`, folders of class sub-folders, CSV manifests
//! and MedMNIST `.npz` files. Each yields a [`DatasetIndex`] and never decodes pixels (that is
//! [`super::load_images`]); missing image files are not an error here, so that `data check` can
//! list all of them at once, but they are part of the content hash.

mod folder;
mod manifest;
mod medmnist;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DatasetIndex, UncertaintyPolicy};
use crate::{Error, Result};
use folder::read_folder;
use manifest::read_csv;
use medmnist::read_medmnist;

/// The HAM10000 diagnosis codes, in the order used by DermaMNIST and by this project.
pub const HAM10000_CLASSES: [&str; 7] = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"];

/// The 14 ChestX-ray14 findings, in the order of the NIH release and of ChestMNIST.
pub const NIH_FINDINGS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// What `--data` may point at, for error messages.
pub const SUPPORTED_LAYOUTS: &str = "a HAM10000 folder (metadata.csv + images/), an NIH \
     ChestX-ray14 folder (labels.csv + images/), a MedMNIST .npz file, a folder of class \
     sub-folders holding PNG/JPEG/DICOM images, or a CSV manifest (with --path-column and \
     --label-column or --finding-columns)";

/// How to read a dataset; saved in split files so later commands reopen the same data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "layout", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSpec {
    /// HAM10000: `metadata.csv` (lesion_id, image_id, dx) and `images/<image_id>.jpg`.
    Ham10000 {
        /// The folder.
        path: PathBuf,
    },
    /// NIH ChestX-ray14 sample: `labels.csv` (image, patient_id, finding_labels).
    NihCxr {
        /// The folder.
        path: PathBuf,
    },
    /// MedMNIST v2 `.npz` with official splits.
    Medmnist {
        /// The file.
        path: PathBuf,
    },
    /// A folder whose sub-folder names are the classes; DICOM images are grouped by Patient ID.
    Folder {
        /// The folder.
        path: PathBuf,
    },
    /// A CSV manifest.
    Csv(CsvSpec),
}

/// A CSV manifest's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    /// The manifest file.
    pub path: PathBuf,
    /// Folder image paths are relative to (default: the manifest's folder).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Column holding the image path (or id, with `path_template`).
    pub path_column: String,
    /// How a path cell becomes a file path: `{}` is replaced by the cell.
    #[serde(default = "default_template")]
    pub path_template: String,
    /// Column holding the case / patient id; each image is its own group when absent.
    #[serde(default)]
    pub group_column: Option<String>,
    /// Where the labels are.
    pub labels: CsvLabels,
    /// How uncertain findings become targets.
    #[serde(default)]
    pub uncertainty: UncertaintyPolicy,
}

fn default_template() -> String {
    "{}".into()
}

/// Label columns of a CSV manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CsvLabels {
    /// Multi-class: one column naming the class.
    Class {
        /// The column.
        column: String,
        /// Class order; sorted distinct values when absent.
        #[serde(default)]
        classes: Option<Vec<String>>,
    },
    /// Multi-label: one column of findings joined by a separator (NIH `Finding Labels`).
    Joined {
        /// The column.
        column: String,
        /// Between findings, e.g. `|`.
        separator: String,
        /// The value meaning "no finding" (e.g. `No Finding`).
        #[serde(default)]
        none_value: Option<String>,
        /// Finding order; sorted distinct values when absent.
        #[serde(default)]
        classes: Option<Vec<String>>,
    },
    /// Multi-label: one column per finding holding CheXpert values 1 / 0 / -1 / blank.
    Findings {
        /// The finding columns, in class order.
        columns: Vec<String>,
    },
}

impl SourceSpec {
    /// Recognises a dataset from its path alone (CSV manifests need a [`CsvSpec`]).
    pub fn detect(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Data {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Err(bad("does not exist".into()));
        }
        let path = path.to_path_buf();
        if path.is_dir() {
            if path.join("metadata.csv").is_file() {
                Ok(SourceSpec::Ham10000 { path })
            } else if path.join("labels.csv").is_file() {
                Ok(SourceSpec::NihCxr { path })
            } else {
                Ok(SourceSpec::Folder { path })
            }
        } else if has_extension(&path, "npz") {
            Ok(SourceSpec::Medmnist { path })
        } else if has_extension(&path, "csv") {
            Err(bad(
                "a CSV manifest needs its columns: --path-column, --label-column (or \
                 --label-column with --label-separator, or --finding-columns), and usually \
                 --group-column"
                    .into(),
            ))
        } else {
            Err(bad(format!(
                "not a known dataset layout; expected {SUPPORTED_LAYOUTS}"
            )))
        }
    }

    /// The file or folder read.
    pub fn path(&self) -> &Path {
        match self {
            SourceSpec::Ham10000 { path }
            | SourceSpec::NihCxr { path }
            | SourceSpec::Medmnist { path }
            | SourceSpec::Folder { path } => path,
            SourceSpec::Csv(spec) => &spec.path,
        }
    }

    /// The spec with each of its paths mapped by `f` (recording them relative to a file, or
    /// resolving such records).
    pub fn map_paths(&self, f: impl Fn(&Path) -> PathBuf) -> Self {
        let mut spec = self.clone();
        match &mut spec {
            SourceSpec::Ham10000 { path }
            | SourceSpec::NihCxr { path }
            | SourceSpec::Medmnist { path }
            | SourceSpec::Folder { path } => *path = f(path),
            SourceSpec::Csv(csv) => {
                csv.path = f(&csv.path);
                csv.image_root = csv.image_root.as_deref().map(&f);
            }
        }
        spec
    }

    /// The same spec reading from another place (data moved; the content hash still decides).
    pub fn with_path(&self, new: &Path) -> Self {
        let mut spec = self.clone();
        match &mut spec {
            SourceSpec::Ham10000 { path }
            | SourceSpec::NihCxr { path }
            | SourceSpec::Medmnist { path }
            | SourceSpec::Folder { path } => *path = new.to_path_buf(),
            SourceSpec::Csv(csv) => csv.path = new.to_path_buf(),
        }
        spec
    }

    /// The metadata column a split stratifies on beside label and group size: how the
    /// diagnosis was confirmed (HAM10000 `dx_type`: histopathology, follow-up, consensus,
    /// confocal) or how the image was taken (NIH `view`: PA, AP), when the source has one.
    pub fn stratify_column(&self) -> Option<&'static str> {
        match self {
            SourceSpec::Ham10000 { .. } => Some("dx_type"),
            SourceSpec::NihCxr { .. } => Some("view"),
            SourceSpec::Medmnist { .. } | SourceSpec::Folder { .. } | SourceSpec::Csv(_) => None,
        }
    }

    /// Short layout name for reports.
    pub fn layout(&self) -> &'static str {
        match self {
            SourceSpec::Ham10000 { .. } => "ham10000",
            SourceSpec::NihCxr { .. } => "nih-cxr",
            SourceSpec::Medmnist { .. } => "medmnist",
            SourceSpec::Folder { .. } => "folder",
            SourceSpec::Csv(_) => "csv",
        }
    }

    /// Reads the dataset's index.
    pub fn open(&self) -> Result<DatasetIndex> {
        let mut index = match self {
            SourceSpec::Ham10000 { path } => read_csv(&ham10000_spec(path))?,
            SourceSpec::NihCxr { path } => read_csv(&nih_spec(path))?,
            SourceSpec::Medmnist { path } => read_medmnist(path)?,
            SourceSpec::Folder { path } => read_folder(path)?,
            SourceSpec::Csv(spec) => read_csv(spec)?,
        };
        index.source = self.clone();
        Ok(index)
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// The HAM10000 layout as a manifest.
fn ham10000_spec(dir: &Path) -> CsvSpec {
    CsvSpec {
        path: dir.join("metadata.csv"),
        image_root: Some(dir.to_path_buf()),
        path_column: "image_id".into(),
        path_template: "images/{}.jpg".into(),
        group_column: Some("lesion_id".into()),
        labels: CsvLabels::Class {
            column: "dx".into(),
            classes: Some(HAM10000_CLASSES.iter().map(|s| s.to_string()).collect()),
        },
        uncertainty: UncertaintyPolicy::default(),
    }
}

/// The NIH ChestX-ray14 sample layout as a manifest.
fn nih_spec(dir: &Path) -> CsvSpec {
    CsvSpec {
        path: dir.join("labels.csv"),
        image_root: Some(dir.to_path_buf()),
        path_column: "image".into(),
        path_template: "{}".into(),
        group_column: Some("patient_id".into()),
        labels: CsvLabels::Joined {
            column: "finding_labels".into(),
            separator: "|".into(),
            none_value: Some("No Finding".into()),
            classes: Some(NIH_FINDINGS.iter().map(|s| s.to_string()).collect()),
        },
        uncertainty: UncertaintyPolicy::default(),
    }
}

/// Adds `name:size` (or `name:missing`) to the content hash.
fn hash_file_entry(hasher: &mut Sha256, name: &str, file: &Path) {
    match std::fs::metadata(file) {
        Ok(m) => hasher.update(format!("{name}:{}\n", m.len()).as_bytes()),
        Err(_) => hasher.update(format!("{name}:missing\n").as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_round_trip_through_json() {
        let spec = SourceSpec::Csv(nih_spec(Path::new("/data/nih")));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SourceSpec>(&json).unwrap(), spec);
        let moved = spec.with_path(Path::new("/elsewhere/labels.csv"));
        assert_eq!(moved.path(), Path::new("/elsewhere/labels.csv"));
    }
}
