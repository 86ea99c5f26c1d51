//! Group strata and the dealer that hands whole groups (lesions, patients) to partitions so that
//! each partition resembles the whole.
//!
//! A group's stratum joins its label (its class; for multi-label data its rarest present
//! finding, or "no finding"), its size bucket (1, 2, 3–4, 5–8, … images) and, where the
//! source has one, its value of a metadata column (HAM10000 `dx_type`, NIH `view`). Strata are
//! laid out in one sequence — the largest size bucket first, then the labels in a seeded order,
//! then the column's values — with each stratum's groups in seeded order, and dealt in that
//! order by minimisation (Pocock and Simon 1975): every group goes to the partition furthest
//! below its fraction, summed over the groups dealt so far that share the group's stratum, its
//! label, its size bucket, its column value, and over all of them, counting both groups and
//! images (in mean group sizes). So each stratum splits within a group or so of the fractions,
//! and so does each label, size bucket and value taken alone; the big groups, dealt first, are
//! evened out by the small ones after them. Nothing here reads pixels or decides where a split
//! is saved.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DatasetIndex, Partition, PARTITIONS};

/// Size bucket of a group of `images` images: 0 for 1, 1 for 2, 2 for 3–4, 3 for 5–8, …
pub(super) fn size_bucket(images: usize) -> u32 {
    images.max(1).next_power_of_two().trailing_zeros()
}

/// The bucket's range for people: `1`, `2`, `3-4`, `5-8`, …
pub(super) fn size_bucket_name(bucket: u32) -> String {
    match bucket {
        0 => "1".into(),
        1 => "2".into(),
        b => format!("{}-{}", (1_usize << (b - 1)) + 1, 1_usize << b),
    }
}

/// A group's label stratum: its rarest present label by `frequency` (images per label), or
/// `class_names.len()` ("no finding") when none is present.
pub(super) fn label_stratum(index: &DatasetIndex, members: &[usize], frequency: &[usize]) -> usize {
    members
        .iter()
        .flat_map(|&i| index.samples[i].target.present())
        .min_by_key(|&c| (frequency[c], c))
        .unwrap_or(index.class_names.len())
}

/// A group's value of a metadata column: the most common among its images (ties to the first
/// in sort order), blank when none has it.
pub(super) fn group_value(index: &DatasetIndex, members: &[usize], column: &str) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in members {
        let value = index.samples[i].attributes.get(column).map_or("", |v| v);
        *counts.entry(value).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|(a, m), (b, n)| m.cmp(n).then(b.cmp(a)))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default()
}

/// Where a group sits in the dealing sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct StratumKey {
    /// [`size_bucket`] of the group.
    pub size_bucket: u32,
    /// [`label_stratum`] of the group.
    pub label: usize,
    /// [`group_value`] of the stratification column; `None` without one.
    pub value: Option<String>,
}

/// A group to deal.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GroupToDeal {
    /// Its stratum.
    pub key: StratumKey,
    /// Its images.
    pub size: usize,
    /// Multi-label data: every finding present in one of its images (and "no finding",
    /// `class_names.len()`, when an image has none), each kept in proportion too; empty for
    /// one class per image, where the label already is.
    pub findings: Vec<usize>,
}

/// Deals `groups` to partitions in proportion to `fractions` (non-negative, summing to 1),
/// seeded; returns each group's partition.
pub(super) fn deal(groups: &[GroupToDeal], fractions: [f64; 3], seed: u64) -> Vec<Partition> {
    let keys: Vec<&StratumKey> = groups.iter().map(|g| &g.key).collect();
    let order = dealing_order(&keys, seed);
    let images: usize = groups.iter().map(|g| g.size).sum();
    let mut dealer = Dealer::new(fractions, images as f64 / groups.len().max(1) as f64);
    let mut partition_of = vec![Partition::Train; groups.len()];
    for g in order {
        partition_of[g] = dealer.deal(&groups[g]);
    }
    partition_of
}

/// The groups in dealing order: size buckets from the largest, labels in a seeded order, values
/// in sort order, groups shuffled within their stratum.
fn dealing_order(keys: &[&StratumKey], seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut strata: BTreeMap<&StratumKey, Vec<usize>> = BTreeMap::new();
    for (g, key) in keys.iter().enumerate() {
        strata.entry(*key).or_default().push(g);
    }
    // A seeded label order moves a stratum of one big group to another place in the sequence,
    // and so to another partition, from seed to seed.
    let mut labels: Vec<usize> = keys.iter().map(|k| k.label).collect();
    labels.sort_unstable();
    labels.dedup();
    labels.shuffle(&mut rng);
    let rank: BTreeMap<usize, usize> = labels.iter().enumerate().map(|(r, &l)| (l, r)).collect();
    let mut ordered: Vec<(&StratumKey, Vec<usize>)> = strata.into_iter().collect();
    ordered.sort_by(|(a, _), (b, _)| {
        b.size_bucket
            .cmp(&a.size_bucket)
            .then(rank[&a.label].cmp(&rank[&b.label]))
            .then(a.value.cmp(&b.value))
    });
    let mut order = Vec::with_capacity(keys.len());
    for (_, mut groups) in ordered {
        groups.shuffle(&mut rng);
        order.extend(groups);
    }
    order
}

/// What the dealer keeps in proportion: everything, and each label, size bucket, column value,
/// joint stratum and (multi-label data) finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Level {
    All,
    Label(usize),
    SizeBucket(u32),
    Value(String),
    Stratum(StratumKey),
    Finding(usize),
}

impl Level {
    /// The levels a group counts toward.
    fn of(group: &GroupToDeal) -> Vec<Level> {
        let key = &group.key;
        let mut levels = vec![
            Level::All,
            Level::Label(key.label),
            Level::SizeBucket(key.size_bucket),
            Level::Stratum(key.clone()),
        ];
        levels.extend(key.value.clone().map(Level::Value));
        levels.extend(group.findings.iter().map(|&f| Level::Finding(f)));
        levels
    }
}

/// Groups and images dealt to each partition at one level.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    groups: [f64; 3],
    images: [f64; 3],
}

/// Hands out groups one at a time, each to the partition furthest below its fractions.
struct Dealer {
    fractions: [f64; 3],
    mean_size: f64,
    tallies: HashMap<Level, Tally>,
}

impl Dealer {
    fn new(fractions: [f64; 3], mean_size: f64) -> Self {
        Self {
            fractions,
            mean_size: mean_size.max(1.0),
            tallies: HashMap::new(),
        }
    }

    /// How far partition `p` falls short of its fraction at one level with a group of `size`
    /// images added: in groups plus in images (counted in mean group sizes).
    fn shortfall(&self, tally: &Tally, p: usize, size: f64) -> f64 {
        let f = self.fractions[p];
        let groups: f64 = tally.groups.iter().sum::<f64>() + 1.0;
        let images: f64 = tally.images.iter().sum::<f64>() + size;
        (f * groups - tally.groups[p]) + (f * images - tally.images[p]) / self.mean_size
    }

    /// The partition of the next group: the one with the largest shortfall summed over the
    /// group's levels. Ties go to the larger fraction, then to train, val, test in that order.
    fn deal(&mut self, group: &GroupToDeal) -> Partition {
        let size = group.size as f64;
        let levels = Level::of(group);
        let empty = Tally::default();
        let total = |p: usize| -> f64 {
            levels
                .iter()
                .map(|l| self.shortfall(self.tallies.get(l).unwrap_or(&empty), p, size))
                .sum()
        };
        let best = (0..3)
            .filter(|&p| self.fractions[p] > 0.0)
            .max_by(|&a, &b| {
                total(a)
                    .total_cmp(&total(b))
                    .then(self.fractions[a].total_cmp(&self.fractions[b]))
                    .then(b.cmp(&a))
            })
            .expect("fractions sum to 1, so one is positive");
        for level in levels {
            let tally = self.tallies.entry(level).or_default();
            tally.groups[best] += 1.0;
            tally.images[best] += size;
        }
        PARTITIONS[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_deal(keys: &[StratumKey], sizes: &[usize]) -> Vec<GroupToDeal> {
        keys.iter()
            .zip(sizes)
            .map(|(key, &size)| GroupToDeal {
                key: key.clone(),
                size,
                findings: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn size_buckets_double() {
        let buckets: Vec<u32> = [1, 2, 3, 4, 5, 8, 9, 47].map(size_bucket).to_vec();
        assert_eq!(buckets, [0, 1, 2, 2, 3, 3, 4, 6]);
        assert_eq!(size_bucket_name(0), "1");
        assert_eq!(size_bucket_name(2), "3-4");
        assert_eq!(size_bucket_name(6), "33-64");
    }

    #[test]
    fn every_stratum_splits_within_two_groups_of_its_share() {
        // 40 strata of 7–60 groups each, sizes by bucket.
        let mut keys = Vec::new();
        let mut sizes = Vec::new();
        for s in 0..40_u32 {
            for _ in 0..(7 + (s * 13) % 54) {
                keys.push(StratumKey {
                    size_bucket: s % 3,
                    label: (s / 3) as usize,
                    value: Some(format!("v{}", s % 2)),
                });
                sizes.push(1 << (s % 3));
            }
        }
        let fractions = [0.7, 0.15, 0.15];
        let groups = to_deal(&keys, &sizes);
        for seed in 0..20 {
            let parts = deal(&groups, fractions, seed);
            let mut by_stratum: BTreeMap<&StratumKey, [f64; 3]> = BTreeMap::new();
            for (key, p) in keys.iter().zip(&parts) {
                by_stratum.entry(key).or_default()[*p as usize] += 1.0;
            }
            for (key, counts) in by_stratum {
                let n: f64 = counts.iter().sum();
                for p in 0..3 {
                    let off = (counts[p] - fractions[p] * n).abs();
                    assert!(off <= 2.0, "seed {seed} {key:?}: {counts:?} of {n}");
                }
            }
        }
    }

    #[test]
    fn a_zero_fraction_gets_nothing() {
        let keys: Vec<StratumKey> = (0..50)
            .map(|g| StratumKey {
                size_bucket: g % 2,
                label: (g % 3) as usize,
                value: None,
            })
            .collect();
        let parts = deal(&to_deal(&keys, &[1; 50]), [0.8, 0.0, 0.2], 1);
        assert!(!parts.contains(&Partition::Val));
        assert_eq!(parts.iter().filter(|&&p| p == Partition::Test).count(), 10);
    }
}
