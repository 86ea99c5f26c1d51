//! The evaluation of a multi-class (softmax) run: metrics with group-bootstrap intervals,
//! calibration before and after temperature scaling, per-class operating points, ROC curves —
//! the report written as `eval-<partition>.json` and its table. Never on multi-label data.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::calibration::{self, fit_temperature, operating_point, OperatingPoint};
use super::{eval_file_name, Scorer};
use crate::config::EvalSettings;
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
    /// Which partition.
    pub partition: Partition,
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
            "top-1 {:.3}{}  top-3 {:.3}  balanced {:.3}{}  on {} {:?} images\n",
            m.accuracy,
            ci(intervals.and_then(|i| i.accuracy)),
            m.top3_accuracy,
            m.balanced_accuracy,
            ci(intervals.and_then(|i| i.balanced_accuracy)),
            m.n,
            self.partition
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

/// A partition as scored: each image's group and class, and the model's logits.
type ScoredPartition = (Vec<String>, Vec<usize>, Vec<Vec<f32>>);

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
    let load = |partition| -> Result<ScoredPartition> {
        let (images, logits) = scorer.logits(partition)?;
        let labels = images.class_labels().ok_or_else(|| Error::Data {
            path: index.root().to_path_buf(),
            reason: "multi-label data cannot be evaluated with a softmax classifier".into(),
        })?;
        Ok((images.groups, labels, logits))
    };
    let (groups, labels, logits) = load(partition)?;
    let (val_labels, val_logits) = if partition == Partition::Val {
        (labels.clone(), logits.clone())
    } else {
        let (_, l, z) = load(Partition::Val)?;
        (l, z)
    };
    let classes = config.class_names.len();
    let probabilities = softmax_at(&logits, 1.0);
    let scored = Scored {
        probabilities: &probabilities,
        labels: &labels,
        classes,
    };
    let intervals =
        (settings.bootstrap > 0).then(|| scored.intervals(&groups, settings, &index.grouped_by));
    let temperature = fit_temperature(&val_logits, &val_labels);
    let calibrated = softmax_at(&logits, temperature);
    let val_calibrated = softmax_at(&val_logits, temperature);
    let report = EvalReport {
        run: run.to_path_buf(),
        partition,
        class_names: config.class_names.clone(),
        metrics: ClassificationMetrics::compute(&probabilities, &labels, classes),
        intervals,
        calibration: Some(scored.calibration(&calibrated, temperature, settings)),
        target_sensitivity: Some(settings.target_sensitivity),
        operating_points: config
            .class_names
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let (val_scores, val_positive) = one_vs_rest(&val_calibrated, &val_labels, c);
                let (scores, positive) = one_vs_rest(&calibrated, &labels, c);
                operating_point(
                    name,
                    (&val_scores, &val_positive),
                    (&scores, &positive),
                    settings.target_sensitivity,
                )
            })
            .collect(),
        in_sample: partition == Partition::Val,
        roc: (0..classes)
            .map(|c| {
                let (scores, positive) = one_vs_rest(&probabilities, &labels, c);
                roc_curve(&scores, &positive, 200)
            })
            .collect(),
        population: settings.population.clone(),
        trained_on: config.train_where.clone(),
    };
    save_json(&run.join(eval_file_name(partition, settings)), &report)?;
    Ok(report)
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

/// The evaluated images' probabilities (raw softmax) and labels.
struct Scored<'a> {
    probabilities: &'a [Vec<f32>],
    labels: &'a [usize],
    classes: usize,
}

impl Scored<'_> {
    /// Top-1 accuracy, balanced accuracy and macro AUC with 95 % intervals, resampling whole
    /// groups (`groups`: each image's lesion / patient, named by `resampled_by`).
    fn intervals(
        &self,
        groups: &[String],
        settings: &EvalSettings,
        resampled_by: &str,
    ) -> Intervals {
        let (probabilities, labels, classes) = (self.probabilities, self.labels, self.classes);
        let members = group_members(groups);
        let predicted = predictions(probabilities);
        let accuracy = |idx: &[usize]| {
            Some(
                idx.iter().filter(|&&i| predicted[i] == labels[i]).count() as f64
                    / idx.len().max(1) as f64,
            )
        };
        let balanced = |idx: &[usize]| {
            let p: Vec<usize> = idx.iter().map(|&i| predicted[i]).collect();
            let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            Some(balanced_accuracy(&p, &y, classes))
        };
        let macro_auc = |idx: &[usize]| {
            let aucs: Vec<f64> = (0..classes)
                .filter_map(|c| {
                    let scores: Vec<f32> = idx.iter().map(|&i| probabilities[i][c]).collect();
                    let positive: Vec<bool> = idx.iter().map(|&i| labels[i] == c).collect();
                    roc_auc(&scores, &positive)
                })
                .collect();
            (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
        };
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
        let (reliability_before, ece_before) = reliability(self.probabilities, self.labels, bins);
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
