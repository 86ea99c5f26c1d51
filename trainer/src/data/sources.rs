//! Dataset readers: the layouts in `../shared/data`, folders of class sub-folders, CSV manifests
//! and MedMNIST `.npz` files. Each yields a [`DatasetIndex`] and never decodes pixels (that is
//! [`super::load_images`]); missing image files are not an error here, so that `data check` can
//! list all of them at once, but they are part of the content hash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use scanside_runtime::decode::{read_dicom_identity, sniff, FileFormat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    hex, ArrayImages, DatasetIndex, Finding, ImageRef, Partition, Sample, Target, Task,
    UncertaintyPolicy,
};
use crate::{Error, Result};

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

fn parse_chexpert(cell: &str) -> Option<Finding> {
    match cell.trim() {
        "" => Some(Finding::Unmentioned),
        v => match v.parse::<f64>().ok()? {
            1.0 => Some(Finding::Positive),
            0.0 => Some(Finding::Negative),
            -1.0 => Some(Finding::Uncertain),
            _ => None,
        },
    }
}

fn read_csv(spec: &CsvSpec) -> Result<DatasetIndex> {
    let csv_path = &spec.path;
    let bytes = scanside_runtime::persist::read(csv_path)?;
    let bad = |reason: String| Error::Data {
        path: csv_path.clone(),
        reason,
    };
    let root = match &spec.image_root {
        Some(r) => r.clone(),
        None => csv_path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| bad(format!("unreadable header: {e}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                bad(format!(
                    "no column {name:?} (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })
    };
    let path_col = column(&spec.path_column)?;
    let group_col = spec.group_column.as_deref().map(column).transpose()?;
    enum Cols {
        One(usize),
        Many(Vec<usize>),
    }
    let label_cols = match &spec.labels {
        CsvLabels::Class { column: c, .. } | CsvLabels::Joined { column: c, .. } => {
            Cols::One(column(c)?)
        }
        CsvLabels::Findings { columns } => {
            if columns.is_empty() {
                return Err(bad("no finding columns given".into()));
            }
            Cols::Many(columns.iter().map(|c| column(c)).collect::<Result<_>>()?)
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    // (row, id, group, file, raw label cells, other columns)
    type Row = (
        usize,
        String,
        String,
        PathBuf,
        Vec<String>,
        BTreeMap<String, String>,
    );
    let mut rows: Vec<Row> = Vec::new();
    let label_positions: Vec<usize> = match &label_cols {
        Cols::One(c) => vec![*c],
        Cols::Many(cs) => cs.clone(),
    };
    let mut seen_ids = HashSet::new();
    for (n, record) in reader.records().enumerate() {
        let row = n + 2;
        let record = record.map_err(|e| bad(format!("row {row}: {e}")))?;
        let field = |i: usize| record.get(i).unwrap_or("").trim().to_string();
        let id = field(path_col);
        if id.is_empty() {
            return Err(bad(format!("row {row}: empty {:?} cell", spec.path_column)));
        }
        if !seen_ids.insert(id.clone()) {
            return Err(bad(format!("row {row}: image {id:?} is listed twice")));
        }
        let group = match group_col {
            Some(c) => {
                let g = field(c);
                if g.is_empty() {
                    return Err(bad(format!(
                        "row {row}: empty {:?} cell",
                        spec.group_column.as_deref().unwrap_or_default()
                    )));
                }
                g
            }
            None => id.clone(),
        };
        let file = root.join(spec.path_template.replace("{}", &id));
        hash_file_entry(&mut hasher, &id, &file);
        let cells = match &label_cols {
            Cols::One(c) => vec![field(*c)],
            Cols::Many(cs) => cs.iter().map(|&c| field(c)).collect(),
        };
        let attributes = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                *i != path_col && Some(*i) != group_col && !label_positions.contains(i)
            })
            .map(|(i, h)| (h.trim().to_string(), field(i)))
            .collect();
        rows.push((row, id, group, file, cells, attributes));
    }
    if rows.is_empty() {
        return Err(bad("lists no images".into()));
    }
    // Resolve class names, then targets.
    let (task, class_names): (Task, Vec<String>) = match &spec.labels {
        CsvLabels::Class { classes, .. } => (
            Task::MultiClass,
            match classes {
                Some(c) => c.clone(),
                None => rows
                    .iter()
                    .map(|r| r.4[0].clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            },
        ),
        CsvLabels::Joined {
            separator,
            none_value,
            classes,
            ..
        } => (
            Task::MultiLabel,
            match classes {
                Some(c) => c.clone(),
                None => rows
                    .iter()
                    .flat_map(|r| split_joined(&r.4[0], separator))
                    .filter(|f| Some(f) != none_value.as_ref())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            },
        ),
        CsvLabels::Findings { columns } => (Task::MultiLabel, columns.clone()),
    };
    if class_names.iter().any(|c| c.is_empty()) {
        return Err(bad("a class name is empty (blank label cell?)".into()));
    }
    let position: HashMap<&str, usize> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut samples = Vec::with_capacity(rows.len());
    for (row, id, group, file, cells, attributes) in rows {
        let target = match &spec.labels {
            CsvLabels::Class { column, .. } => {
                let c = *position.get(cells[0].as_str()).ok_or_else(|| {
                    bad(format!(
                        "row {row}: {column} {:?} is not a known class (known: {})",
                        cells[0],
                        class_names.join(", ")
                    ))
                })?;
                Target::Class(c)
            }
            CsvLabels::Joined {
                column,
                separator,
                none_value,
                ..
            } => {
                let mut findings = vec![Finding::Unmentioned; class_names.len()];
                let names = split_joined(&cells[0], separator);
                for name in &names {
                    if Some(name) == none_value.as_ref() {
                        if names.len() > 1 {
                            return Err(bad(format!(
                                "row {row}: {column} has {name:?} together with findings"
                            )));
                        }
                        continue;
                    }
                    let c = *position.get(name.as_str()).ok_or_else(|| {
                        bad(format!(
                            "row {row}: {column} names {name:?}, not a known finding (known: {})",
                            class_names.join(", ")
                        ))
                    })?;
                    findings[c] = Finding::Positive;
                }
                Target::Findings(findings)
            }
            CsvLabels::Findings { columns } => Target::Findings(
                cells
                    .iter()
                    .zip(columns)
                    .map(|(cell, column)| {
                        parse_chexpert(cell).ok_or_else(|| {
                            bad(format!(
                                "row {row}: {column} is {cell:?}; expected 1, 0, -1 or blank"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        samples.push(Sample {
            id,
            group,
            target,
            image: ImageRef::File(file),
            official: None,
            attributes,
        });
    }
    Ok(DatasetIndex {
        source: SourceSpec::Csv(spec.clone()),
        task,
        class_names,
        uncertainty: spec.uncertainty,
        grouped_by: spec
            .group_column
            .clone()
            .unwrap_or_else(|| "none (one group per image)".into()),
        samples,
        content_sha256: hex(&hasher.finalize()),
        arrays: None,
    })
}

fn split_joined(cell: &str, separator: &str) -> Vec<String> {
    cell.split(separator)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

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

fn read_folder(root: &Path) -> Result<DatasetIndex> {
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

fn medmnist_class_names(stem: &str, classes: usize) -> Vec<String> {
    let known: &[&str] = match stem.split(['_', '.']).next().unwrap_or("") {
        "dermamnist" => &HAM10000_CLASSES,
        "pneumoniamnist" => &["normal", "pneumonia"],
        "breastmnist" => &["malignant", "normal_or_benign"],
        "chestmnist" => &NIH_FINDINGS,
        _ => &[],
    };
    if known.len() == classes {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        (0..classes).map(|c| format!("class{c}")).collect()
    }
}

fn read_medmnist(path: &Path) -> Result<DatasetIndex> {
    let bytes = scanside_runtime::persist::read(path)?;
    let bad = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = npyz::npz::NpzArchive::new(std::io::Cursor::new(&bytes))
        .map_err(|e| bad(format!("not a readable npz archive: {e}")))?;
    let mut samples = Vec::new();
    let mut pixels = Vec::new();
    let mut geometry: Option<(u32, u32, u32)> = None;
    // Number of label columns: None for one class index per image.
    let mut label_columns: Option<Option<usize>> = None;
    let mut max_label = 0;
    for (partition, name) in [
        (Partition::Train, "train"),
        (Partition::Val, "val"),
        (Partition::Test, "test"),
    ] {
        let images = archive
            .by_name(&format!("{name}_images"))
            .map_err(|e| bad(format!("{name}_images: {e}")))?
            .ok_or_else(|| bad(format!("no array {name}_images")))?;
        let shape: Vec<u64> = images.shape().to_vec();
        let (n, h, w, c) = match shape.as_slice() {
            [n, h, w] => (*n, *h, *w, 1),
            [n, h, w, c] if *c == 1 || *c == 3 => (*n, *h, *w, *c),
            other => {
                return Err(bad(format!(
                    "{name}_images has shape {other:?}, expected N×H×W or N×H×W×3"
                )))
            }
        };
        let g = (h as u32, w as u32, c as u32);
        if geometry.is_some_and(|prev| prev != g) {
            return Err(bad(format!(
                "{name}_images has a different image size from train"
            )));
        }
        geometry = Some(g);
        let data: Vec<u8> = images
            .into_vec()
            .map_err(|e| bad(format!("{name}_images: {e} (uint8 expected)")))?;
        let labels = archive
            .by_name(&format!("{name}_labels"))
            .map_err(|e| bad(format!("{name}_labels: {e}")))?
            .ok_or_else(|| bad(format!("no array {name}_labels")))?;
        let label_shape = labels.shape().to_vec();
        let columns = match label_shape.as_slice() {
            [m] | [m, 1] if *m == n => None,
            [m, k] if *m == n => Some(*k as usize),
            other => {
                return Err(bad(format!(
                    "{name}_labels has shape {other:?}; expected N, N×1 (class index) or N×K \
                     (multi-label) with N = {n}"
                )))
            }
        };
        if label_columns.is_some_and(|prev| prev != columns) {
            return Err(bad(format!(
                "{name}_labels has a different label shape from train"
            )));
        }
        label_columns = Some(columns);
        let labels: Vec<i64> =
            read_labels(labels).map_err(|e| bad(format!("{name}_labels: {e}")))?;
        let base = samples.len();
        for i in 0..n as usize {
            let target = match columns {
                None => {
                    let label = usize::try_from(labels[i]).map_err(|_| {
                        bad(format!("{name}_labels[{i}] = {} is negative", labels[i]))
                    })?;
                    max_label = max_label.max(label);
                    Target::Class(label)
                }
                Some(k) => Target::Findings(
                    labels[i * k..(i + 1) * k]
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| match v {
                            1 => Ok(Finding::Positive),
                            0 => Ok(Finding::Negative),
                            -1 => Ok(Finding::Uncertain),
                            other => Err(bad(format!(
                                "{name}_labels[{i}, {j}] = {other}; multi-label values are 1, 0 \
                                 or -1"
                            ))),
                        })
                        .collect::<Result<_>>()?,
                ),
            };
            let id = format!("{name}-{i}");
            samples.push(Sample {
                group: id.clone(),
                id,
                target,
                image: ImageRef::Array(base + i),
                official: Some(partition),
                attributes: BTreeMap::new(),
            });
        }
        pixels.extend_from_slice(&data);
    }
    let (height, width, channels) = geometry.expect("three partitions were read");
    if samples.is_empty() {
        return Err(bad("holds no images".into()));
    }
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (task, classes) = match label_columns.flatten() {
        None => (Task::MultiClass, max_label + 1),
        Some(k) => (Task::MultiLabel, k),
    };
    Ok(DatasetIndex {
        source: SourceSpec::Medmnist {
            path: path.to_path_buf(),
        },
        task,
        class_names: medmnist_class_names(&stem, classes),
        uncertainty: UncertaintyPolicy::default(),
        grouped_by: "official".into(),
        samples,
        content_sha256: hex(&Sha256::digest(&bytes)),
        arrays: Some(ArrayImages {
            pixels,
            height,
            width,
            channels,
        }),
    })
}

fn read_labels<R: std::io::Read>(npy: npyz::NpyFile<R>) -> std::result::Result<Vec<i64>, String> {
    use npyz::{DType, TypeChar};
    match npy.dtype() {
        DType::Plain(t) if t.type_char() == TypeChar::Uint && t.size_field() == 1 => Ok(npy
            .into_vec::<u8>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(i64::from)
            .collect()),
        DType::Plain(t) if t.type_char() == TypeChar::Int && t.size_field() == 1 => Ok(npy
            .into_vec::<i8>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(i64::from)
            .collect()),
        DType::Plain(t) if t.type_char() == TypeChar::Int && t.size_field() == 8 => {
            npy.into_vec::<i64>().map_err(|e| e.to_string())
        }
        DType::Plain(t) if t.type_char() == TypeChar::Int && t.size_field() == 4 => Ok(npy
            .into_vec::<i32>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(i64::from)
            .collect()),
        other => Err(format!("unsupported label dtype {}", other.descr())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chexpert_cells_parse_and_others_are_refused() {
        assert_eq!(parse_chexpert("1.0"), Some(Finding::Positive));
        assert_eq!(parse_chexpert("0"), Some(Finding::Negative));
        assert_eq!(parse_chexpert("-1.0"), Some(Finding::Uncertain));
        assert_eq!(parse_chexpert(" "), Some(Finding::Unmentioned));
        assert_eq!(parse_chexpert("2"), None);
        assert_eq!(parse_chexpert("yes"), None);
    }

    #[test]
    fn source_specs_round_trip_through_json() {
        let spec = SourceSpec::Csv(nih_spec(Path::new("/data/nih")));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SourceSpec>(&json).unwrap(), spec);
        let moved = spec.with_path(Path::new("/elsewhere/labels.csv"));
        assert_eq!(moved.path(), Path::new("/elsewhere/labels.csv"));
    }
}
