//! What each partition of a split is made of — images, groups, images per group, label shares
//! and the shares of chosen metadata columns (numeric ones bucketed) — beside the whole, with a
//! warning wherever a partition differs from the whole by more than chance explains.
//!
//! The margin: a partition drawn at random, group by group, differs from the whole by about
//! one standard error (of a share, or of the mean group size, over as many groups as the
//! partition holds, with the finite-population correction); three standard errors happen by
//! chance in about 3 of 1,000 comparisons, so a difference beyond them was made by the split.
//! A floor (2 points of a share, 5 % of the images per group) keeps a large dataset from
//! flagging differences too small to matter. Nothing here assigns partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::strata::{size_bucket, size_bucket_name};
use super::{DatasetIndex, Partition, Task};
use crate::{Error, Result};

/// Which columns to compare and how far a partition may stray.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompositionConfig {
    /// Metadata columns whose value shares are compared (`dx_type`, `sex`, `age`; `age_bucket`
    /// buckets `age` even when it has few values). Empty: the column the split was stratified
    /// on, if any.
    pub columns: Vec<String>,
    /// Standard errors of a random group-level draw a partition may differ by.
    pub standard_errors: f64,
    /// Smallest margin for a share (0.02 = 2 points).
    pub min_share_margin: f64,
    /// Smallest margin for the images per group, relative to the whole's (0.05 = 5 %).
    pub min_size_margin: f64,
}

impl Default for CompositionConfig {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            standard_errors: 3.0,
            min_share_margin: 0.02,
            min_size_margin: 0.05,
        }
    }
}

impl CompositionConfig {
    /// Margins must be positive and finite.
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(self.standard_errors) && ok(self.min_share_margin) && ok(self.min_size_margin)) {
            return Err(Error::Config {
                path: "--compare".into(),
                reason: format!("composition margins must be positive: {self:?}"),
            });
        }
        Ok(())
    }

    /// The margin in words, for reports.
    pub fn describe(&self, grouped_by: &str) -> String {
        format!(
            "{} standard errors of a random draw of as many {grouped_by} groups, at least {} \
             points of a share and {} % of the images per group",
            self.standard_errors,
            self.min_share_margin * 100.0,
            self.min_size_margin * 100.0
        )
    }
}

/// Images and groups of one part of a split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PartSize {
    /// Images.
    pub images: usize,
    /// Groups (lesions, patients).
    pub groups: usize,
    /// Images over groups.
    pub images_per_group: f64,
    /// How far the images per group may differ from the whole's (0 for the whole).
    pub margin: f64,
}

/// One value's share of the images, in the whole and in each partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareRow {
    /// `label` or the metadata column.
    pub column: String,
    /// The class, finding or column value (a bucket such as `40-49` for numeric columns).
    pub value: String,
    /// Share of the whole's images.
    pub whole: f64,
    /// Share of each partition's images.
    pub partitions: BTreeMap<Partition, f64>,
    /// How far each partition's share may differ from the whole's.
    pub margins: BTreeMap<Partition, f64>,
}

/// Each partition's composition beside the whole's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Composition {
    /// What groups the images.
    pub grouped_by: String,
    /// The metadata columns compared.
    pub columns: Vec<String>,
    /// The margin in words.
    pub margin: String,
    /// The whole dataset.
    pub whole: PartSize,
    /// Each non-empty partition.
    pub partitions: BTreeMap<Partition, PartSize>,
    /// Label shares, then each column's value shares.
    pub shares: Vec<ShareRow>,
    /// Every difference beyond its margin, in words.
    pub warnings: Vec<String>,
}

/// One image's value of each compared quantity.
struct ValueOf<'a> {
    column: String,
    /// Values in report order.
    values: Vec<String>,
    /// For each image, the indices into `values` it counts toward.
    of_image: Box<dyn Fn(usize) -> Vec<usize> + 'a>,
}

impl Composition {
    /// The composition of the partitions given by `partition_of` (sample index → partition).
    pub fn of(
        index: &DatasetIndex,
        partition_of: impl Fn(usize) -> Option<Partition>,
        config: &CompositionConfig,
    ) -> Result<Self> {
        config.validate()?;
        let mut parts: BTreeMap<Partition, Vec<usize>> = BTreeMap::new();
        for i in 0..index.samples.len() {
            if let Some(p) = partition_of(i) {
                parts.entry(p).or_default().push(i);
            }
        }
        let all: Vec<usize> = (0..index.samples.len()).collect();
        let group_sizes = GroupSizes::of(index, &all);
        let whole = group_sizes.part_size(&all, None, config);
        let partitions: BTreeMap<Partition, PartSize> = parts
            .iter()
            .map(|(p, members)| (*p, group_sizes.part_size(members, Some(&whole), config)))
            .collect();
        let mut quantities = vec![label_values(index), group_size_values(index, &group_sizes)];
        for column in &config.columns {
            quantities.push(column_values(index, column)?);
        }
        let shares = quantities
            .iter()
            .flat_map(|q| share_rows(q, &all, &parts, &whole, &partitions, config))
            .collect();
        let mut composition = Self {
            grouped_by: index.grouped_by.clone(),
            columns: config.columns.clone(),
            margin: config.describe(&index.grouped_by),
            whole,
            partitions,
            shares,
            warnings: Vec::new(),
        };
        composition.warnings = composition.differences();
        Ok(composition)
    }

    /// Every partition quantity beyond its margin, in words.
    fn differences(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (p, size) in &self.partitions {
            if (size.images_per_group - self.whole.images_per_group).abs() > size.margin {
                found.push(format!(
                    "{p}: {:.2} images per {} group against {:.2} in the whole (margin {:.2})",
                    size.images_per_group,
                    self.grouped_by,
                    self.whole.images_per_group,
                    size.margin
                ));
            }
        }
        for row in &self.shares {
            for (p, share) in &row.partitions {
                let margin = row.margins[p];
                if (share - row.whole).abs() > margin {
                    found.push(format!(
                        "{p}: {} {} is {:.1} % of the images against {:.1} % in the whole \
                         (margin {:.1} points)",
                        row.column,
                        row.value,
                        share * 100.0,
                        row.whole * 100.0,
                        margin * 100.0
                    ));
                }
            }
        }
        found
    }

    /// The table for people: a `*` marks a value beyond its margin.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let parts: Vec<&PartSize> = self.partitions.values().collect();
        let names: Vec<String> = self.partitions.keys().map(|p| p.to_string()).collect();
        let header = names.iter().map(|n| (n.clone(), false)).collect();
        write_row(&mut out, "composition", "whole", header);
        let counts = |count: fn(&PartSize) -> usize| {
            parts
                .iter()
                .map(|s| (count(s).to_string(), false))
                .collect()
        };
        write_row(
            &mut out,
            "images",
            &self.whole.images.to_string(),
            counts(|s| s.images),
        );
        let groups = format!("{} groups", self.grouped_by);
        write_row(
            &mut out,
            &groups,
            &self.whole.groups.to_string(),
            counts(|s| s.groups),
        );
        let whole_ipg = self.whole.images_per_group;
        let ipg = parts
            .iter()
            .map(|s| {
                let off = (s.images_per_group - whole_ipg).abs() > s.margin;
                (format!("{:.2}", s.images_per_group), off)
            })
            .collect();
        write_row(
            &mut out,
            "images per group",
            &format!("{whole_ipg:.2}"),
            ipg,
        );
        let percent = |v: f64| format!("{:.1}%", v * 100.0);
        for row in &self.shares {
            let cells = self
                .partitions
                .keys()
                .map(|p| {
                    let share = row.partitions[p];
                    (percent(share), (share - row.whole).abs() > row.margins[p])
                })
                .collect();
            let name = format!("{} {}", row.column, row.value);
            write_row(&mut out, &name, &percent(row.whole), cells);
        }
        let _ = writeln!(
            out,
            "(shares of images; * beyond the margin: {})",
            self.margin
        );
        out
    }
}

/// One line of the composition table: a name, the whole's value and each partition's, a `*`
/// after those beyond their margin.
fn write_row(out: &mut String, name: &str, whole: &str, cells: Vec<(String, bool)>) {
    let name: String = name.chars().take(28).collect();
    let _ = write!(out, "{name:<28} {whole:>9} ");
    for (text, flagged) in cells {
        let _ = write!(out, " {text:>9}{}", if flagged { '*' } else { ' ' });
    }
    let trimmed = out.trim_end_matches(' ').len();
    out.truncate(trimmed);
    out.push('\n');
}

/// Every group's size, for images per group and its standard error.
struct GroupSizes<'a> {
    index: &'a DatasetIndex,
    /// Images per group over the whole dataset.
    sizes: BTreeMap<&'a str, usize>,
}

impl<'a> GroupSizes<'a> {
    fn of(index: &'a DatasetIndex, all: &[usize]) -> Self {
        let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in all {
            *sizes.entry(index.samples[i].group.as_str()).or_default() += 1;
        }
        Self { index, sizes }
    }

    /// Images, groups and images per group of `members`; its margin against `whole`.
    fn part_size(
        &self,
        members: &[usize],
        whole: Option<&PartSize>,
        config: &CompositionConfig,
    ) -> PartSize {
        let groups: BTreeSet<&str> = members
            .iter()
            .map(|&i| self.index.samples[i].group.as_str())
            .collect();
        let images_per_group = members.len() as f64 / groups.len().max(1) as f64;
        let margin = whole.map_or(0.0, |w| {
            let mean = w.images_per_group;
            let variance = self
                .sizes
                .values()
                .map(|&n| (n as f64 - mean).powi(2))
                .sum::<f64>()
                / self.sizes.len().max(1) as f64;
            let se = (variance / groups.len().max(1) as f64).sqrt()
                * finite_population(groups.len(), w.groups);
            (config.standard_errors * se).max(config.min_size_margin * mean)
        });
        PartSize {
            images: members.len(),
            groups: groups.len(),
            images_per_group,
            margin,
        }
    }
}

/// The finite-population correction of a standard error for `n` of `total` units.
fn finite_population(n: usize, total: usize) -> f64 {
    if total <= 1 {
        return 0.0;
    }
    ((total.saturating_sub(n)) as f64 / (total - 1) as f64).sqrt()
}

/// The label shares: each class (multi-label: each finding, and "no finding").
fn label_values(index: &DatasetIndex) -> ValueOf<'_> {
    let mut values = index.class_names.clone();
    let none = values.len();
    if index.task == Task::MultiLabel {
        values.push("(no finding)".into());
    }
    ValueOf {
        column: "label".into(),
        values,
        of_image: Box::new(move |i| {
            let present = index.samples[i].target.present();
            if present.is_empty() {
                vec![none]
            } else {
                present
            }
        }),
    }
}

/// The shares of images in groups of 1, 2, 3–4, 5–8, … images.
fn group_size_values<'a>(index: &'a DatasetIndex, sizes: &GroupSizes<'a>) -> ValueOf<'a> {
    let bucket_of: Vec<usize> = index
        .samples
        .iter()
        .map(|s| size_bucket(sizes.sizes[s.group.as_str()]) as usize)
        .collect();
    let buckets = bucket_of.iter().max().map_or(0, |b| b + 1);
    ValueOf {
        column: "group size".into(),
        values: (0..buckets as u32).map(size_bucket_name).collect(),
        of_image: Box::new(move |i| vec![bucket_of[i]]),
    }
}

/// A metadata column's value shares; `X_bucket` (for a column `X` the data lacks under that
/// name) and numeric columns with more than [`MAX_DISTINCT_NUMBERS`] values are bucketed.
fn column_values<'a>(index: &'a DatasetIndex, requested: &str) -> Result<ValueOf<'a>> {
    let has = |c: &str| index.samples.iter().any(|s| s.attributes.contains_key(c));
    let (column, force_buckets) = if has(requested) {
        (requested.to_string(), false)
    } else {
        match requested.strip_suffix("_bucket").filter(|base| has(base)) {
            Some(base) => (base.to_string(), true),
            None => return Err(unknown_column(index, requested)),
        }
    };
    let cell = |i: usize| -> &str {
        index.samples[i]
            .attributes
            .get(&column)
            .map_or("", |v| v.trim())
    };
    let cells: Vec<&str> = (0..index.samples.len()).map(cell).collect();
    let buckets = NumericBuckets::fit(&cells, force_buckets);
    // (sort key, value) per image: numeric buckets by their lower bound, other values after
    // them by name.
    let keyed: Vec<(f64, String)> = cells
        .iter()
        .map(|c| match buckets.as_ref().and_then(|b| b.bucket(c)) {
            Some(bucket) => bucket,
            None => (f64::INFINITY, display_value(c)),
        })
        .collect();
    let mut sorted: Vec<&(f64, String)> = keyed.iter().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut values: Vec<String> = sorted.into_iter().map(|(_, v)| v.clone()).collect();
    values.dedup();
    let position: BTreeMap<&str, usize> = values
        .iter()
        .enumerate()
        .map(|(k, v)| (v.as_str(), k))
        .collect();
    let of: Vec<usize> = keyed.iter().map(|(_, v)| position[v.as_str()]).collect();
    Ok(ValueOf {
        column: requested.to_string(),
        values,
        of_image: Box::new(move |i| vec![of[i]]),
    })
}

fn display_value(cell: &str) -> String {
    if cell.is_empty() {
        "(blank)".into()
    } else {
        cell.to_string()
    }
}

fn unknown_column(index: &DatasetIndex, column: &str) -> Error {
    let known: BTreeSet<&String> = index
        .samples
        .iter()
        .flat_map(|s| s.attributes.keys())
        .collect();
    Error::Data {
        path: index.root().to_path_buf(),
        reason: format!(
            "no column {column:?} to compare (columns: {}; NAME_bucket buckets a numeric \
             column NAME)",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.into_iter().cloned().collect::<Vec<_>>().join(", ")
            }
        ),
    }
}

/// A numeric column with more distinct values than this is bucketed.
const MAX_DISTINCT_NUMBERS: usize = 12;

/// Equal-width buckets of a "nice" width (1, 2 or 5 × 10^k) giving at most ten buckets.
#[derive(Debug, Clone, PartialEq)]
struct NumericBuckets {
    origin: f64,
    width: f64,
    integers: bool,
}

impl NumericBuckets {
    /// Buckets for a column whose every non-blank cell is a number, when it has more than
    /// [`MAX_DISTINCT_NUMBERS`] distinct values or `force`; `None` otherwise.
    fn fit(cells: &[&str], force: bool) -> Option<Self> {
        let numbers: Vec<f64> = cells
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<Vec<f64>>>()?;
        let distinct: BTreeSet<u64> = numbers.iter().map(|v| v.to_bits()).collect();
        if numbers.is_empty() || !(force || distinct.len() > MAX_DISTINCT_NUMBERS) {
            return None;
        }
        let lo = numbers.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let width = nice_width((hi - lo) / 10.0);
        Some(Self {
            origin: (lo / width).floor() * width,
            width,
            integers: width >= 1.0 && numbers.iter().all(|v| v.fract() == 0.0),
        })
    }

    /// A number's bucket: its lower bound and its name (`40-49`, or `[0.5, 1)`); `None` for
    /// a blank cell.
    fn bucket(&self, cell: &str) -> Option<(f64, String)> {
        let v: f64 = cell.parse().ok()?;
        let lo = self.origin + ((v - self.origin) / self.width).floor() * self.width;
        let name = if self.integers {
            let (first, last) = (lo as i64, (lo + self.width) as i64 - 1);
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        } else {
            let decimals = (-self.width.log10().floor()).max(0.0) as usize;
            format!("[{lo:.decimals$}, {:.decimals$})", lo + self.width)
        };
        Some((lo, name))
    }
}

/// The smallest of 1, 2, 5 × 10^k at least `raw` (and 1 for a column of one value).
fn nice_width(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 1.0;
    }
    let power = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|w| *w >= raw * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// The share rows of one quantity: each value's share of the whole's and each partition's
/// images, with margins from the partition's group count.
fn share_rows(
    quantity: &ValueOf<'_>,
    all: &[usize],
    parts: &BTreeMap<Partition, Vec<usize>>,
    whole: &PartSize,
    sizes: &BTreeMap<Partition, PartSize>,
    config: &CompositionConfig,
) -> Vec<ShareRow> {
    let shares_of = |members: &[usize]| {
        let mut counts = vec![0usize; quantity.values.len()];
        for &i in members {
            for v in (quantity.of_image)(i) {
                counts[v] += 1;
            }
        }
        let n = members.len().max(1) as f64;
        counts
            .into_iter()
            .map(|c| c as f64 / n)
            .collect::<Vec<f64>>()
    };
    let whole_shares = shares_of(all);
    let part_shares: BTreeMap<Partition, Vec<f64>> =
        parts.iter().map(|(p, m)| (*p, shares_of(m))).collect();
    quantity
        .values
        .iter()
        .enumerate()
        .map(|(v, value)| {
            let s = whole_shares[v];
            let margins = sizes
                .iter()
                .map(|(p, size)| {
                    let se = (s * (1.0 - s) / size.groups.max(1) as f64).sqrt()
                        * finite_population(size.groups, whole.groups);
                    (
                        *p,
                        (config.standard_errors * se).max(config.min_share_margin),
                    )
                })
                .collect();
            ShareRow {
                column: quantity.column.clone(),
                value: value.clone(),
                whole: s,
                partitions: part_shares.iter().map(|(p, sh)| (*p, sh[v])).collect(),
                margins,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_widths_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_width(8.5), 10.0);
        assert_eq!(nice_width(1.2), 2.0);
        assert_eq!(nice_width(0.04), 0.05);
        assert_eq!(nice_width(30.0), 50.0);
        assert_eq!(nice_width(0.0), 1.0);
    }

    #[test]
    fn numeric_columns_with_many_values_are_bucketed_and_blanks_kept() {
        let ages: Vec<String> = (0..18).map(|k| format!("{}.0", 5 * k)).collect();
        let mut cells: Vec<&str> = ages.iter().map(String::as_str).collect();
        cells.push("");
        let buckets = NumericBuckets::fit(&cells, false).unwrap();
        assert_eq!(buckets.bucket("45.0"), Some((40.0, "40-49".to_string())));
        assert_eq!(buckets.bucket("85.0"), Some((80.0, "80-89".to_string())));
        assert_eq!(buckets.bucket(""), None);
        // Few values stay categories unless bucketing is asked for; text never is numeric.
        assert_eq!(NumericBuckets::fit(&["0", "1", "1"], false), None);
        assert!(NumericBuckets::fit(&["0", "1", "1"], true).is_some());
        assert_eq!(NumericBuckets::fit(&["male", "1"], true), None);
        let fractions = NumericBuckets::fit(&["0.1", "0.25", "0.9"], true).unwrap();
        assert_eq!(fractions.bucket("0.25").unwrap().1, "[0.2, 0.3)");
    }

    #[test]
    fn the_finite_population_correction_vanishes_for_the_whole() {
        assert_eq!(finite_population(10, 10), 0.0);
        assert!((finite_population(1, 101) - 1.0).abs() < 1e-12);
        assert_eq!(finite_population(0, 1), 0.0);
    }

    #[test]
    fn margins_must_be_positive() {
        assert!(CompositionConfig::default().validate().is_ok());
        let bad = CompositionConfig {
            standard_errors: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("positive"));
    }
}
