//! Leak-free splits: grouped by case, stratified by label, seeded, saved with the source spec and
//! content hash; nested label-fraction subsets of the training partition; MICLe bags.
//!
//! Partitions are assigned to whole groups with iterative stratification (Sechidis, Tsoumakas
//! and Vlahavas 2011) weighted by image counts: labels are visited from the rarest, and each
//! group holding the label goes to the partition that still lacks most images of it. One-hot
//! labels make this ordinary stratification; images without any finding count as a label of
//! their own, so normals are stratified too.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{DatasetIndex, Partition, SourceSpec, PARTITIONS};
use crate::{Error, Result};

/// Version of the split file format.
pub const SPLIT_FORMAT_VERSION: u32 = 2;

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
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "split file format {} is not the supported {SPLIT_FORMAT_VERSION}; make the \
                     split again with `scanside-train data split`",
                    version.map_or("(none)".to_string(), |v| v.to_string())
                ),
            });
        }
        serde_json::from_value(value).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("malformed split file: {e}"),
        })
    }

    fn check_matches(&self, path: &Path, index: &DatasetIndex) -> Result<()> {
        if self.content_sha256 != index.content_sha256 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "split was made for different data ({} has content hash {}, the split records {})",
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

/// Per-group image counts per label; the last column counts images with no label present.
fn group_label_counts(index: &DatasetIndex, members: &[usize]) -> Vec<f64> {
    let classes = index.class_names.len();
    let mut counts = vec![0.0; classes + 1];
    for &i in members {
        let present = index.samples[i].target.present();
        if present.is_empty() {
            counts[classes] += 1.0;
        }
        for c in present {
            counts[c] += 1.0;
        }
    }
    counts
}

/// Makes a grouped, label-stratified, seeded split (or takes the source's official one), with
/// nested label-fraction ranks for the training partition.
pub fn make_split(index: &DatasetIndex, seed: u64, fractions: [f64; 3]) -> Result<SplitFile> {
    let sum: f64 = fractions.iter().sum();
    if fractions.iter().any(|f| *f < 0.0) || (sum - 1.0).abs() > 1e-6 {
        return Err(Error::Config {
            path: index.root().to_path_buf(),
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
        grouped_by = index.grouped_by.clone();
        let all: Vec<usize> = (0..index.samples.len()).collect();
        let groups = group_members(index, &all);
        let counts: Vec<Vec<f64>> = groups
            .iter()
            .map(|(_, m)| group_label_counts(index, m))
            .collect();
        let partition_of = iterative_stratification(&groups, &counts, fractions, seed);
        for ((_, members), p) in groups.iter().zip(partition_of) {
            for &i in members {
                assignments.insert(index.samples[i].id.clone(), p);
            }
        }
    }
    let mut counts = BTreeMap::new();
    for p in assignments.values() {
        *counts.entry(*p).or_insert(0) += 1;
    }
    let train: Vec<usize> = (0..index.samples.len())
        .filter(|&i| assignments[&index.samples[i].id] == Partition::Train)
        .collect();
    let label_fraction_rank = label_fraction_ranks(index, &train, seed);
    Ok(SplitFile {
        format_version: SPLIT_FORMAT_VERSION,
        source: index.source.clone(),
        content_sha256: index.content_sha256.clone(),
        grouped_by,
        seed,
        fractions,
        counts,
        assignments,
        label_fraction_rank,
    })
}

fn iterative_stratification(
    groups: &[(String, Vec<usize>)],
    counts: &[Vec<f64>],
    fractions: [f64; 3],
    seed: u64,
) -> Vec<Partition> {
    let labels = counts.first().map_or(0, Vec::len);
    let sizes: Vec<f64> = groups.iter().map(|(_, m)| m.len() as f64).collect();
    let total: f64 = sizes.iter().sum();
    let mut wanted: Vec<f64> = fractions.iter().map(|f| f * total).collect();
    let mut wanted_label: Vec<Vec<f64>> = fractions
        .iter()
        .map(|f| {
            (0..labels)
                .map(|l| f * counts.iter().map(|c| c[l]).sum::<f64>())
                .collect()
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Visiting order within a label: seeded shuffle, then large groups first (they are the
    // hardest to place without overshooting).
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.shuffle(&mut rng);
    order.sort_by(|&a, &b| sizes[b].total_cmp(&sizes[a]));
    let mut assigned: Vec<Option<Partition>> = vec![None; groups.len()];
    let mut remaining_label: Vec<f64> = (0..labels)
        .map(|l| counts.iter().map(|c| c[l]).sum())
        .collect();
    // The rarest label that still has unassigned images, until none has.
    while let Some(label) = (0..labels)
        .filter(|&l| remaining_label[l] > 0.0)
        .min_by(|&a, &b| remaining_label[a].total_cmp(&remaining_label[b]))
    {
        for &g in &order {
            if assigned[g].is_some() || counts[g][label] == 0.0 {
                continue;
            }
            let best = (0..3)
                .filter(|&p| fractions[p] > 0.0)
                .max_by(|&a, &b| {
                    wanted_label[a][label]
                        .total_cmp(&wanted_label[b][label])
                        .then(wanted[a].total_cmp(&wanted[b]))
                        .then(if rng.random::<bool>() {
                            std::cmp::Ordering::Greater
                        } else {
                            std::cmp::Ordering::Less
                        })
                })
                .expect("fractions sum to 1, so one is positive");
            assigned[g] = Some(PARTITIONS[best]);
            wanted[best] -= sizes[g];
            for l in 0..labels {
                wanted_label[best][l] -= counts[g][l];
                remaining_label[l] -= counts[g][l];
            }
        }
    }
    assigned
        .into_iter()
        .map(|p| p.unwrap_or(Partition::Train))
        .collect()
}

/// Ranks training groups for nested label-fraction subsets: within each stratum (the class, or
/// for multi-label data the group's rarest present finding, or "no finding") groups are
/// shuffled, with the smallest group first; the group at rank `r` of `n` enters the subsets from fraction `(r + ½) / n` on,
/// and the first group of every stratum is in all of them, so even a 1 % subset sees every
/// class.
fn label_fraction_ranks(index: &DatasetIndex, train: &[usize], seed: u64) -> BTreeMap<String, f64> {
    let groups = group_members(index, train);
    let frequency = index.class_counts(train.iter().copied());
    let none = index.class_names.len();
    let mut strata: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (g, (_, members)) in groups.iter().enumerate() {
        let stratum = members
            .iter()
            .flat_map(|&i| index.samples[i].target.present())
            .min_by_key(|&c| (frequency[c], c))
            .unwrap_or(none);
        strata.entry(stratum).or_default().push(g);
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

/// What `data split` made: the dataset's groups, the partitions, MICLe bags and the
/// label-fraction subsets.
#[derive(Debug, Clone)]
pub struct SplitSummary {
    /// Dataset folder or file.
    pub root: PathBuf,
    /// Images listed.
    pub images: usize,
    /// Groups (lesions, patients) over all images.
    pub groups: usize,
    /// The split written.
    pub split: SplitFile,
    /// Where it was written.
    pub out: PathBuf,
    /// MICLe bags of the training partition.
    pub train_bags: BagStats,
    /// Images in each default label-fraction subset ([`LABEL_FRACTIONS`]).
    pub subsets: Vec<(f64, usize)>,
}

impl SplitSummary {
    /// Three lines for people.
    pub fn render(&self) -> String {
        let bags = &self.train_bags;
        let subsets: Vec<String> = self
            .subsets
            .iter()
            .map(|(f, n)| format!("{}%: {n}", f * 100.0))
            .collect();
        format!(
            "{}: {} images in {} groups (grouped by {}) -> {:?}, written to {}\n\
             MICLe bags (train): {} bags, {} with >= 2 images ({} images)\n\
             label-fraction subsets (images): {}\n",
            self.root.display(),
            self.images,
            self.groups,
            self.split.grouped_by,
            self.split.counts,
            self.out.display(),
            bags.bags,
            bags.multi_image_bags,
            bags.images_in_multi_image_bags,
            subsets.join(", ")
        )
    }
}

/// Makes a split of the dataset `source` ([`make_split`]), saves it to `out` and describes it.
pub fn write_split(
    source: &SourceSpec,
    seed: u64,
    fractions: [f64; 3],
    out: &Path,
) -> Result<SplitSummary> {
    let index = source.open()?;
    let split = make_split(&index, seed, fractions)?;
    crate::runlog::save_json(out, &split)?;
    let train = split.indices(&index, Partition::Train);
    let all: Vec<usize> = (0..index.samples.len()).collect();
    Ok(SplitSummary {
        root: index.root().to_path_buf(),
        images: index.samples.len(),
        groups: BagStats::of(&index, &all).bags,
        train_bags: BagStats::of(&index, &train),
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

    use super::*;
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
        // draws — the worst deviation over 1,500 seeds of this data set is 0.049
        // (`subset_tolerance_holds_over_1500_seeds`; a
        // tolerance of 0.04 failed on seed 5362766465984389358: 0.043).
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
    #[ignore = "1,500 splits; run on demand in release"]
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
    fn old_split_files_get_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        std::fs::write(&path, r#"{"dataset": "x", "assignments": {}}"#).unwrap();
        let e = SplitFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("old.json") && e.contains("data split"), "{e}");
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
