//! `data check`: reads every image once and reports what would make results meaningless or a
//! run fail — unreadable files, identical images in two partitions, a lesion or patient in two
//! partitions — plus label counts per partition, class imbalance, and what each partition is
//! made of beside the whole (warning where a partition does not resemble it).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use std::path::Path;

use super::{
    hex, make_split, open_split_or_source, BagStats, Composition, CompositionConfig, DatasetIndex,
    ImageRef, Partition, SourceSpec, SplitFile, Task, DEFAULT_SPLIT_FRACTIONS, PARTITIONS,
};
use crate::runlog::{progress, save_json};
use crate::Result;

/// What `data check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Dataset path.
    pub source: String,
    /// Layout name.
    pub layout: String,
    /// Multi-class or multi-label.
    pub task: Task,
    /// What groups samples.
    pub grouped_by: String,
    /// Images listed.
    pub images: usize,
    /// Class names.
    pub class_names: Vec<String>,
    /// Whether the split checked was a given file or a fresh default split.
    pub split: String,
    /// Images per class per partition (multi-label: images where the finding is present or
    /// uncertain).
    pub class_counts: BTreeMap<Partition, Vec<usize>>,
    /// MICLe bags in the training partition.
    pub train_bags: BagStats,
    /// MICLe bags in the whole dataset.
    pub all_bags: BagStats,
    /// Each partition's composition beside the whole's (its warnings are in `warnings` too).
    pub composition: Composition,
    /// Images that cannot be read, each with its reason.
    pub unreadable: Vec<String>,
    /// Byte-identical images that sit in two partitions.
    pub duplicates_across_partitions: Vec<String>,
    /// Byte-identical images within one partition.
    pub duplicates_within_partitions: usize,
    /// Groups with images in more than one partition.
    pub leaked_groups: Vec<String>,
    /// Largest over smallest non-zero class count (whole dataset).
    pub imbalance_ratio: f64,
    /// Things that make the data unfit as it is (non-zero exit).
    pub problems: Vec<String>,
    /// Things to know.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Whether the data passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// A report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}, {:?}): {} images, grouped by {}; split: {}",
            self.source, self.layout, self.task, self.images, self.grouped_by, self.split
        );
        let width = self
            .class_names
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{:width$}  {:>7} {:>7} {:>7}",
            "class", "train", "val", "test"
        );
        for (c, name) in self.class_names.iter().enumerate() {
            let n = |p: Partition| self.class_counts.get(&p).map_or(0, |v| v[c]);
            let _ = writeln!(
                out,
                "{name:width$}  {:>7} {:>7} {:>7}",
                n(Partition::Train),
                n(Partition::Val),
                n(Partition::Test)
            );
        }
        let _ = writeln!(
            out,
            "{}",
            self.train_bags.render_share("train", &self.all_bags)
        );
        out += &self.composition.render();
        let _ = writeln!(
            out,
            "class imbalance: largest/smallest = {:.1}; duplicates within a partition: {}",
            self.imbalance_ratio, self.duplicates_within_partitions
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok() {
                "check passed".to_string()
            } else {
                format!("check FAILED: {} problem(s)", self.problems.len())
            }
        );
        out
    }
}

/// Lists at most this many examples of one kind of problem, then a count.
const EXAMPLES: usize = 20;

fn summarise(kind: &str, items: &[String]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let mut text = format!(
        "{} {kind}: {}",
        items.len(),
        items[..items.len().min(EXAMPLES)].join("; ")
    );
    if items.len() > EXAMPLES {
        let _ = write!(text, "; … and {} more", items.len() - EXAMPLES);
    }
    Some(text)
}

/// `data check`: opens the dataset of a split file (or of a source alone, then checked against
/// a fresh default split with seed 0), checks it, compares the partitions on `compare`'s
/// columns, and saves the report as JSON to `json` when given.
pub fn check_split_or_source(
    split: Option<&Path>,
    source: Option<&SourceSpec>,
    compare: &CompositionConfig,
    json: Option<&Path>,
) -> Result<CheckReport> {
    let (index, given) = open_split_or_source(split, source)?;
    let (split, label) = match (given, split) {
        (Some(given), Some(path)) => (given, path.display().to_string()),
        _ => (
            make_split(&index, 0, DEFAULT_SPLIT_FRACTIONS)?,
            "none given; a fresh split (seed 0, 70/15/15)".to_string(),
        ),
    };
    let composition = split.composition(&index, compare)?;
    let report = check_dataset(&index, &split, &label, composition);
    if let Some(path) = json {
        save_json(path, &report)?;
    }
    Ok(report)
}

/// Checks a dataset against a split (made with `make_split` when the caller has none), whose
/// composition the caller has worked out ([`SplitFile::composition`]).
pub fn check_dataset(
    index: &DatasetIndex,
    split: &SplitFile,
    split_label: &str,
    composition: Composition,
) -> CheckReport {
    let read = content_hashes(index);
    let partition = |i: usize| split.assignments.get(&index.samples[i].id).copied();
    let found = ReadProblems::of(index, &read, partition);
    let leaked_groups = leaked_groups(index, partition);
    let unassigned: Vec<String> = (0..index.samples.len())
        .filter(|&i| partition(i).is_none())
        .map(|i| index.describe_sample(i))
        .collect();
    let mut class_counts = BTreeMap::new();
    for p in PARTITIONS {
        class_counts.insert(p, index.class_counts(split.indices(index, p)));
    }
    let total = index.class_counts(0..index.samples.len());
    let nonzero: Vec<usize> = total.iter().copied().filter(|&c| c > 0).collect();
    let imbalance_ratio = match (nonzero.iter().max(), nonzero.iter().min()) {
        (Some(&hi), Some(&lo)) => hi as f64 / lo as f64,
        _ => 0.0,
    };
    let mut problems: Vec<String> = [
        summarise("unreadable image(s)", &found.unreadable),
        summarise(
            "image(s) identical to one in another partition (leak)",
            &found.duplicates_across,
        ),
        summarise("group(s) in more than one partition (leak)", &leaked_groups),
        summarise("image(s) without a partition", &unassigned),
    ]
    .into_iter()
    .flatten()
    .collect();
    if index.samples.is_empty() {
        problems.push("the dataset lists no images".into());
    }
    let mut warnings = warnings(
        index,
        split,
        &total,
        &class_counts,
        imbalance_ratio,
        found.duplicates_within,
    );
    warnings.extend(composition.warnings.iter().cloned());
    let train = split.indices(index, Partition::Train);
    let all: Vec<usize> = (0..index.samples.len()).collect();
    CheckReport {
        source: index.root().display().to_string(),
        layout: index.source.layout().into(),
        task: index.task,
        grouped_by: index.grouped_by.clone(),
        images: index.samples.len(),
        class_names: index.class_names.clone(),
        split: split_label.into(),
        class_counts,
        train_bags: BagStats::of(index, &train),
        all_bags: BagStats::of(index, &all),
        composition,
        unreadable: found.unreadable,
        duplicates_across_partitions: found.duplicates_across,
        duplicates_within_partitions: found.duplicates_within,
        leaked_groups,
        imbalance_ratio,
        problems,
        warnings,
    }
}

/// Every image read and decoded once, in parallel: its content hash (of the file's bytes, or
/// of an array image's pixels), or why it cannot be read.
fn content_hashes(index: &DatasetIndex) -> Vec<std::result::Result<String, String>> {
    let bar = progress(index.samples.len() as u64, "check");
    let read = (0..index.samples.len())
        .into_par_iter()
        .map(|i| {
            let result = match &index.samples[i].image {
                ImageRef::File(path) => scanside_runtime::persist::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        scanside_runtime::decode::decode_bytes(path, &bytes)
                            .map(|_| hex(&Sha256::digest(&bytes)))
                            .map_err(|e| e.to_string())
                    }),
                ImageRef::Array(_) => index
                    .decode(i)
                    .map(|img| {
                        let bytes: Vec<u8> = img
                            .pixels
                            .iter()
                            .map(|v| (v * 255.0).round() as u8)
                            .collect();
                        hex(&Sha256::digest(&bytes))
                    })
                    .map_err(|e| e.to_string()),
            };
            bar.inc(1);
            result
        })
        .collect();
    bar.finish_and_clear();
    read
}

/// What reading every image found: unreadable files and byte-identical images.
struct ReadProblems {
    unreadable: Vec<String>,
    /// Identical images in two partitions, each named with its partition.
    duplicates_across: Vec<String>,
    /// Identical images within one partition.
    duplicates_within: usize,
}

impl ReadProblems {
    /// Sorts the read results (in sample order) into unreadable images and duplicates, an
    /// image being compared with the first one of its hash.
    fn of(
        index: &DatasetIndex,
        read: &[std::result::Result<String, String>],
        partition: impl Fn(usize) -> Option<Partition>,
    ) -> Self {
        let mut found = Self {
            unreadable: Vec::new(),
            duplicates_across: Vec::new(),
            duplicates_within: 0,
        };
        let mut first_by_hash: HashMap<&str, usize> = HashMap::new();
        for (i, r) in read.iter().enumerate() {
            match r {
                Err(e) => found.unreadable.push(e.clone()),
                Ok(hash) => match first_by_hash.get(hash.as_str()) {
                    None => {
                        first_by_hash.insert(hash, i);
                    }
                    Some(&j) if partition(i) == partition(j) => found.duplicates_within += 1,
                    Some(&j) => found.duplicates_across.push(format!(
                        "{} ({}) = {} ({})",
                        index.describe_sample(j),
                        partition(j).map_or("-".into(), |p| p.to_string()),
                        index.describe_sample(i),
                        partition(i).map_or("-".into(), |p| p.to_string()),
                    )),
                },
            }
        }
        found
    }
}

/// Groups (lesions, patients) with images in more than one partition, each with its partitions.
fn leaked_groups(
    index: &DatasetIndex,
    partition: impl Fn(usize) -> Option<Partition>,
) -> Vec<String> {
    let mut group_partitions: BTreeMap<&str, Vec<Partition>> = BTreeMap::new();
    for (i, s) in index.samples.iter().enumerate() {
        if let Some(p) = partition(i) {
            let ps = group_partitions.entry(&s.group).or_default();
            if !ps.contains(&p) {
                ps.push(p);
            }
        }
    }
    group_partitions
        .iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(g, ps)| {
            format!(
                "{g} in {}",
                ps.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        })
        .collect()
}

/// What to know that does not make the data unfit: empty classes, classes too rare in val or
/// test for a reliable AUC, strong imbalance, duplicates within a partition.
fn warnings(
    index: &DatasetIndex,
    split: &SplitFile,
    total: &[usize],
    class_counts: &BTreeMap<Partition, Vec<usize>>,
    imbalance_ratio: f64,
    duplicates_within: usize,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (c, name) in index.class_names.iter().enumerate() {
        if total[c] == 0 {
            warnings.push(format!("class {name} has no images"));
            continue;
        }
        for p in [Partition::Val, Partition::Test] {
            let n = class_counts[&p][c];
            if n < 5 && split.counts.get(&p).copied().unwrap_or(0) > 0 {
                warnings.push(format!(
                    "class {name} has {n} image(s) in {p}: its AUC there is unreliable"
                ));
            }
        }
    }
    if imbalance_ratio > 10.0 {
        warnings.push(format!(
            "classes are imbalanced ({imbalance_ratio:.0}:1): use class-balanced sampling or \
             loss weights, and report balanced accuracy and per-class AUC"
        ));
    }
    if duplicates_within > 0 {
        warnings.push(format!(
            "{duplicates_within} image(s) are byte-identical to another in the same partition"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::split::tests::synthetic_index;
    use crate::data::{make_split, ArrayImages};

    fn with_pixels(
        mut index: crate::data::DatasetIndex,
        distinct: bool,
    ) -> crate::data::DatasetIndex {
        let n = index.samples.len();
        for (k, s) in index.samples.iter_mut().enumerate() {
            s.image = ImageRef::Array(k);
        }
        index.arrays = Some(ArrayImages {
            pixels: (0..n * 4)
                .map(|i| if distinct { (i / 4) as u8 } else { 7 })
                .collect(),
            height: 2,
            width: 2,
            channels: 1,
        });
        index
    }

    #[test]
    fn a_clean_dataset_passes() {
        let groups: Vec<(Vec<usize>, usize)> = (0..60).map(|g| (vec![g % 3], 1 + g % 2)).collect();
        let index = with_pixels(synthetic_index(&groups, 3, false), true);
        let split = make_split(&index, 0, [0.6, 0.2, 0.2]).unwrap();
        let composition = split.composition(&index, &Default::default()).unwrap();
        let report = check_dataset(&index, &split, "fresh", composition);
        assert!(report.ok(), "{}", report.render());
        let bags = report.train_bags;
        assert!(
            bags.multi_image_bags > 0 && bags.multi_image_bags < bags.bags,
            "{bags:?}"
        );
    }

    #[test]
    fn identical_images_and_groups_across_partitions_are_problems() {
        let groups: Vec<(Vec<usize>, usize)> = (0..60).map(|g| (vec![g % 3], 2)).collect();
        let index = with_pixels(synthetic_index(&groups, 3, false), false);
        let mut split = make_split(&index, 0, [0.6, 0.2, 0.2]).unwrap();
        // Move one image of a training lesion to test: a group leak.
        let moved = split
            .assignments
            .iter()
            .find(|(_, p)| **p == Partition::Train)
            .map(|(id, _)| id.clone())
            .unwrap();
        split.assignments.insert(moved, Partition::Test);
        let composition = split.composition(&index, &Default::default()).unwrap();
        let report = check_dataset(&index, &split, "given", composition);
        assert!(!report.ok());
        assert!(!report.duplicates_across_partitions.is_empty());
        assert_eq!(report.leaked_groups.len(), 1, "{}", report.render());
        assert!(report.render().contains("check FAILED"));
    }
}
