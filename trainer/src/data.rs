//! Data: dataset layouts, leak-free splits and decoded image sets.
//!
//! Reads the HAM10000 layout (`metadata.csv` + `images/`, grouped by `lesion_id`) and MedMNIST
//! `.npz` files (official splits). Splits are grouped — all images of one lesion or patient land
//! in the same partition — stratified by label, seeded, and saved to a JSON file that records the
//! data's content hash so that every later command reuses exactly the same split. Images are
//! decoded and resized with the runtime's decoder and preprocessing, so training sees the pixels
//! the edge will see.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scanside_runtime::decode::{decode_file, DecodedImage, SourceInfo};
use scanside_runtime::preprocess::{to_model_pixels, PreprocessConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runlog::progress;
use crate::{Error, Result};

/// The HAM10000 diagnosis codes, in the order used by DermaMNIST and by this project.
pub const HAM10000_CLASSES: [&str; 7] = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"];

/// Where one sample's pixels live.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// An image file.
    File(PathBuf),
    /// Image `index` of the in-memory array of an `.npz` dataset.
    Array(usize),
}

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unique id (HAM10000 `image_id`, or `train-17` for arrays).
    pub id: String,
    /// Lesion / patient id: samples sharing it never straddle partitions.
    pub group: String,
    /// Class index into [`DatasetIndex::class_names`].
    pub label: usize,
    /// Where the pixels are.
    pub image: ImageRef,
    /// The partition the source itself assigns (MedMNIST), if any.
    pub official: Option<Partition>,
}

/// Grayscale or RGB 8-bit images held in memory (MedMNIST arrays).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayImages {
    /// `N × H × W × C` samples.
    pub pixels: Vec<u8>,
    /// Height.
    pub height: u32,
    /// Width.
    pub width: u32,
    /// 1 or 3.
    pub channels: u32,
}

/// A dataset's samples and class names, without decoded pixels.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    /// The folder or file it was read from.
    pub root: PathBuf,
    /// `ham10000` or `medmnist`.
    pub layout: String,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// Samples, in source order.
    pub samples: Vec<Sample>,
    /// sha256 over the label file and the image list (names and sizes) or the npz bytes.
    pub content_sha256: String,
    /// The pixels of array datasets.
    pub arrays: Option<ArrayImages>,
}

/// A partition of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Training (and the unlabeled pretraining pool).
    Train,
    /// Model selection.
    Val,
    /// Held out for reporting.
    Test,
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Partition::Train),
            "val" => Ok(Partition::Val),
            "test" => Ok(Partition::Test),
            other => Err(format!(
                "unknown split {other:?}: expected train, val or test"
            )),
        }
    }
}

/// Opens a dataset by layout: a folder with `metadata.csv` (HAM10000) or a MedMNIST `.npz`.
pub fn open_dataset(path: &Path) -> Result<DatasetIndex> {
    if path.is_dir() && path.join("metadata.csv").is_file() {
        read_ham10000(path)
    } else if path.is_file() && path.extension().is_some_and(|e| e == "npz") {
        read_medmnist(path)
    } else if !path.exists() {
        Err(Error::Data {
            path: path.to_path_buf(),
            reason: "does not exist".into(),
        })
    } else {
        Err(Error::Data {
            path: path.to_path_buf(),
            reason: "not a known dataset layout (expected a folder with metadata.csv and images/, \
                     or a MedMNIST .npz file)"
                .into(),
        })
    }
}

fn read_ham10000(dir: &Path) -> Result<DatasetIndex> {
    let csv_path = dir.join("metadata.csv");
    let csv_bytes = scanside_runtime::persist::read(&csv_path)?;
    let bad = |reason: String| Error::Data {
        path: csv_path.clone(),
        reason,
    };
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| bad(format!("unreadable header: {e}")))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            bad(format!(
                "no column {name:?} (columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (lesion_col, image_col, dx_col) =
        (column("lesion_id")?, column("image_id")?, column("dx")?);
    let mut hasher = Sha256::new();
    hasher.update(&csv_bytes);
    let mut samples = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("row {}: {e}", row + 2)))?;
        let field = |i: usize| record.get(i).unwrap_or("").trim().to_string();
        let (group, id, dx) = (field(lesion_col), field(image_col), field(dx_col));
        let label = HAM10000_CLASSES
            .iter()
            .position(|c| *c == dx)
            .ok_or_else(|| {
                bad(format!(
                    "row {}: unknown dx {dx:?} (known: {})",
                    row + 2,
                    HAM10000_CLASSES.join(", ")
                ))
            })?;
        if id.is_empty() || group.is_empty() {
            return Err(bad(format!("row {}: empty image_id or lesion_id", row + 2)));
        }
        let file = dir.join("images").join(format!("{id}.jpg"));
        let size = std::fs::metadata(&file)
            .map_err(|e| Error::Data {
                path: file.clone(),
                reason: format!("listed in metadata.csv but unreadable: {e}"),
            })?
            .len();
        hasher.update(format!("{id}:{size}\n").as_bytes());
        samples.push(Sample {
            id,
            group,
            label,
            image: ImageRef::File(file),
            official: None,
        });
    }
    if samples.is_empty() {
        return Err(bad("lists no images".into()));
    }
    Ok(DatasetIndex {
        root: dir.to_path_buf(),
        layout: "ham10000".into(),
        class_names: HAM10000_CLASSES.iter().map(|s| s.to_string()).collect(),
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
        if label_shape.first() != Some(&n) || label_shape.iter().skip(1).any(|&d| d != 1) {
            return Err(bad(format!(
                "{name}_labels has shape {label_shape:?}; one class index per image is expected \
                 (multi-label npz files are not supported yet)"
            )));
        }
        let labels: Vec<i64> =
            read_labels(labels).map_err(|e| bad(format!("{name}_labels: {e}")))?;
        let base = samples.len();
        for (i, &label) in labels.iter().enumerate() {
            let label = usize::try_from(label)
                .map_err(|_| bad(format!("{name}_labels[{i}] = {label} is negative")))?;
            max_label = max_label.max(label);
            let id = format!("{name}-{i}");
            samples.push(Sample {
                group: id.clone(),
                id,
                label,
                image: ImageRef::Array(base + i),
                official: Some(partition),
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
    Ok(DatasetIndex {
        root: path.to_path_buf(),
        layout: "medmnist".into(),
        class_names: medmnist_class_names(&stem, max_label + 1),
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A saved split: which partition each sample belongs to, and for which data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    /// Dataset path when the split was made.
    pub dataset: PathBuf,
    /// [`DatasetIndex::content_sha256`] of that data.
    pub content_sha256: String,
    /// How samples were kept together: `lesion_id`, `patient_id` or `official`.
    pub grouped_by: String,
    /// RNG seed.
    pub seed: u64,
    /// Target fractions of train, val and test.
    pub fractions: [f64; 3],
    /// Image counts per partition.
    pub counts: BTreeMap<Partition, usize>,
    /// Partition of every sample id.
    pub assignments: BTreeMap<String, Partition>,
}

impl SplitFile {
    /// Indices into `index.samples` of one partition, in source order.
    pub fn indices(&self, index: &DatasetIndex, partition: Partition) -> Vec<usize> {
        index
            .samples
            .iter()
            .enumerate()
            .filter(|(_, s)| self.assignments.get(&s.id) == Some(&partition))
            .map(|(i, _)| i)
            .collect()
    }

    /// Loads a split and checks it was made for this data.
    pub fn load(path: &Path, index: &DatasetIndex) -> Result<Self> {
        let split: SplitFile = crate::runlog::load_json(path)?;
        if split.content_sha256 != index.content_sha256 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "split was made for different data ({} has content hash {}, the split records {})",
                    index.root.display(),
                    &index.content_sha256[..12],
                    &split.content_sha256[..split.content_sha256.len().min(12)]
                ),
            });
        }
        if let Some(s) = index
            .samples
            .iter()
            .find(|s| !split.assignments.contains_key(&s.id))
        {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!("sample {} has no partition", s.id),
            });
        }
        Ok(split)
    }
}

/// Makes a grouped, label-stratified, seeded split (or takes the source's official one).
///
/// Groups are dealt out per label (a group's label is its first sample's): shuffled with the
/// seed, then assigned so that each partition's image count follows `fractions`.
pub fn make_split(index: &DatasetIndex, seed: u64, fractions: [f64; 3]) -> Result<SplitFile> {
    let sum: f64 = fractions.iter().sum();
    if fractions.iter().any(|f| *f < 0.0) || (sum - 1.0).abs() > 1e-6 {
        return Err(Error::Config {
            path: index.root.clone(),
            reason: format!("split fractions {fractions:?} must be non-negative and sum to 1"),
        });
    }
    let mut assignments = BTreeMap::new();
    let grouped_by;
    if index.samples.iter().all(|s| s.official.is_some()) {
        grouped_by = "official".to_string();
        for s in &index.samples {
            assignments.insert(s.id.clone(), s.official.expect("checked above"));
        }
    } else {
        grouped_by = if index.layout == "ham10000" {
            "lesion_id"
        } else {
            "group"
        }
        .to_string();
        // group -> (label, image count), in first-seen order for determinism.
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<&str, (usize, usize)> = HashMap::new();
        for s in &index.samples {
            groups
                .entry(&s.group)
                .and_modify(|g| g.1 += 1)
                .or_insert_with(|| {
                    order.push(s.group.clone());
                    (s.label, 1)
                });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut group_partition: HashMap<String, Partition> = HashMap::new();
        for label in 0..index.class_names.len() {
            let mut members: Vec<&String> = order
                .iter()
                .filter(|g| groups[g.as_str()].0 == label)
                .collect();
            members.shuffle(&mut rng);
            let total: usize = members.iter().map(|g| groups[g.as_str()].1).sum();
            let train_target = fractions[0] * total as f64;
            let val_target = (fractions[0] + fractions[1]) * total as f64;
            let mut seen = 0_usize;
            for g in members {
                // Place the group by where its middle falls, so rare classes still get
                // val and test members.
                let middle = seen as f64 + groups[g.as_str()].1 as f64 / 2.0;
                let p = if middle <= train_target {
                    Partition::Train
                } else if middle <= val_target {
                    Partition::Val
                } else {
                    Partition::Test
                };
                seen += groups[g.as_str()].1;
                group_partition.insert(g.clone(), p);
            }
        }
        for s in &index.samples {
            assignments.insert(s.id.clone(), group_partition[&s.group]);
        }
    }
    let mut counts = BTreeMap::new();
    for p in assignments.values() {
        *counts.entry(*p).or_insert(0) += 1;
    }
    Ok(SplitFile {
        dataset: index.root.clone(),
        content_sha256: index.content_sha256.clone(),
        grouped_by,
        seed,
        fractions,
        counts,
        assignments,
    })
}

/// Decoded, resized images (`C×H×W`, values in `[0, 1]`, not normalised) with their labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// `len × sample_len` floats.
    pub pixels: Vec<f32>,
    /// Class index per image.
    pub labels: Vec<usize>,
    /// Sample ids.
    pub ids: Vec<String>,
    /// Where each image came from (file path or array id), for reports.
    pub sources: Vec<String>,
    /// Floats per image.
    pub sample_len: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.sample_len..(i + 1) * self.sample_len]
    }

    /// Per-channel mean and standard deviation over all pixels (for the normalisation).
    pub fn channel_stats(&self, channels: usize) -> (Vec<f32>, Vec<f32>) {
        let plane = self.sample_len / channels;
        let mut sum = vec![0.0_f64; channels];
        let mut sq = vec![0.0_f64; channels];
        for img in self.pixels.chunks_exact(self.sample_len) {
            for (c, values) in img.chunks_exact(plane).enumerate() {
                for &v in values {
                    sum[c] += f64::from(v);
                    sq[c] += f64::from(v) * f64::from(v);
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| ((q / n - (s / n).powi(2)).max(1e-8).sqrt()) as f32)
            .collect();
        (mean, std)
    }
}

/// Decodes and resizes the given samples in parallel; the first failure names its file.
pub fn load_images(
    index: &DatasetIndex,
    which: &[usize],
    preprocess: &PreprocessConfig,
) -> Result<ImageSet> {
    if which.is_empty() {
        return Err(Error::Data {
            path: index.root.clone(),
            reason: "the selected partition holds no images".into(),
        });
    }
    let bar = progress(which.len() as u64, "decode");
    let decoded: Vec<Result<Vec<f32>>> = which
        .par_iter()
        .map(|&i| {
            let sample = &index.samples[i];
            let (image, name) = match &sample.image {
                ImageRef::File(path) => (decode_file(path)?, path.clone()),
                ImageRef::Array(k) => (array_image(index, *k), index.root.join(&sample.id)),
            };
            let pixels = to_model_pixels(&image, preprocess, &name)?;
            bar.inc(1);
            Ok(pixels)
        })
        .collect();
    bar.finish_and_clear();
    let mut pixels = Vec::with_capacity(which.len() * preprocess.input_len());
    for d in decoded {
        pixels.extend(d?);
    }
    Ok(ImageSet {
        pixels,
        labels: which.iter().map(|&i| index.samples[i].label).collect(),
        ids: which.iter().map(|&i| index.samples[i].id.clone()).collect(),
        sources: which
            .iter()
            .map(|&i| match &index.samples[i].image {
                ImageRef::File(p) => p.display().to_string(),
                ImageRef::Array(_) => format!("{}#{}", index.root.display(), index.samples[i].id),
            })
            .collect(),
        sample_len: preprocess.input_len(),
    })
}

fn array_image(index: &DatasetIndex, k: usize) -> DecodedImage {
    let a = index
        .arrays
        .as_ref()
        .expect("array samples come with arrays");
    let len = (a.height * a.width * a.channels) as usize;
    DecodedImage {
        width: a.width,
        height: a.height,
        channels: a.channels,
        pixels: a.pixels[k * len..(k + 1) * len]
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect(),
        source: SourceInfo::Png { bit_depth: 8 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic_index(groups: &[(usize, usize)]) -> DatasetIndex {
        // (label, images in group)
        let mut samples = Vec::new();
        for (g, &(label, n)) in groups.iter().enumerate() {
            for k in 0..n {
                samples.push(Sample {
                    id: format!("img{g}_{k}"),
                    group: format!("lesion{g}"),
                    label,
                    image: ImageRef::Array(0),
                    official: None,
                });
            }
        }
        DatasetIndex {
            root: PathBuf::from("synthetic"),
            layout: "ham10000".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            samples,
            content_sha256: "0".repeat(64),
            arrays: None,
        }
    }

    #[test]
    fn split_never_puts_one_lesion_in_two_partitions_and_is_stratified() {
        let groups: Vec<(usize, usize)> = (0..600).map(|g| (g % 3, 1 + g % 4)).collect();
        let index = synthetic_index(&groups);
        let split = make_split(&index, 7, [0.7, 0.15, 0.15]).unwrap();
        let mut by_group: HashMap<&str, Partition> = HashMap::new();
        for s in &index.samples {
            let p = split.assignments[&s.id];
            assert_eq!(
                *by_group.entry(&s.group).or_insert(p),
                p,
                "group {} split",
                s.group
            );
        }
        for label in 0..3 {
            let of_label: Vec<_> = index.samples.iter().filter(|s| s.label == label).collect();
            let train = of_label
                .iter()
                .filter(|s| split.assignments[&s.id] == Partition::Train)
                .count();
            let frac = train as f64 / of_label.len() as f64;
            assert!(
                (frac - 0.7).abs() < 0.05,
                "label {label}: train fraction {frac}"
            );
        }
    }

    #[test]
    fn split_is_reproducible_for_a_seed_and_changes_with_it() {
        let groups: Vec<(usize, usize)> = (0..100).map(|g| (g % 3, 1 + g % 2)).collect();
        let index = synthetic_index(&groups);
        let a = make_split(&index, 1, [0.7, 0.15, 0.15]).unwrap();
        assert_eq!(a, make_split(&index, 1, [0.7, 0.15, 0.15]).unwrap());
        assert_ne!(
            a.assignments,
            make_split(&index, 2, [0.7, 0.15, 0.15])
                .unwrap()
                .assignments
        );
    }

    #[test]
    fn split_for_other_data_is_refused() {
        let index = synthetic_index(&[(0, 1), (1, 1), (2, 1)]);
        let split = make_split(&index, 1, [0.34, 0.33, 0.33]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.json");
        crate::runlog::save_json(&path, &split).unwrap();
        let mut other = index.clone();
        other.content_sha256 = "1".repeat(64);
        let e = SplitFile::load(&path, &other).unwrap_err().to_string();
        assert!(
            e.contains("split.json") && e.contains("different data"),
            "{e}"
        );
    }

    #[test]
    fn bad_fractions_and_missing_datasets_are_clear_errors() {
        let index = synthetic_index(&[(0, 1)]);
        assert!(make_split(&index, 1, [0.5, 0.5, 0.5]).is_err());
        let e = open_dataset(Path::new("/no/such/data"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/data") && e.contains("does not exist"),
            "{e}"
        );
    }
}
