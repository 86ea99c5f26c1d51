//! Leak-free splits whose partitions resemble the whole: grouped by case, stratified at the
//! group level, seeded, saved with the source spec and content hash; nested label-fraction
//! subsets of the training partition; MICLe bags.
//!
//! Whole groups are dealt to partitions by joint stratum — label (multi-label: the rarest
//! present finding, or no finding), images per group (bucketed 1, 2, 3–4, 5–8, …) and, where
//! the source has one, a confirmation or acquisition column (HAM10000 `dx_type`, NIH `view`) —
//! so that every partition gets its share of each stratum's groups and of the images
//! ([`super::strata`]). Format 2 split files came from a label-only stratification that put
//! the multi-image lesions in train; they are refused with a message, not reinterpreted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::runlog::{recorded_path, resolved_path};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::composition::{Composition, CompositionConfig};
use super::strata::{deal, group_value, label_stratum, size_bucket, GroupToDeal, StratumKey};
use super::{DatasetIndex, Partition, SourceSpec, Task};
use crate::{Error, Result};

/// Version of the split file format: 3 since partitions are stratified on group size and the
/// source's confirmation or acquisition column too.
pub const SPLIT_FORMAT_VERSION: u32 = 3;

/// `stratify_by` value that turns the metadata column off.
pub const NO_STRATIFY_COLUMN: &str = "none";

/// The label fractions reported by default (nested: each includes the smaller ones).
pub const LABEL_FRACTIONS: [f64; 6] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Train, val and test fractions of a split when none are given.
pub const DEFAULT_SPLIT_FRACTIONS: [f64; 3] = [0.7, 0.15, 0.15];

/// A saved split: which partition each sample belongs to, and for which data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    /// [`SPLIT_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// How to reopen the data.
    pub source: SourceSpec,
    /// [`DatasetIndex::content_sha256`] of that data.
    pub content_sha256: String,
    /// How samples were kept together: `lesion_id`, `patient_id`, `official`, ...
    pub grouped_by: String,
    /// RNG seed.
    pub seed: u64,
    /// Target fractions of train, val and test.
    pub fractions: [f64; 3],
    /// The metadata column whose values were stratified on, beside label and group size.
    pub stratify_column: Option<String>,
    /// Image counts per partition.
    pub counts: BTreeMap<Partition, usize>,
    /// Partition of every sample id.
    pub assignments: BTreeMap<String, Partition>,
    /// For each training sample: the smallest label fraction whose subset includes it. The
    /// subset for fraction `f` is every training sample with a value `≤ f`, so subsets nest.
    pub label_fraction_rank: BTreeMap<String, f64>,
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

    /// The labelled training subset for a label fraction in `(0, 1]`, in source order.
    pub fn labeled_subset(&self, index: &DatasetIndex, fraction: f64) -> Vec<usize> {
        index
            .samples
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                self.label_fraction_rank
                    .get(&s.id)
                    .is_some_and(|&r| r <= fraction + 1e-12)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Loads a split and checks it was made for this data.
    pub fn load(path: &Path, index: &DatasetIndex) -> Result<Self> {
        let split = Self::read(path)?;
        split.check_matches(path, index)?;
        Ok(split)
    }

    /// Reads a split file without opening its data.
    pub fn read(path: &Path) -> Result<Self> {
        let value: serde_json::Value = crate::runlog::load_json(path)?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(u64::from(SPLIT_FORMAT_VERSION)) {
            let why = if version == Some(2) {
                " (format 2 stratified by label only and put the multi-image lesions or \
                 patients in train, so val and test did not resemble the data)"
            } else {
                ""
            };
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "split file format {} is not the supported {SPLIT_FORMAT_VERSION}{why}; make \
                     the split again with `scanside-train data split`",
                    version.map_or("(none)".to_string(), |v| v.to_string())
                ),
            });
        }
        let split: Self = serde_json::from_value(value).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("malformed split file: {e}"),
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(Self {
            source: split.source.map_paths(|p| resolved_path(p, dir)),
            ..split
        })
    }

    /// Saves the split to `path`, its data's paths recorded relative to `path`'s folder (or
    /// absolute), so that it opens from any working directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new(""));
        let recorded = Self {
            source: self.source.map_paths(|p| recorded_path(p, dir)),
            ..self.clone()
        };
        crate::runlog::save_json(path, &recorded)
    }

    /// Each partition's composition beside the whole's; without columns in `config`, the
    /// column the split was stratified on is compared.
    pub fn composition(
        &self,
        index: &DatasetIndex,
        config: &CompositionConfig,
    ) -> Result<Composition> {
        let mut config = config.clone();
        if config.columns.is_empty() {
            config.columns.extend(self.stratify_column.clone());
        }
        Composition::of(
            index,
            |i| self.assignments.get(&index.samples[i].id).copied(),
            &config,
        )
    }

    fn check_matches(&self, path: &Path, index: &DatasetIndex) -> Result<()> {
        if self.content_sha256 != index.content_sha256 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "split was made for different data: {} has content hash {}, the split \
                     records {} — images were added, removed or renamed, or labels changed, \
                     since the split was made (make the split again, or give the original \
                     data's place with --data)",
                    index.root().display(),
                    &index.content_sha256[..12],
                    &self.content_sha256[..self.content_sha256.len().min(12)]
                ),
            });
        }
        if let Some(s) = index
            .samples
            .iter()
            .find(|s| !self.assignments.contains_key(&s.id))
        {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!("sample {} has no partition", s.id),
            });
        }
        Ok(())
    }
}

/// Reads a split file and reopens the data it was made for (from `data` when the data moved);
/// fails when the data's content hash differs from the one recorded.
pub fn open_split(split_path: &Path, data: Option<&Path>) -> Result<(DatasetIndex, SplitFile)> {
    let split = SplitFile::read(split_path)?;
    let source = match data {
        Some(path) => split.source.with_path(path),
        None => split.source.clone(),
    };
    if !source.path().exists() {
        return Err(Error::Config {
            path: split_path.to_path_buf(),
            reason: format!(
                "the data this split was made from is not at {} any more (moved? give its new \
                 place with --data; the content hash checks it is the same data)",
                source.path().display()
            ),
        });
    }
    log::debug!(
        "{}: data at {}",
        split_path.display(),
        source.path().display()
    );
    let index = source.open()?;
    split.check_matches(split_path, &index)?;
    Ok((index, split))
}

/// Groups in first-seen order with their sample indices.
fn group_members(index: &DatasetIndex, which: &[usize]) -> Vec<(String, Vec<usize>)> {
    let mut order: Vec<(String, Vec<usize>)> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for &i in which {
        let g = index.samples[i].group.as_str();
        match position.get(g) {
            Some(&k) => order[k].1.push(i),
            None => {
                position.insert(g, order.len());
                order.push((g.to_string(), vec![i]));
            }
        }
    }
    order
}

/// How to split: the seed, the fractions and the metadata column to stratify on.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    /// RNG seed.
    pub seed: u64,
    /// Train, val and test fractions (non-negative, summing to 1).
    pub fractions: [f64; 3],
    /// Metadata column stratified on beside label and group size: `None` for the source's
    /// own ([`SourceSpec::stratify_column`], used when the data has it), [`NO_STRATIFY_COLUMN`]
    /// for none.
    pub stratify_by: Option<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            fractions: DEFAULT_SPLIT_FRACTIONS,
            stratify_by: None,
        }
    }
}

impl SplitConfig {
    /// The default split with this seed and these fractions.
    pub fn new(seed: u64, fractions: [f64; 3]) -> Self {
        Self {
            seed,
            fractions,
            ..Self::default()
        }
    }

    /// Fractions must be non-negative and sum to 1.
    pub fn validate(&self, index: &DatasetIndex) -> Result<()> {
        let sum: f64 = self.fractions.iter().sum();
        if self.fractions.iter().any(|f| f.is_nan() || *f < 0.0) || (sum - 1.0).abs() > 1e-6 {
            return Err(Error::Config {
                path: index.root().to_path_buf(),
                reason: format!(
                    "split fractions {:?} must be non-negative and sum to 1",
                    self.fractions
                ),
            });
        }
        Ok(())
    }

    /// The column to stratify on for this data: the one asked for (an error naming the
    /// columns when no sample has it), else the source's own when the data has it.
    fn column(&self, index: &DatasetIndex) -> Result<Option<String>> {
        let has = |c: &str| index.samples.iter().any(|s| s.attributes.contains_key(c));
        match self.stratify_by.as_deref() {
            Some(NO_STRATIFY_COLUMN) => Ok(None),
            Some(column) if has(column) => Ok(Some(column.to_string())),
            Some(column) => {
                let known: std::collections::BTreeSet<&String> = index
                    .samples
                    .iter()
                    .flat_map(|s| s.attributes.keys())
                    .collect();
                Err(Error::Data {
                    path: index.root().to_path_buf(),
                    reason: format!(
                        "no column {column:?} to stratify on (columns: {})",
                        known.into_iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                })
            }
            None => Ok(index
                .source
                .stratify_column()
                .filter(|c| has(c))
                .map(str::to_string)),
        }
    }
}

/// Makes a grouped, stratified, seeded split with the source's own stratification column (see
/// [`make_split_with`]).
pub fn make_split(index: &DatasetIndex, seed: u64, fractions: [f64; 3]) -> Result<SplitFile> {
    make_split_with(index, &SplitConfig::new(seed, fractions))
}

/// Makes a grouped split whose partitions resemble the whole — stratified on label, group size
/// and a metadata column, seeded — or takes the source's official one; with nested
/// label-fraction ranks for the training partition.
pub fn make_split_with(index: &DatasetIndex, config: &SplitConfig) -> Result<SplitFile> {
    config.validate(index)?;
    let mut assignments = BTreeMap::new();
    let (grouped_by, stratify_column) = if index.samples.iter().all(|s| s.official.is_some()) {
        for s in &index.samples {
            assignments.insert(s.id.clone(), s.official.expect("checked above"));
        }
        ("official".to_string(), None)
    } else {
        let column = config.column(index)?;
        let all: Vec<usize> = (0..index.samples.len()).collect();
        let groups = group_members(index, &all);
        let to_deal = groups_to_deal(index, &groups, column.as_deref());
        let partition_of = deal(&to_deal, config.fractions, config.seed);
        for ((_, members), p) in groups.iter().zip(partition_of) {
            for &i in members {
                assignments.insert(index.samples[i].id.clone(), p);
            }
        }
        (index.grouped_by.clone(), column)
    };
    let mut counts = BTreeMap::new();
    for p in assignments.values() {
        *counts.entry(*p).or_insert(0) += 1;
    }
    let train: Vec<usize> = (0..index.samples.len())
        .filter(|&i| assignments[&index.samples[i].id] == Partition::Train)
        .collect();
    let label_fraction_rank = label_fraction_ranks(index, &train, config.seed);
    Ok(SplitFile {
        format_version: SPLIT_FORMAT_VERSION,
        source: index.source.clone(),
        content_sha256: index.content_sha256.clone(),
        grouped_by,
        seed: config.seed,
        fractions: config.fractions,
        stratify_column,
        counts,
        assignments,
        label_fraction_rank,
    })
}

/// Each group's joint stratum (label: rarest present over the whole data; size bucket; its
/// value of `column`), images and, for multi-label data, findings.
fn groups_to_deal(
    index: &DatasetIndex,
    groups: &[(String, Vec<usize>)],
    column: Option<&str>,
) -> Vec<GroupToDeal> {
    let frequency = index.class_counts(0..index.samples.len());
    groups
        .iter()
        .map(|(_, members)| GroupToDeal {
            key: StratumKey {
                size_bucket: size_bucket(members.len()),
                label: label_stratum(index, members, &frequency),
                value: column.map(|c| group_value(index, members, c)),
            },
            size: members.len(),
            findings: match index.task {
                Task::MultiClass => Vec::new(),
                Task::MultiLabel => findings_present(index, members),
            },
        })
        .collect()
}

/// Every finding present in one of `members`' images, and "no finding"
/// (`class_names.len()`) when one has none.
fn findings_present(index: &DatasetIndex, members: &[usize]) -> Vec<usize> {
    let mut found: Vec<usize> = members
        .iter()
        .flat_map(|&i| {
            let present = index.samples[i].target.present();
            if present.is_empty() {
                vec![index.class_names.len()]
            } else {
                present
            }
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Ranks training groups for nested label-fraction subsets: within each stratum (the class, or
/// for multi-label data the group's rarest present finding, or "no finding") groups are
/// shuffled, with the smallest group first; the group at rank `r` of `n` enters the subsets from fraction `(r + ½) / n` on,
/// and the first group of every stratum is in all of them, so even a 1 % subset sees every
/// class.
fn label_fraction_ranks(index: &DatasetIndex, train: &[usize], seed: u64) -> BTreeMap<String, f64> {
    let groups = group_members(index, train);
    let frequency = index.class_counts(train.iter().copied());
    let mut strata: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (g, (_, members)) in groups.iter().enumerate() {
        strata
            .entry(label_stratum(index, members, &frequency))
            .or_default()
            .push(g);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6c61_6265_6c73);
    let mut ranks = BTreeMap::new();
    for members in strata.values_mut() {
        members.shuffle(&mut rng);
        // The group every subset keeps is the stratum's smallest, so that small fractions of
        // data with big groups (patients with many studies) stay small.
        if let Some(smallest) = (0..members.len()).min_by_key(|&k| groups[members[k]].1.len()) {
            members[..=smallest].rotate_right(1);
        }
        let n = members.len() as f64;
        for (r, &g) in members.iter().enumerate() {
            let rank = if r == 0 { 0.0 } else { (r as f64 + 0.5) / n };
            for &i in &groups[g].1 {
                ranks.insert(index.samples[i].id.clone(), rank.min(1.0));
            }
        }
    }
    ranks
}

/// The dataset of a split file (reopened at `source`'s path when given, for data that moved),
/// or of a source alone (no split).
pub fn open_split_or_source(
    split: Option<&Path>,
    source: Option<&SourceSpec>,
) -> Result<(DatasetIndex, Option<SplitFile>)> {
    match (split, source) {
        (Some(path), source) => {
            let (index, split) = open_split(path, source.map(SourceSpec::path))?;
            Ok((index, Some(split)))
        }
        (None, Some(source)) => Ok((source.open()?, None)),
        (None, None) => Err(Error::Config {
            path: PathBuf::new(),
            reason: "no dataset and no split file given".into(),
        }),
    }
}

/// What `data split` made: the dataset's groups, the partitions and what they are made of,
/// MICLe bags and the label-fraction subsets.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    /// Dataset folder or file.
    pub root: PathBuf,
    /// Images listed.
    pub images: usize,
    /// Groups (lesions, patients) over all images.
    pub groups: usize,
    /// The split written (in the file; `--json` prints the rest).
    #[serde(skip)]
    pub split: SplitFile,
    /// Where it was written.
    pub out: PathBuf,
    /// Each partition's composition beside the whole's.
    pub composition: Composition,
    /// MICLe bags of the training partition.
    pub train_bags: BagStats,
    /// MICLe bags of the whole dataset (train's share of the multi-image ones is its fair
    /// share when the split resembles the whole).
    pub all_bags: BagStats,
    /// Images in each default label-fraction subset ([`LABEL_FRACTIONS`]).
    pub subsets: Vec<(f64, usize)>,
}

impl SplitSummary {
    /// A few lines and the composition table, for people.
    pub fn render(&self) -> String {
        let subsets: Vec<String> = self
            .subsets
            .iter()
            .map(|(f, n)| format!("{}%: {n}", f * 100.0))
            .collect();
        let how = if self.split.grouped_by == "official" {
            "the source's official partitions".to_string()
        } else {
            format!(
                "grouped by {}; stratified on label, group size{}",
                self.split.grouped_by,
                self.split
                    .stratify_column
                    .as_deref()
                    .map_or(String::new(), |c| format!(" and {c}"))
            )
        };
        let mut out = format!(
            "{}: {} images in {} groups ({how}) -> {:?}, written to {}\n{}\nlabel-fraction \
             subsets (images): {}\n",
            self.root.display(),
            self.images,
            self.groups,
            self.split.counts,
            self.out.display(),
            self.train_bags.render_share("train", &self.all_bags),
            subsets.join(", ")
        );
        out += &self.composition.render();
        for w in &self.composition.warnings {
            out += &format!("warning: {w}\n");
        }
        out
    }
}

/// Makes a split of the dataset `source` ([`make_split_with`]), saves it to `out` and
/// describes it, comparing the partitions on `compare`'s columns.
pub fn write_split(
    source: &SourceSpec,
    config: &SplitConfig,
    compare: &CompositionConfig,
    out: &Path,
) -> Result<SplitSummary> {
    let index = source.open()?;
    let split = make_split_with(&index, config)?;
    let composition = split.composition(&index, compare)?;
    split.save(out)?;
    let train = split.indices(&index, Partition::Train);
    let all: Vec<usize> = (0..index.samples.len()).collect();
    let all_bags = BagStats::of(&index, &all);
    Ok(SplitSummary {
        root: index.root().to_path_buf(),
        images: index.samples.len(),
        groups: all_bags.bags,
        composition,
        train_bags: BagStats::of(&index, &train),
        all_bags,
        subsets: LABEL_FRACTIONS
            .iter()
            .map(|&f| (f, split.labeled_subset(&index, f).len()))
            .collect(),
        split,
        out: out.to_path_buf(),
    })
}

/// MICLe bags: the given samples grouped by lesion / patient, in first-seen order.
pub fn bags(index: &DatasetIndex, which: &[usize]) -> Vec<Vec<usize>> {
    group_members(index, which)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// How many bags could give MICLe a positive pair from two different images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BagStats {
    /// Bags (groups).
    pub bags: usize,
    /// Bags with at least two images.
    pub multi_image_bags: usize,
    /// Images in those bags.
    pub images_in_multi_image_bags: usize,
    /// The largest bag.
    pub largest_bag: usize,
}

impl BagStats {
    /// One line: the bags of `part` and its share of `all`'s multi-image bags.
    pub fn render_share(&self, part: &str, all: &BagStats) -> String {
        format!(
            "MICLe bags ({part}): {} bags, {} with >= 2 images ({} images; {:.0} % of the \
             dataset's {} multi-image groups), largest {}",
            self.bags,
            self.multi_image_bags,
            self.images_in_multi_image_bags,
            100.0 * self.multi_image_bags as f64 / all.multi_image_bags.max(1) as f64,
            all.multi_image_bags,
            self.largest_bag
        )
    }

    /// Counts the bags of the given samples.
    pub fn of(index: &DatasetIndex, which: &[usize]) -> Self {
        let bags = bags(index, which);
        let multi: Vec<&Vec<usize>> = bags.iter().filter(|b| b.len() >= 2).collect();
        Self {
            bags: bags.len(),
            multi_image_bags: multi.len(),
            images_in_multi_image_bags: multi.iter().map(|b| b.len()).sum(),
            largest_bag: bags.iter().map(Vec::len).max().unwrap_or(0),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use proptest::prelude::*;
    use rand::Rng;

    use super::*;
    use crate::data::PARTITIONS;
    use crate::data::{Finding, ImageRef, Sample, Target, Task, UncertaintyPolicy};

    /// An index of `(labels present, images)` groups; multi-label when `multi_label`.
    pub(crate) fn synthetic_index(
        groups: &[(Vec<usize>, usize)],
        classes: usize,
        multi_label: bool,
    ) -> DatasetIndex {
        let mut samples = Vec::new();
        for (g, (labels, n)) in groups.iter().enumerate() {
            for k in 0..*n {
                let target = if multi_label {
                    let mut f = vec![Finding::Negative; classes];
                    labels.iter().for_each(|&l| f[l] = Finding::Positive);
                    Target::Findings(f)
                } else {
                    Target::Class(labels[0])
                };
                samples.push(Sample {
                    id: format!("img{g}_{k}"),
                    group: format!("lesion{g}"),
                    target,
                    image: ImageRef::Array(0),
                    official: None,
                    attributes: Default::default(),
                });
            }
        }
        DatasetIndex {
            source: SourceSpec::Folder {
                path: PathBuf::from("synthetic"),
            },
            task: if multi_label {
                Task::MultiLabel
            } else {
                Task::MultiClass
            },
            class_names: (0..classes).map(|c| format!("c{c}")).collect(),
            uncertainty: UncertaintyPolicy::UIgnore,
            grouped_by: "lesion".into(),
            samples,
            content_sha256: "0".repeat(64),
            arrays: None,
        }
    }

    fn assert_no_group_leakage(index: &DatasetIndex, split: &SplitFile) {
        let mut by_group: HashMap<&str, Partition> = HashMap::new();
        for s in &index.samples {
            let p = split.assignments[&s.id];
            assert_eq!(
                *by_group.entry(&s.group).or_insert(p),
                p,
                "group {} is in two partitions",
                s.group
            );
        }
    }

    /// Generated manifests: up to 400 groups of 1–6 images, 2–6 classes, multi-class or
    /// multi-label, any seed and fractions.
    fn manifests() -> impl Strategy<Value = (Vec<(Vec<usize>, usize)>, usize, bool)> {
        (2_usize..7, any::<bool>()).prop_flat_map(|(classes, multi)| {
            let group = (
                proptest::collection::vec(0..classes, if multi { 0..3 } else { 1..2 }),
                1_usize..7,
            );
            (
                proptest::collection::vec(group, 20..400),
                Just(classes),
                Just(multi),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn splits_never_leak_groups_and_subsets_nest(
            (groups, classes, multi) in manifests(),
            seed in any::<u64>(),
            val in 0.05_f64..0.3,
            test in 0.05_f64..0.3,
        ) {
            let index = synthetic_index(&groups, classes, multi);
            let split = make_split(&index, seed, [1.0 - val - test, val, test]).unwrap();
            assert_no_group_leakage(&index, &split);
            prop_assert_eq!(split.assignments.len(), index.samples.len());
            let train: HashSet<usize> =
                split.indices(&index, Partition::Train).into_iter().collect();
            let mut previous: HashSet<usize> = HashSet::new();
            for f in LABEL_FRACTIONS {
                let subset: HashSet<usize> =
                    split.labeled_subset(&index, f).into_iter().collect();
                prop_assert!(previous.is_subset(&subset), "subset {} does not contain the smaller one", f);
                prop_assert!(subset.is_subset(&train));
                // Subsets hold whole groups.
                let groups_in: HashSet<&str> =
                    subset.iter().map(|&i| index.samples[i].group.as_str()).collect();
                for &i in &train {
                    prop_assert_eq!(
                        groups_in.contains(index.samples[i].group.as_str()),
                        subset.contains(&i)
                    );
                }
                previous = subset;
            }
            prop_assert_eq!(previous, train, "the 100 % subset is the whole train partition");
        }

        #[test]
        fn stratification_holds_within_tolerance(
            seed in any::<u64>(),
            multi in any::<bool>(),
        ) {
            assert_stratified(seed, multi);
        }
    }

    /// Partitions within 3 points of their targets per label, and the 10 % labeled subset
    /// near 10 % per label, on 900 groups of 1–3 images over 3 labels; returns the subset's
    /// largest deviation.
    fn assert_stratified(seed: u64, multi: bool) -> f64 {
        // 900 groups of 1–3 images over 3 labels (multi-label: pairs too).
        let groups: Vec<(Vec<usize>, usize)> = (0..900)
            .map(|g| {
                let labels = if multi && g % 5 == 0 {
                    vec![g % 3, (g + 1) % 3]
                } else {
                    vec![g % 3]
                };
                (labels, 1 + g % 3)
            })
            .collect();
        let index = synthetic_index(&groups, 3, multi);
        let split = make_split(&index, seed, [0.7, 0.15, 0.15]).unwrap();
        let all = index.class_counts(0..index.samples.len());
        for (p, target) in [
            (Partition::Train, 0.7),
            (Partition::Val, 0.15),
            (Partition::Test, 0.15),
        ] {
            let counts = index.class_counts(split.indices(&index, p));
            for c in 0..3 {
                let frac = counts[c] as f64 / all[c] as f64;
                assert!(
                    (frac - target).abs() < 0.03,
                    "{:?} label {}: {}",
                    p,
                    c,
                    frac
                );
            }
        }
        // The 10 % subset is stratified too: exactly per class for single-label data. In
        // multi-label data a group counts toward each of its labels but is ranked in one
        // stratum (its rarest finding), so a label's share also follows the other strata's
        // draws — the worst deviation over 1,500 seeds of this data set is 0.040 (0.049 with
        // the label-only split of format 2; `subset_tolerance_holds_over_1500_seeds`; a
        // tolerance of 0.04 failed on seed 5362766465984389358 then: 0.043).
        let tolerance = if multi { 0.07 } else { 0.01 };
        let train_counts = index.class_counts(split.indices(&index, Partition::Train));
        let tenth = index.class_counts(split.labeled_subset(&index, 0.1));
        let mut worst = 0.0_f64;
        for c in 0..3 {
            let frac = tenth[c] as f64 / train_counts[c] as f64;
            assert!(
                (frac - 0.1).abs() < tolerance,
                "10 % subset label {}: {}",
                c,
                frac
            );
            worst = worst.max((frac - 0.1).abs());
        }
        worst
    }

    /// The measurement behind `assert_stratified`'s multi-label tolerance: the worst 10 %
    /// subset deviation over 1,500 seeds (0.049 when measured) stays inside it. Slow in debug
    /// builds: `cargo test --release -p scanside-trainer --lib subset_tolerance -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "1,500 splits: run in release by tools/test.sh"]
    fn subset_tolerance_holds_over_1500_seeds() {
        let worst = (0..1500_u64)
            .map(|seed| assert_stratified(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), true))
            .fold(0.0_f64, f64::max);
        println!("worst 10 % subset deviation over 1,500 seeds: {worst:.4}");
        assert!(worst < 0.07, "{worst}");
    }

    #[test]
    fn multi_label_subset_tolerance_seed_5362766465984389358() {
        // Regression: this seed put label 0 at 14.3 % of the 10 % subset, beyond the old
        // tolerance of 4 points (see `assert_stratified`).
        assert_stratified(5_362_766_465_984_389_358, true);
    }

    #[test]
    fn split_is_reproducible_for_a_seed_and_changes_with_it() {
        let groups: Vec<(Vec<usize>, usize)> = (0..100).map(|g| (vec![g % 3], 1 + g % 2)).collect();
        let index = synthetic_index(&groups, 3, false);
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
    fn even_a_one_percent_subset_sees_every_class() {
        let groups: Vec<(Vec<usize>, usize)> = (0..300).map(|g| (vec![g % 3], 1)).collect();
        let index = synthetic_index(&groups, 3, false);
        let split = make_split(&index, 3, [0.7, 0.15, 0.15]).unwrap();
        let counts = index.class_counts(split.labeled_subset(&index, 0.01));
        assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
    }

    #[test]
    fn split_for_other_data_is_refused() {
        let index = synthetic_index(&[(vec![0], 1), (vec![1], 1), (vec![2], 1)], 3, false);
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
    fn a_split_records_its_data_relative_to_itself_and_opens_from_anywhere() {
        let index = synthetic_index(&[(vec![0], 1), (vec![1], 1), (vec![2], 1)], 3, false);
        let mut split = make_split(&index, 1, [0.34, 0.33, 0.33]).unwrap();
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("shared/data/ham10000");
        std::fs::create_dir_all(&data).unwrap();
        split.source = SourceSpec::Ham10000 { path: data.clone() };
        let path = root.path().join("project/runs/split.json");
        split.save(&path).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["source"]["path"], "../../shared/data/ham10000");
        let read = SplitFile::read(&path).unwrap();
        assert_eq!(read.source.path(), data.as_path());
        // The data gone: the error says where it was looked for and what to do.
        std::fs::remove_dir_all(&data).unwrap();
        let e = open_split(&path, None).unwrap_err().to_string();
        assert!(e.contains("ham10000") && e.contains("--data"), "{e}");
    }

    #[test]
    fn old_split_files_get_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        std::fs::write(&path, r#"{"dataset": "x", "assignments": {}}"#).unwrap();
        let e = SplitFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("old.json") && e.contains("data split"), "{e}");
    }

    #[test]
    fn format_2_split_files_are_refused_with_the_reason() {
        let index = synthetic_index(&[(vec![0], 1), (vec![1], 2), (vec![2], 1)], 3, false);
        let split = make_split(&index, 1, [0.34, 0.33, 0.33]).unwrap();
        let mut value = serde_json::to_value(&split).unwrap();
        value["format_version"] = 2.into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.json");
        std::fs::write(&path, value.to_string()).unwrap();
        let e = SplitFile::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("v2.json") && e.contains("format 2") && e.contains("multi-image"),
            "{e}"
        );
        assert!(e.contains("scanside-train data split"), "{e}");
    }

    /// A HAM10000-like index of `groups` lesions: class 0 (70 %) has single-image `follow_up`
    /// lesions (55 % of its lesions) and multi-image `histo` / `consensus` ones; classes 1 and
    /// 2 only the latter; an `age` column. The shape on which a label-only split put the
    /// multi-image lesions in train.
    pub(crate) fn ham_like_index(groups: usize, data_seed: u64) -> DatasetIndex {
        let mut rng = ChaCha8Rng::seed_from_u64(data_seed);
        let mut spec = Vec::new();
        let mut confirmed = Vec::new();
        for _ in 0..groups {
            let label = [0, 0, 0, 0, 0, 0, 0, 1, 1, 2][rng.random_range(0..10)];
            if label == 0 && rng.random_bool(0.55) {
                spec.push((vec![label], 1));
                confirmed.push("follow_up");
            } else {
                spec.push((
                    vec![label],
                    [1, 1, 1, 2, 2, 3, 4, 6][rng.random_range(0..8)],
                ));
                confirmed.push(if rng.random_bool(0.8) {
                    "histo"
                } else {
                    "consensus"
                });
            }
        }
        let mut index = synthetic_index(&spec, 3, false);
        let mut k = 0;
        for (g, (_, n)) in spec.iter().enumerate() {
            for _ in 0..*n {
                let attributes = &mut index.samples[k].attributes;
                attributes.insert("dx_type".into(), confirmed[g].into());
                let age = 5 * rng.random_range(0..18);
                attributes.insert("age".into(), format!("{age}.0"));
                k += 1;
            }
        }
        index
    }

    fn stratified_on(column: &str, seed: u64) -> SplitConfig {
        SplitConfig {
            stratify_by: Some(column.into()),
            ..SplitConfig::new(seed, DEFAULT_SPLIT_FRACTIONS)
        }
    }

    /// The largest difference, in points, between a partition's share and the whole's over
    /// the stratified quantities (label, group size, `dx_type`), and between a partition's
    /// share of the images and groups and its fraction.
    fn largest_differences(index: &DatasetIndex, split: &SplitFile) -> (f64, f64) {
        let composition = split.composition(index, &Default::default()).unwrap();
        let shares = composition
            .shares
            .iter()
            .flat_map(|row| row.partitions.values().map(|s| (s - row.whole).abs()))
            .fold(0.0, f64::max);
        let mut counts = 0.0_f64;
        for (p, f) in PARTITIONS.iter().zip(split.fractions) {
            let size = composition.partitions[p];
            counts = counts
                .max((size.images as f64 / composition.whole.images as f64 - f).abs())
                .max((size.groups as f64 / composition.whole.groups as f64 - f).abs());
        }
        (shares * 100.0, counts * 100.0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Issue 33's property: over many data sets and seeds, no partition differs from the
        /// whole by more than the margin on what the split stratifies (label, images per
        /// group, group size, `dx_type`) — in fact by at most 1.5 points — and every partition
        /// holds its fraction of the images and of the groups within half a point.
        #[test]
        fn partitions_resemble_the_whole_over_many_seeds(
            data_seed in any::<u64>(),
            seed in any::<u64>(),
            groups in 2000_usize..6000,
        ) {
            let index = ham_like_index(groups, data_seed);
            let split = make_split_with(&index, &stratified_on("dx_type", seed)).unwrap();
            let composition = split.composition(&index, &Default::default()).unwrap();
            prop_assert!(composition.warnings.is_empty(), "{}", composition.render());
            let (shares, counts) = largest_differences(&index, &split);
            prop_assert!(shares <= 1.5, "shares {shares:.2} points\n{}", composition.render());
            prop_assert!(counts <= 0.5, "counts {counts:.2} points\n{}", composition.render());
        }
    }

    /// The measurement behind the property test's 1.5 and 0.5 points: the largest differences
    /// over 2,000 data sets and seeds (1.01 and 0.17 points when measured). `cargo test --release -p scanside-trainer --lib
    /// largest_differences_over -- --ignored --nocapture`.
    #[test]
    #[ignore = "2,000 splits: run in release by tools/test.sh"]
    fn largest_differences_over_2000_seeds() {
        let mut worst = (0.0_f64, 0.0_f64);
        for seed in 0..2000_u64 {
            let index = ham_like_index(2000 + (seed as usize * 7) % 4000, seed ^ 0xdead);
            let split = make_split_with(&index, &stratified_on("dx_type", seed)).unwrap();
            let (shares, counts) = largest_differences(&index, &split);
            worst = (worst.0.max(shares), worst.1.max(counts));
        }
        println!(
            "largest differences over 2,000 seeds: shares {:.2} points, counts {:.2} points",
            worst.0, worst.1
        );
        // The property test's bounds hold over all of them.
        assert!(worst.0 <= 1.5 && worst.1 <= 0.5, "{worst:?}");
    }

    #[test]
    fn val_and_test_keep_multi_image_lesions_issue_33() {
        // Regression: the label-only split filled train with the multi-image lesions first,
        // leaving val and test 1.05 images per lesion against 1.35 in the whole and two
        // thirds more follow-up lesions.
        let index = ham_like_index(3000, 33);
        let split = make_split_with(&index, &stratified_on("dx_type", 0)).unwrap();
        let composition = split.composition(&index, &Default::default()).unwrap();
        let whole = composition.whole.images_per_group;
        for p in [Partition::Val, Partition::Test] {
            let ipg = composition.partitions[&p].images_per_group;
            assert!((ipg - whole).abs() < 0.03, "{p}: {ipg} vs {whole}");
        }
        assert!(composition.warnings.is_empty(), "{}", composition.render());
    }

    #[test]
    fn the_stratify_column_is_the_sources_own_named_one_or_none() {
        let index = ham_like_index(200, 1);
        // A folder source has no column of its own.
        assert_eq!(
            make_split(&index, 0, DEFAULT_SPLIT_FRACTIONS)
                .unwrap()
                .stratify_column,
            None
        );
        let split = make_split_with(&index, &stratified_on("dx_type", 0)).unwrap();
        assert_eq!(split.stratify_column.as_deref(), Some("dx_type"));
        let none = make_split_with(&index, &stratified_on(NO_STRATIFY_COLUMN, 0)).unwrap();
        assert_eq!(none.stratify_column, None);
        let e = make_split_with(&index, &stratified_on("view", 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no column \"view\" to stratify on") && e.contains("dx_type"),
            "{e}"
        );
    }

    #[test]
    fn composition_buckets_numbers_and_names_unknown_columns() {
        let index = ham_like_index(300, 2);
        let split = make_split_with(&index, &stratified_on("dx_type", 0)).unwrap();
        let config = CompositionConfig {
            columns: vec!["age_bucket".into()],
            ..Default::default()
        };
        let composition = split.composition(&index, &config).unwrap();
        let ages: Vec<&str> = composition
            .shares
            .iter()
            .filter(|r| r.column == "age_bucket")
            .map(|r| r.value.as_str())
            .collect();
        assert_eq!(
            ages,
            ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89"]
        );
        // Labels, group sizes and dx_type are there too, each value's shares summing to 1.
        let total: f64 = composition
            .shares
            .iter()
            .filter(|r| r.column == "group size")
            .map(|r| r.whole)
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let config = CompositionConfig {
            columns: vec!["sex".into()],
            ..Default::default()
        };
        let e = split.composition(&index, &config).unwrap_err().to_string();
        assert!(
            e.contains("no column \"sex\"") && e.contains("age, dx_type"),
            "{e}"
        );
    }

    #[test]
    fn a_partition_unlike_the_whole_is_flagged_with_its_margin() {
        let index = ham_like_index(1000, 3);
        let mut split = make_split_with(&index, &stratified_on("dx_type", 0)).unwrap();
        // Move val's multi-image lesions to train and train's follow-up ones to val: the old
        // split's bias.
        for (i, s) in index.samples.iter().enumerate() {
            let p = split.assignments[&s.id];
            let single = s.attributes["dx_type"] == "follow_up";
            if p == Partition::Val && !single {
                split.assignments.insert(s.id.clone(), Partition::Train);
            } else if p == Partition::Train && single && i % 3 == 0 {
                split.assignments.insert(s.id.clone(), Partition::Val);
            }
        }
        let composition = split.composition(&index, &Default::default()).unwrap();
        let text = composition.warnings.join("\n");
        assert!(text.contains("val: 1.00 images per lesion group"), "{text}");
        assert!(text.contains("val: dx_type follow_up is"), "{text}");
        assert!(text.contains("(margin"), "{text}");
        assert!(
            composition.render().contains('*'),
            "{}",
            composition.render()
        );
    }

    #[test]
    fn bags_count_multi_image_groups() {
        let index = synthetic_index(&[(vec![0], 3), (vec![1], 1), (vec![2], 2)], 3, false);
        let all: Vec<usize> = (0..index.samples.len()).collect();
        let stats = BagStats::of(&index, &all);
        assert_eq!(
            stats,
            BagStats {
                bags: 3,
                multi_image_bags: 2,
                images_in_multi_image_bags: 5,
                largest_bag: 3
            }
        );
    }

    #[test]
    fn bad_fractions_are_a_clear_error() {
        let index = synthetic_index(&[(vec![0], 1)], 3, false);
        let e = make_split(&index, 1, [0.5, 0.5, 0.5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sum to 1"), "{e}");
    }
}
