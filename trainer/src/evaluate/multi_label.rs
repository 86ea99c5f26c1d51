//! The evaluation of a multi-label (one sigmoid per finding) run: per-finding AUCs over the
//! labels that count (uncertain ones masked), their mean over findings with enough positives and
//! its group-bootstrap interval, per-finding operating points and ROC curves — the report
//! written as `eval-<partition>.json` and its table. Never on multi-class data.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::calibration::{operating_point, OperatingPoint};
use super::{eval_file_name, Scorer};
use crate::config::EvalSettings;
use crate::data::{open_split, Partition, SampleFilter};
use crate::metrics::{
    group_bootstrap, group_members, roc_auc, roc_curve, sigmoid_rows, Interval, Labels,
    MultiLabelMetrics, MIN_POSITIVES_FOR_MEAN_AUC,
};
use crate::run_dir::load_finetuned;
use crate::runlog::save_json;
use crate::Result;

/// The evaluation of a multi-label run on one partition (`eval-<partition>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultiLabelReport {
    /// The run directory.
    pub run: PathBuf,
    /// Which partition.
    pub partition: Partition,
    /// Per-finding AUC and the mean over findings with enough positives.
    pub metrics: MultiLabelMetrics,
    /// 95 % bootstrap interval of the mean AUC (same findings), resampled by group.
    pub mean_auc_interval: Option<Interval>,
    /// What was resampled.
    pub resampled_by: String,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Target sensitivity of the operating points.
    pub target_sensitivity: f64,
    /// One threshold per finding on its sigmoid probability, chosen on val.
    pub operating_points: Vec<OperatingPoint>,
    /// Thresholds were chosen on this same partition.
    pub in_sample: bool,
    /// ROC curve per finding over its counted labels (for plots).
    #[serde(default)]
    pub roc: Vec<Vec<(f64, f64)>>,
    /// The sub-population evaluated (`None`: the whole partition).
    #[serde(default)]
    pub population: Option<SampleFilter>,
    /// The sub-population the run was fine-tuned on (`None`: all).
    #[serde(default)]
    pub trained_on: Option<SampleFilter>,
}

impl MultiLabelReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let m = &self.metrics;
        let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:6.3}"));
        let mut s = format!(
            "{:<20} {:>5} {:>6} {:>9} {:>6} {:>6}\n",
            "finding", "pos", "AUC", "threshold", "sens", "spec"
        );
        for (f, name) in m.findings.iter().enumerate() {
            let op = self.operating_points.get(f);
            s += &format!(
                "{:<20} {:>5} {} {:>9} {} {}\n",
                name,
                m.positives[f],
                fmt(m.per_finding_auc[f]),
                op.and_then(|o| o.threshold)
                    .map_or("n/a".to_string(), |t| format!("{t:.4}")),
                fmt(op.and_then(|o| o.sensitivity)),
                fmt(op.and_then(|o| o.specificity)),
            );
        }
        s += &format!(
            "mean AUC {}{} over the {} findings with ≥ {} positives ({}) on {} {:?} images\n",
            fmt(m.mean_auc),
            self.mean_auc_interval
                .map_or(String::new(), |i| format!(" [{:.3}, {:.3}]", i.low, i.high)),
            m.mean_over.len(),
            m.min_positives,
            m.mean_over.join(", "),
            m.n,
            self.partition
        );
        s += &format!(
            "95 % interval: {} bootstrap resamples by {}; thresholds for sensitivity {:.2} on val{}\n",
            self.resamples,
            self.resampled_by,
            self.target_sensitivity,
            if self.in_sample { " (in-sample)" } else { "" }
        );
        s
    }
}

/// One partition's findings as scored: `N×K` targets and mask (0: uncertain, not counted) and
/// each image's `K` probabilities.
struct Findings {
    /// Findings per image (`K`).
    k: usize,
    groups: Vec<String>,
    targets: Vec<f32>,
    mask: Vec<f32>,
    probabilities: Vec<Vec<f32>>,
}

impl Findings {
    /// Finding `f`'s probabilities and labels over the images where its label counts.
    fn column(&self, f: usize) -> (Vec<f32>, Vec<bool>) {
        let k = self.k;
        let (mut scores, mut positive) = (Vec::new(), Vec::new());
        for (i, row) in self.probabilities.iter().enumerate() {
            if self.mask[i * k + f] > 0.0 {
                scores.push(row[f]);
                positive.push(self.targets[i * k + f] > 0.5);
            }
        }
        (scores, positive)
    }

    /// 95 % interval of the mean AUC over the findings `included`, resampling whole groups.
    fn mean_auc_interval(&self, included: &[usize], settings: &EvalSettings) -> Option<Interval> {
        let k = self.k;
        let members = group_members(&self.groups);
        group_bootstrap(&members, settings.bootstrap, settings.seed, |idx| {
            let aucs: Vec<f64> = included
                .iter()
                .filter_map(|&f| {
                    let (mut scores, mut positive) = (Vec::new(), Vec::new());
                    for &i in idx {
                        if self.mask[i * k + f] > 0.0 {
                            scores.push(self.probabilities[i][f]);
                            positive.push(self.targets[i * k + f] > 0.5);
                        }
                    }
                    roc_auc(&scores, &positive)
                })
                .collect();
            (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
        })
    }
}

/// Evaluates a multi-label run on a partition and writes `eval-<partition>.json`.
pub fn evaluate_multi_label<B: Backend>(
    run: &Path,
    partition: Partition,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<MultiLabelReport> {
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
    let load = |partition| -> Result<Findings> {
        let (images, logits) = scorer.logits(partition)?;
        let Labels::Findings { targets, mask } = Labels::of(&images, index.uncertainty) else {
            unreachable!("multi-label index")
        };
        Ok(Findings {
            k: config.class_names.len(),
            groups: images.groups,
            targets,
            mask,
            probabilities: sigmoid_rows(&logits),
        })
    };
    let evaluated = load(partition)?;
    let val = if partition == Partition::Val {
        None
    } else {
        Some(load(Partition::Val)?)
    };
    let val = val.as_ref().unwrap_or(&evaluated);
    let names = &config.class_names;
    let k = names.len();
    let point = MultiLabelMetrics::compute(
        &evaluated.probabilities,
        &evaluated.targets,
        &evaluated.mask,
        names,
        MIN_POSITIVES_FOR_MEAN_AUC,
    );
    let included: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| point.mean_over.contains(n))
        .map(|(f, _)| f)
        .collect();
    let mean_auc_interval = (settings.bootstrap > 0)
        .then(|| evaluated.mean_auc_interval(&included, settings))
        .flatten();
    let report = MultiLabelReport {
        run: run.to_path_buf(),
        partition,
        metrics: point,
        mean_auc_interval,
        resampled_by: index.grouped_by.clone(),
        resamples: settings.bootstrap,
        target_sensitivity: settings.target_sensitivity,
        operating_points: names
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let (val_scores, val_positive) = val.column(f);
                let (scores, positive) = evaluated.column(f);
                operating_point(
                    name,
                    (&val_scores, &val_positive),
                    (&scores, &positive),
                    settings.target_sensitivity,
                )
            })
            .collect(),
        in_sample: partition == Partition::Val,
        roc: (0..k)
            .map(|f| {
                let (scores, positive) = evaluated.column(f);
                roc_curve(&scores, &positive, 200)
            })
            .collect(),
        population: settings.population.clone(),
        trained_on: config.train_where.clone(),
    };
    save_json(&run.join(eval_file_name(partition, settings)), &report)?;
    Ok(report)
}
