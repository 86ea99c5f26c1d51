//! Data: every input format, leak-free splits, label-fraction subsets, MICLe bags, loading.
//!
//! A dataset is described by a [`SourceSpec`] (HAM10000 folder, NIH ChestX-ray14 folder, MedMNIST
//! `.npz`, a folder of class sub-folders, or a CSV manifest with multi-class, separator-joined
//! multi-label or CheXpert-style finding columns). Opening one gives a [`DatasetIndex`]: samples
//! with their group (lesion / patient), target and where their pixels live, plus a content hash.
//! [`make_split`] makes grouped, seeded splits whose partitions resemble the whole (stratified
//! on label, group size and the source's confirmation or acquisition column), with nested
//! label-fraction subsets, and saves them with the source spec and hash, so every later command
//! reopens exactly the same data; [`Composition`] shows what each partition is made of. Images are decoded and resized with the runtime's decoder and preprocessing
//! ([`load_images`]), so training sees the pixels the edge will see; what is sampled and
//! loaded is fixed by the seed, never by thread timing. Nothing here trains or augments.

mod check;
mod composition;
mod images;
mod loader;
mod preview;
mod sources;
mod split;
mod strata;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use scanside_runtime::bundle::hex;
use scanside_runtime::decode::{decode_file, DecodedImage, SourceInfo};
use serde::{Deserialize, Serialize};

pub use check::{check_dataset, check_split_or_source, CheckReport};
pub use composition::{Composition, CompositionConfig, PartSize, ShareRow};
pub use images::{
    load_images, load_images_with, load_training_images, report_skipped, spread, ImageSet,
};
pub use loader::{bench_decode_augment, bench_source, LoaderBench, Prefetch};
pub use preview::{preview_split_or_source, write_preview, PreviewConfig};
pub use sources::{
    CsvLabels, CsvSpec, SourceSpec, HAM10000_CLASSES, NIH_FINDINGS, SUPPORTED_LAYOUTS,
};
pub use split::{
    bags, make_split, make_split_with, open_split, open_split_or_source, write_split, BagStats,
    SplitConfig, SplitFile, SplitSummary, DEFAULT_SPLIT_FRACTIONS, LABEL_FRACTIONS,
    NO_STRATIFY_COLUMN, SPLIT_FORMAT_VERSION,
};

use crate::{Error, Result};

/// Where one sample's pixels live.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// An image file (PNG, JPEG or DICOM).
    File(PathBuf),
    /// Image `index` of the in-memory array of an `.npz` dataset.
    Array(usize),
}

/// One finding's value in a multi-label source, as written by the labeller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finding {
    /// Present (CheXpert `1`, or named in a joined label column).
    Positive,
    /// Absent (CheXpert `0`).
    Negative,
    /// Uncertain (CheXpert `-1`): resolved by an [`UncertaintyPolicy`].
    Uncertain,
    /// Not mentioned (CheXpert blank, or not named in a joined column): counted as absent.
    Unmentioned,
}

/// What to do with uncertain findings (Irvin et al. 2019, CheXpert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UncertaintyPolicy {
    /// Uncertain counts as positive.
    UOnes,
    /// Uncertain counts as negative.
    UZeros,
    /// Uncertain is left out of the loss and of the metrics (masked).
    #[default]
    UIgnore,
}

impl Finding {
    /// The training target under a policy; `None` means masked out.
    pub fn target(self, policy: UncertaintyPolicy) -> Option<f32> {
        match (self, policy) {
            (Finding::Positive, _) => Some(1.0),
            (Finding::Negative | Finding::Unmentioned, _) => Some(0.0),
            (Finding::Uncertain, UncertaintyPolicy::UOnes) => Some(1.0),
            (Finding::Uncertain, UncertaintyPolicy::UZeros) => Some(0.0),
            (Finding::Uncertain, UncertaintyPolicy::UIgnore) => None,
        }
    }
}

/// Per-finding targets and loss mask (1 = counts, 0 = ignored) under a policy.
pub fn finding_targets(findings: &[Finding], policy: UncertaintyPolicy) -> (Vec<f32>, Vec<f32>) {
    findings
        .iter()
        .map(|f| match f.target(policy) {
            Some(t) => (t, 1.0),
            None => (0.0, 0.0),
        })
        .unzip()
}

/// A sample's label.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One class index into [`DatasetIndex::class_names`].
    Class(usize),
    /// One value per class name (multi-label).
    Findings(Vec<Finding>),
}

impl Target {
    /// The class index of a multi-class target.
    pub fn class(&self) -> Option<usize> {
        match self {
            Target::Class(c) => Some(*c),
            Target::Findings(_) => None,
        }
    }

    /// Classes counted as present for statistics and stratification (uncertain counts as
    /// present there, so that uncertain cases are spread over the partitions too).
    pub fn present(&self) -> Vec<usize> {
        match self {
            Target::Class(c) => vec![*c],
            Target::Findings(f) => f
                .iter()
                .enumerate()
                .filter(|(_, f)| matches!(f, Finding::Positive | Finding::Uncertain))
                .map(|(i, _)| i)
                .collect(),
        }
    }
}

/// Whether a dataset has one class per image or any number of findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Exactly one class per image (softmax).
    MultiClass,
    /// Zero or more findings per image (one sigmoid each).
    MultiLabel,
}

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unique id (HAM10000 `image_id`, a manifest path, or `train-17` for arrays).
    pub id: String,
    /// Lesion / patient id: samples sharing it never straddle partitions.
    pub group: String,
    /// The label.
    pub target: Target,
    /// Where the pixels are.
    pub image: ImageRef,
    /// The partition the source itself assigns (MedMNIST), if any.
    pub official: Option<Partition>,
    /// The manifest's other columns (HAM10000 `dx_type`, `localization`, `sex`, `age`; NIH
    /// `view`, ...), for sub-population analyses.
    pub attributes: BTreeMap<String, String>,
}

/// A sub-population: samples whose attribute `column` is one of `values`
/// (`--where dx_type=histo,consensus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleFilter {
    /// Manifest column.
    pub column: String,
    /// Accepted values.
    pub values: Vec<String>,
}

impl SampleFilter {
    /// Parses `COLUMN=VALUE[,VALUE...]`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (column, values) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected COLUMN=VALUE[,VALUE...]"))?;
        let values: Vec<String> = values
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if column.trim().is_empty() || values.is_empty() {
            return Err(format!("{text:?}: expected COLUMN=VALUE[,VALUE...]"));
        }
        Ok(Self {
            column: column.trim().to_string(),
            values,
        })
    }

    /// Whether a sample belongs to the sub-population.
    pub fn accepts(&self, sample: &Sample) -> bool {
        sample
            .attributes
            .get(&self.column)
            .is_some_and(|v| self.values.iter().any(|w| w == v))
    }

    /// The samples of `indices` it accepts; an error naming the known columns when no sample
    /// has the column at all.
    pub fn apply(&self, index: &DatasetIndex, indices: &[usize]) -> Result<Vec<usize>> {
        if !index
            .samples
            .iter()
            .any(|s| s.attributes.contains_key(&self.column))
        {
            let known: BTreeSet<&String> = index
                .samples
                .iter()
                .flat_map(|s| s.attributes.keys())
                .collect();
            return Err(Error::Data {
                path: index.root().to_path_buf(),
                reason: format!(
                    "no column {:?} to filter on (columns: {})",
                    self.column,
                    known.into_iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(indices
            .iter()
            .copied()
            .filter(|&i| self.accepts(&index.samples[i]))
            .collect())
    }

    /// A file-name-safe label, e.g. `dx_type-histo`.
    pub fn slug(&self) -> String {
        format!("{}-{}", self.column, self.values.join("+"))
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_+.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
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
    /// How it was read.
    pub source: SourceSpec,
    /// Multi-class or multi-label.
    pub task: Task,
    /// Class (or finding) names in label order.
    pub class_names: Vec<String>,
    /// How uncertain findings become targets (multi-label sources).
    pub uncertainty: UncertaintyPolicy,
    /// What groups samples (`lesion_id`, `patient_id`, ...), for reports.
    pub grouped_by: String,
    /// Samples, in source order.
    pub samples: Vec<Sample>,
    /// sha256 over the label file and the image list (names and sizes) or the npz bytes.
    pub content_sha256: String,
    /// The pixels of array datasets.
    pub arrays: Option<ArrayImages>,
}

impl DatasetIndex {
    /// The folder or file the data was read from.
    pub fn root(&self) -> &Path {
        self.source.path()
    }

    /// Images per class (multi-label: images where the finding is present or uncertain).
    pub fn class_counts(&self, which: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for i in which {
            for c in self.samples[i].target.present() {
                counts[c] += 1;
            }
        }
        counts
    }

    /// Where sample `i` comes from, for messages and reports.
    pub fn describe_sample(&self, i: usize) -> String {
        match &self.samples[i].image {
            ImageRef::File(p) => p.display().to_string(),
            ImageRef::Array(_) => format!("{}#{}", self.root().display(), self.samples[i].id),
        }
    }

    /// Decodes sample `i` without resizing.
    pub fn decode(&self, i: usize) -> Result<DecodedImage> {
        match &self.samples[i].image {
            ImageRef::File(path) => Ok(decode_file(path)?),
            ImageRef::Array(k) => Ok(array_image(self, *k)),
        }
    }
}

/// Opens a dataset given only its path, recognising the layout (see [`SourceSpec::detect`]).
pub fn open_dataset(path: &Path) -> Result<DatasetIndex> {
    SourceSpec::detect(path)?.open()
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

/// The three partitions in order.
pub const PARTITIONS: [Partition; 3] = [Partition::Train, Partition::Val, Partition::Test];

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partition::Train => "train",
            Partition::Val => "val",
            Partition::Test => "test",
        })
    }
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

    #[test]
    fn chexpert_policies_map_uncertain_as_documented() {
        use Finding::*;
        let findings = [Positive, Negative, Uncertain, Unmentioned];
        assert_eq!(
            finding_targets(&findings, UncertaintyPolicy::UOnes),
            (vec![1.0, 0.0, 1.0, 0.0], vec![1.0; 4])
        );
        assert_eq!(
            finding_targets(&findings, UncertaintyPolicy::UZeros),
            (vec![1.0, 0.0, 0.0, 0.0], vec![1.0; 4])
        );
        assert_eq!(
            finding_targets(&findings, UncertaintyPolicy::UIgnore),
            (vec![1.0, 0.0, 0.0, 0.0], vec![1.0, 1.0, 0.0, 1.0])
        );
    }

    #[test]
    fn present_counts_uncertain_findings_for_stratification() {
        use Finding::*;
        let t = Target::Findings(vec![Negative, Uncertain, Positive, Unmentioned]);
        assert_eq!(t.present(), vec![1, 2]);
        assert_eq!(t.class(), None);
        assert_eq!(Target::Class(4).present(), vec![4]);
    }
}
