//! The evaluation of a multi-class (softmax) run: metrics with group-bootstrap intervals,
//! calibration before and after temperature scaling, per-class operating points, ROC curves —
//! the report written as `eval-<partition>.json` and its table. Never on multi-label data.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::calibration::{self, fit_temperature, operating_point, OperatingPoint};
use super::{eval_file_name, Scorer};
use crate::config::{EvalSettings, FinetuneConfig};
use crate::data::{open_split, Partition, SampleFilter};
use crate::metrics::{
    balanced_accuracy, group_bootstrap, group_members, predictions, reliability, roc_auc,
    roc_curve, ClassificationMetrics, Interval, ReliabilityBin,
};
use crate::run_dir::load_finetuned;
use crate::runlog::save_json;
use crate::{Error, Result};

/// 95 % percentile bootstrap intervals, resampling whole groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// What was resampled (`lesion_id`, `patient_id`, ...).
    pub resampled_by: String,
    /// Groups in the evaluated partition.
    pub groups: usize,
    /// Resamples drawn.
    pub resamples: usize,
    /// Top-1 accuracy.
    pub accuracy: Option<Interval>,
    /// Balanced accuracy.
    pub balanced_accuracy: Option<Interval>,
    /// Macro one-vs-rest AUC.
    pub macro_auc: Option<Interval>,
}

/// Calibration on the evaluated partition before and after temperature scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// Temperature fitted on the validation partition's logits.
    pub temperature: f64,
    /// Expected calibration error with the raw softmax.
    pub ece_before: f64,
    /// With the fitted temperature.
    pub ece_after: f64,
    /// Reliability diagram, raw softmax.
    pub reliability_before: Vec<ReliabilityBin>,
    /// Reliability diagram, temperature-scaled.
    pub reliability_after: Vec<ReliabilityBin>,
}

/// The evaluation of a run on one partition, as written to `eval-<partition>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The run directory.
    pub run: PathBuf,
    /// Which partition (`test` for another dataset).
    pub partition: Partition,
    /// Another dataset scored instead of a partition of the run's split (`evaluate --data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Class names.
    pub class_names: Vec<String>,
    /// The metrics (of the raw softmax; temperature scaling changes neither ranks nor argmax).
    pub metrics: ClassificationMetrics,
    /// Their confidence intervals.
    #[serde(default)]
    pub intervals: Option<Intervals>,
    /// Calibration.
    #[serde(default)]
    pub calibration: Option<CalibrationReport>,
    /// Target sensitivity of the operating points.
    #[serde(default)]
    pub target_sensitivity: Option<f64>,
    /// One operating point per class (one-vs-rest on the calibrated probability).
    #[serde(default)]
    pub operating_points: Vec<OperatingPoint>,
    /// The thresholds and temperature were fitted on this same partition (validation).
    #[serde(default)]
    pub in_sample: bool,
    /// One-vs-rest ROC curve per class (for plots).
    #[serde(default)]
    pub roc: Vec<Vec<(f64, f64)>>,
    /// The sub-population evaluated (`None`: the whole partition).
    #[serde(default)]
    pub population: Option<SampleFilter>,
    /// The sub-population the run was fine-tuned on (`None`: all).
    #[serde(default)]
    pub trained_on: Option<SampleFilter>,
}

impl EvalReport {
    /// A plain-text table of the metrics.
    pub fn table(&self) -> String {
        let m = &self.metrics;
        let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:6.3}"));
        let ci = |i: Option<Interval>| {
            i.map_or(String::new(), |i| format!(" [{:.3}, {:.3}]", i.low, i.high))
        };
        let intervals = self.intervals.as_ref();
        let mut s = format!(
            "{:<10} {:>6} {:>6} {:>9} {:>6} {:>6}\n",
            "class", "n", "AUC", "threshold", "sens", "spec"
        );
        for (c, name) in self.class_names.iter().enumerate() {
            let op = self.operating_points.get(c);
            s += &format!(
                "{:<10} {:>6} {} {:>9} {} {}\n",
                name,
                m.class_counts[c],
                fmt(m.per_class_auc[c]),
                op.and_then(|o| o.threshold)
                    .map_or("n/a".to_string(), |t| format!("{t:.4}")),
                fmt(op.and_then(|o| o.sensitivity)),
                fmt(op.and_then(|o| o.specificity)),
            );
        }
        s += &format!(
            "{:<10} {:>6} {}{}  (macro one-vs-rest AUC)\n",
            "all",
            m.n,
            fmt(m.macro_auc),
            ci(intervals.and_then(|i| i.macro_auc))
        );
        s += &format!(
            "top-1 {:.3}{}  top-3 {:.3}  balanced {:.3}{}  on {} {}\n",
            m.accuracy,
            ci(intervals.and_then(|i| i.accuracy)),
            m.top3_accuracy,
            m.balanced_accuracy,
            ci(intervals.and_then(|i| i.balanced_accuracy)),
            m.n,
            self.data.as_ref().map_or_else(
                || format!("{:?} images", self.partition),
                |d| format!("images of {}", d.display())
            )
        );
        if let Some(i) = intervals {
            s += &format!(
                "95 % intervals: {} bootstrap resamples of {} {} groups\n",
                i.resamples, i.groups, i.resampled_by
            );
        }
        if let Some(c) = &self.calibration {
            s += &format!(
                "calibration: ECE {:.3} -> {:.3} with temperature {:.3} fitted on val\n",
                c.ece_before, c.ece_after, c.temperature
            );
        }
        if let Some(t) = self.target_sensitivity {
            s += &format!(
                "thresholds: per class, the highest reaching sensitivity {t:.2} on val{}\n",
                if self.in_sample {
                    " (in-sample: this is val)"
                } else {
                    ""
                }
            );
        }
        s
    }
}

/// Images as scored: each image's group, id and class (in the model's class order), and the
/// model's logits.
#[derive(Debug, Clone)]
pub(super) struct ScoredSet {
    /// Lesion / patient of each image.
    pub groups: Vec<String>,
    /// Sample id of each image.
    pub ids: Vec<String>,
    /// Class of each image.
    pub labels: Vec<usize>,
    /// The model's logits for each image.
    pub logits: Vec<Vec<f32>>,
}

/// A partition of the run's own split, scored.
pub(super) fn scored_set<B: Backend>(
    scorer: &Scorer<B>,
    partition: Partition,
) -> Result<ScoredSet> {
    let (images, logits) = scorer.logits(partition)?;
    let labels = images.class_labels().ok_or_else(|| Error::Data {
        path: scorer.index.root().to_path_buf(),
        reason: "multi-label data cannot be evaluated with a softmax classifier".into(),
    })?;
    Ok(ScoredSet {
        groups: images.groups,
        ids: images.ids,
        labels,
        logits,
    })
}

/// What a report describes: a partition of the run's split, or another dataset.
pub(super) struct EvaluatedSet<'a> {
    scored: &'a ScoredSet,
    partition: Partition,
    data: Option<&'a Path>,
    grouped_by: &'a str,
}

impl<'a> EvaluatedSet<'a> {
    /// A partition of the run's own split.
    pub fn partition(scored: &'a ScoredSet, partition: Partition, grouped_by: &'a str) -> Self {
        Self {
            scored,
            partition,
            data: None,
            grouped_by,
        }
    }

    /// Every image of another dataset (reported as a test set).
    pub fn other(scored: &'a ScoredSet, data: &'a Path, grouped_by: &'a str) -> Self {
        Self {
            scored,
            partition: Partition::Test,
            data: Some(data),
            grouped_by,
        }
    }
}

/// Evaluates a fine-tuned run on a partition of its split and writes the report.
pub fn evaluate_run<B: Backend>(
    run: &Path,
    partition: Partition,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<EvalReport> {
    let settings = &EvalSettings {
        partition,
        ..settings.clone()
    };
    let (config, model) = load_finetuned::<B>(run, device)?;
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let scorer = Scorer {
        index: &index,
        split: &split,
        config: &config,
        settings,
        model: &model,
        device,
    };
    let evaluated = scored_set(&scorer, partition)?;
    let val = if partition == Partition::Val {
        evaluated.clone()
    } else {
        scored_set(&scorer, Partition::Val)?
    };
    let report = build_report(
        run,
        &config,
        EvaluatedSet::partition(&evaluated, partition, &index.grouped_by),
        &val,
        settings,
    );
    save_json(&run.join(eval_file_name(partition, settings)), &report)?;
    Ok(report)
}

/// The report of a scored set: metrics with intervals, calibration with the temperature fitted
/// on `val`, operating points chosen on `val`, ROC curves.
pub(super) fn build_report(
    run: &Path,
    config: &FinetuneConfig,
    evaluated: EvaluatedSet,
    val: &ScoredSet,
    settings: &EvalSettings,
) -> EvalReport {
    let classes = config.class_names.len();
    let set = evaluated.scored;
    let scored = Scored::new(set, classes);
    let intervals = (settings.bootstrap > 0)
        .then(|| scored.intervals(&set.groups, settings, evaluated.grouped_by));
    let temperature = fit_temperature(&val.logits, &val.labels);
    let calibrated = softmax_at(&set.logits, temperature);
    let val_calibrated = softmax_at(&val.logits, temperature);
    EvalReport {
        run: run.to_path_buf(),
        partition: evaluated.partition,
        data: evaluated.data.map(Path::to_path_buf),
        class_names: config.class_names.clone(),
        metrics: ClassificationMetrics::compute(&scored.probabilities, &set.labels, classes),
        intervals,
        calibration: Some(scored.calibration(&calibrated, temperature, settings)),
        target_sensitivity: Some(settings.target_sensitivity),
        operating_points: config
            .class_names
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let (val_scores, val_positive) = one_vs_rest(&val_calibrated, &val.labels, c);
                let (scores, positive) = one_vs_rest(&calibrated, &set.labels, c);
                operating_point(
                    name,
                    (&val_scores, &val_positive),
                    (&scores, &positive),
                    settings.target_sensitivity,
                )
            })
            .collect(),
        in_sample: evaluated.data.is_none() && evaluated.partition == Partition::Val,
        roc: (0..classes)
            .map(|c| {
                let (scores, positive) = one_vs_rest(&scored.probabilities, &set.labels, c);
                roc_curve(&scores, &positive, 200)
            })
            .collect(),
        population: settings.population.clone(),
        trained_on: config.train_where.clone(),
    }
}

/// Softmax of every row of logits at a temperature.
fn softmax_at(logits: &[Vec<f32>], temperature: f64) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|z| calibration::softmax_with_temperature(z, temperature))
        .collect()
}

/// Class `c`'s column of per-image scores, and which images are of class `c`.
fn one_vs_rest(scores: &[Vec<f32>], labels: &[usize], c: usize) -> (Vec<f32>, Vec<bool>) {
    (
        scores.iter().map(|p| p[c]).collect(),
        labels.iter().map(|&y| y == c).collect(),
    )
}

/// The evaluated images' probabilities (raw softmax), predictions and labels.
pub(super) struct Scored<'a> {
    probabilities: Vec<Vec<f32>>,
    predicted: Vec<usize>,
    labels: &'a [usize],
    classes: usize,
}

impl<'a> Scored<'a> {
    /// A scored set's softmax and predictions.
    pub fn new(set: &'a ScoredSet, classes: usize) -> Self {
        let probabilities = softmax_at(&set.logits, 1.0);
        Self {
            predicted: predictions(&probabilities),
            probabilities,
            labels: &set.labels,
            classes,
        }
    }

    /// Top-1 accuracy of the images `idx` (with repeats).
    pub fn accuracy(&self, idx: &[usize]) -> Option<f64> {
        let correct = idx
            .iter()
            .filter(|&&i| self.predicted[i] == self.labels[i])
            .count();
        Some(correct as f64 / idx.len().max(1) as f64)
    }

    /// Balanced accuracy of the images `idx`.
    pub fn balanced_accuracy(&self, idx: &[usize]) -> Option<f64> {
        let p: Vec<usize> = idx.iter().map(|&i| self.predicted[i]).collect();
        let y: Vec<usize> = idx.iter().map(|&i| self.labels[i]).collect();
        Some(balanced_accuracy(&p, &y, self.classes))
    }

    /// Macro one-vs-rest AUC of the images `idx`, over the classes with positives and
    /// negatives among them.
    pub fn macro_auc(&self, idx: &[usize]) -> Option<f64> {
        let aucs: Vec<f64> = (0..self.classes)
            .filter_map(|c| {
                let scores: Vec<f32> = idx.iter().map(|&i| self.probabilities[i][c]).collect();
                let positive: Vec<bool> = idx.iter().map(|&i| self.labels[i] == c).collect();
                roc_auc(&scores, &positive)
            })
            .collect();
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    }

    /// Top-1 accuracy, balanced accuracy and macro AUC with 95 % intervals, resampling whole
    /// groups (`groups`: each image's lesion / patient, named by `resampled_by`).
    fn intervals(
        &self,
        groups: &[String],
        settings: &EvalSettings,
        resampled_by: &str,
    ) -> Intervals {
        let members = group_members(groups);
        let accuracy = |idx: &[usize]| self.accuracy(idx);
        let balanced = |idx: &[usize]| self.balanced_accuracy(idx);
        let macro_auc = |idx: &[usize]| self.macro_auc(idx);
        let (n, seed) = (settings.bootstrap, settings.seed);
        // Three metrics × `n` resamples: seconds to a minute on large test sets.
        let bar = crate::runlog::progress(3, "intervals");
        let interval = |metric: &(dyn Fn(&[usize]) -> Option<f64> + Sync)| {
            let found = group_bootstrap(&members, n, seed, metric);
            bar.inc(1);
            found
        };
        let intervals = Intervals {
            resampled_by: resampled_by.to_string(),
            groups: members.len(),
            resamples: n,
            accuracy: interval(&accuracy),
            balanced_accuracy: interval(&balanced),
            macro_auc: interval(&macro_auc),
        };
        bar.finish_and_clear();
        intervals
    }

    /// Reliability and ECE of the raw softmax and of the `calibrated` probabilities.
    fn calibration(
        &self,
        calibrated: &[Vec<f32>],
        temperature: f64,
        settings: &EvalSettings,
    ) -> CalibrationReport {
        let bins = settings.calibration_bins;
        let (reliability_before, ece_before) = reliability(&self.probabilities, self.labels, bins);
        let (reliability_after, ece_after) = reliability(calibrated, self.labels, bins);
        CalibrationReport {
            temperature,
            ece_before,
            ece_after,
            reliability_before,
            reliability_after,
        }
    }
}
