//! MedMNIST v2 `.npz` archives: `{train,val,test}_{images,labels}` arrays, the images held in
//! memory, the official partitions kept, class indices or `N×K` multi-label findings. Nothing
//! here resizes or normalises.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{SourceSpec, HAM10000_CLASSES, NIH_FINDINGS};
use crate::data::{
    hex, ArrayImages, DatasetIndex, Finding, ImageRef, Partition, Sample, Target, Task,
    UncertaintyPolicy,
};
use crate::{Error, Result};

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

/// Reads a MedMNIST archive: its images into memory, its labels into targets.
pub(super) fn read_medmnist(path: &Path) -> Result<DatasetIndex> {
    let bytes = scanside_runtime::persist::read(path)?;
    let bad = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = npyz::npz::NpzArchive::new(std::io::Cursor::new(&bytes))
        .map_err(|e| bad(format!("not a readable npz archive: {e}")))?;
    let mut read = Partitions {
        samples: Vec::new(),
        pixels: Vec::new(),
        geometry: None,
        label_columns: None,
        max_label: 0,
        path,
    };
    for (partition, name) in [
        (Partition::Train, "train"),
        (Partition::Val, "val"),
        (Partition::Test, "test"),
    ] {
        read.partition(&mut archive, partition, name)?;
    }
    let (height, width, channels) = read.geometry.expect("three partitions were read");
    if read.samples.is_empty() {
        return Err(bad("holds no images".into()));
    }
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (task, classes) = match read.label_columns.flatten() {
        None => (Task::MultiClass, read.max_label + 1),
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
        samples: read.samples,
        content_sha256: hex(&Sha256::digest(&bytes)),
        arrays: Some(ArrayImages {
            pixels: read.pixels,
            height,
            width,
            channels,
        }),
    })
}

type Archive<'a> = npyz::npz::NpzArchive<std::io::Cursor<&'a Vec<u8>>>;

/// The partitions read so far: samples in partition order, their pixels, and the image size
/// and label shape every partition must share.
struct Partitions<'a> {
    samples: Vec<Sample>,
    pixels: Vec<u8>,
    /// Height, width, channels.
    geometry: Option<(u32, u32, u32)>,
    /// Label columns: `Some(None)` for one class index per image, `Some(Some(K))` for `N×K`.
    label_columns: Option<Option<usize>>,
    max_label: usize,
    path: &'a Path,
}

impl Partitions<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Data {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// Reads `{name}_images` and `{name}_labels` as the samples of `partition`.
    fn partition(
        &mut self,
        archive: &mut Archive<'_>,
        partition: Partition,
        name: &str,
    ) -> Result<()> {
        let (n, data) = self.images(archive, name)?;
        let (columns, labels) = self.labels(archive, name, n)?;
        let base = self.samples.len();
        for i in 0..n as usize {
            let target = self.target(&labels, columns, name, i)?;
            let id = format!("{name}-{i}");
            self.samples.push(Sample {
                group: id.clone(),
                id,
                target,
                image: ImageRef::Array(base + i),
                official: Some(partition),
                attributes: BTreeMap::new(),
            });
        }
        self.pixels.extend_from_slice(&data);
        Ok(())
    }

    /// A partition's images (`N×H×W` or `N×H×W×C`, uint8) and their count; the size must be
    /// train's.
    fn images(&mut self, archive: &mut Archive<'_>, name: &str) -> Result<(u64, Vec<u8>)> {
        let images = archive
            .by_name(&format!("{name}_images"))
            .map_err(|e| self.bad(format!("{name}_images: {e}")))?
            .ok_or_else(|| self.bad(format!("no array {name}_images")))?;
        let shape: Vec<u64> = images.shape().to_vec();
        let (n, h, w, c) = match shape.as_slice() {
            [n, h, w] => (*n, *h, *w, 1),
            [n, h, w, c] if *c == 1 || *c == 3 => (*n, *h, *w, *c),
            other => {
                return Err(self.bad(format!(
                    "{name}_images has shape {other:?}, expected N×H×W or N×H×W×3"
                )))
            }
        };
        let g = (h as u32, w as u32, c as u32);
        if self.geometry.is_some_and(|prev| prev != g) {
            return Err(self.bad(format!(
                "{name}_images has a different image size from train"
            )));
        }
        self.geometry = Some(g);
        let data: Vec<u8> = images
            .into_vec()
            .map_err(|e| self.bad(format!("{name}_images: {e} (uint8 expected)")))?;
        Ok((n, data))
    }

    /// A partition's labels, flattened, and their columns (`None`: one class index per
    /// image); the shape must be train's.
    fn labels(
        &mut self,
        archive: &mut Archive<'_>,
        name: &str,
        n: u64,
    ) -> Result<(Option<usize>, Vec<i64>)> {
        let labels = archive
            .by_name(&format!("{name}_labels"))
            .map_err(|e| self.bad(format!("{name}_labels: {e}")))?
            .ok_or_else(|| self.bad(format!("no array {name}_labels")))?;
        let label_shape = labels.shape().to_vec();
        let columns = match label_shape.as_slice() {
            [m] | [m, 1] if *m == n => None,
            [m, k] if *m == n => Some(*k as usize),
            other => {
                return Err(self.bad(format!(
                    "{name}_labels has shape {other:?}; expected N, N×1 (class index) or N×K \
                     (multi-label) with N = {n}"
                )))
            }
        };
        if self.label_columns.is_some_and(|prev| prev != columns) {
            return Err(self.bad(format!(
                "{name}_labels has a different label shape from train"
            )));
        }
        self.label_columns = Some(columns);
        let labels = read_labels(labels).map_err(|e| self.bad(format!("{name}_labels: {e}")))?;
        Ok((columns, labels))
    }

    /// Image `i`'s target: a class index, or `K` findings (1, 0 or -1 each).
    fn target(
        &mut self,
        labels: &[i64],
        columns: Option<usize>,
        name: &str,
        i: usize,
    ) -> Result<Target> {
        match columns {
            None => {
                let label = usize::try_from(labels[i]).map_err(|_| {
                    self.bad(format!("{name}_labels[{i}] = {} is negative", labels[i]))
                })?;
                self.max_label = self.max_label.max(label);
                Ok(Target::Class(label))
            }
            Some(k) => Ok(Target::Findings(
                labels[i * k..(i + 1) * k]
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| match v {
                        1 => Ok(Finding::Positive),
                        0 => Ok(Finding::Negative),
                        -1 => Ok(Finding::Uncertain),
                        other => Err(self.bad(format!(
                            "{name}_labels[{i}, {j}] = {other}; multi-label values are 1, 0 \
                             or -1"
                        ))),
                    })
                    .collect::<Result<_>>()?,
            )),
        }
    }
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
