//! Evaluation of a fine-tuned model on one partition: top-1/top-3 and balanced accuracy,
//! per-class and macro one-vs-rest ROC AUC and the confusion matrix, 95 % bootstrap intervals
//! resampled by lesion/patient, calibration before and after temperature scaling fitted on
//! validation, and per-class operating points for a target sensitivity chosen on validation.
//! Prints a table and writes `eval-<partition>.json` into the run. Also the kNN probe of
//! pretrained features.

pub mod calibration;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::config::{EvalSettings, FinetuneConfig};
use crate::data::{load_images_with, open_split, report_skipped, ImageSet, Partition};
use crate::metrics::{
    balanced_accuracy, embed, group_bootstrap, group_members, knn_scores, predict_logits,
    predictions, roc_auc, roc_curve, sigmoid_rows, ClassificationMetrics, Interval, Labels,
    MultiLabelMetrics, ReliabilityBin, MIN_POSITIVES_FOR_MEAN_AUC,
};
use crate::run_dir::{
    load_finetune_config, load_finetuned, load_pretrain_config, load_pretrained_backbone,
    CONFIG_FILE,
};
use crate::runlog::save_json;
use crate::{Error, Result};

/// kNN scores of a pretrained backbone's features (or of a random-init backbone of the same
/// architecture), with every training image as the bank.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Pretraining run.
    pub run: PathBuf,
    /// Whether the weights were the run's or a fresh random initialisation.
    pub weights: String,
    /// Images in the bank (the training partition).
    pub bank: usize,
    /// Per partition (val, test): images, 20-NN accuracy and balanced accuracy.
    pub partitions: Vec<(Partition, usize, f64, f64)>,
}

/// Measures a pretraining run's backbone (or, with `random_init`, a fresh one seeded like the
/// run) by weighted 20-NN on the validation and test partitions against all training images.
pub fn probe_pretrained<B: Backend>(
    run: &Path,
    random_init: bool,
    device: &B::Device,
) -> Result<ProbeReport> {
    let config = load_pretrain_config(run)?;
    let preprocess = config.preprocess.clone().ok_or_else(|| Error::Config {
        path: run.join(CONFIG_FILE),
        reason: "no resolved preprocessing: not a completed pretraining run".into(),
    })?;
    B::seed(device, config.seed);
    let backbone = load_pretrained_backbone::<B>(run, &config, random_init, device)?;
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let labelled = |partition| -> Result<(ImageSet, Vec<usize>)> {
        let images = load_images_with(
            &index,
            &split.indices(&index, partition),
            &preprocess,
            config.skip_bad,
        )?;
        let labels = images.class_labels().ok_or_else(|| Error::Data {
            path: index.root().to_path_buf(),
            reason: "kNN probing needs multi-class labels".into(),
        })?;
        Ok((images, labels))
    };
    let (train, train_labels) = labelled(Partition::Train)?;
    let bank = embed(
        &backbone,
        &train.pixels,
        train.sample_len,
        &preprocess,
        device,
    );
    let mut partitions = Vec::new();
    for partition in [Partition::Val, Partition::Test] {
        let (images, labels) = labelled(partition)?;
        let queries = embed(
            &backbone,
            &images.pixels,
            images.sample_len,
            &preprocess,
            device,
        );
        let (accuracy, balanced) = knn_scores(&bank, &train_labels, &queries, &labels, 20, 0.07);
        partitions.push((partition, images.len(), accuracy, balanced));
    }
    Ok(ProbeReport {
        run: run.to_path_buf(),
        weights: if random_init {
            "random init (seeded like the run)"
        } else {
            "pretrained"
        }
        .into(),
        bank: train.len(),
        partitions,
    })
}

/// The images an evaluation scores: the evaluated partition restricted to the requested
/// sub-population; validation (temperature, thresholds) restricted as the run was trained.
fn population(
    index: &crate::data::DatasetIndex,
    split: &crate::data::SplitFile,
    partition: Partition,
    config: &FinetuneConfig,
    settings: &EvalSettings,
) -> Result<Vec<usize>> {
    let all = split.indices(index, partition);
    let filter = if partition == settings.partition {
        settings.population.as_ref()
    } else {
        config.train_where.as_ref()
    };
    let chosen = match filter {
        Some(f) => f.apply(index, &all)?,
        None => all,
    };
    if chosen.is_empty() {
        return Err(Error::Data {
            path: index.root().to_path_buf(),
            reason: format!("no {partition:?} images in the requested sub-population"),
        });
    }
    Ok(chosen)
}

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
    pub operating_points: Vec<calibration::OperatingPoint>,
    /// The thresholds and temperature were fitted on this same partition (validation).
    #[serde(default)]
    pub in_sample: bool,
    /// One-vs-rest ROC curve per class (for plots).
    #[serde(default)]
    pub roc: Vec<Vec<(f64, f64)>>,
    /// The sub-population evaluated (`None`: the whole partition).
    #[serde(default)]
    pub population: Option<crate::data::SampleFilter>,
    /// The sub-population the run was fine-tuned on (`None`: all).
    #[serde(default)]
    pub trained_on: Option<crate::data::SampleFilter>,
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
    let preprocess = config
        .preprocess
        .clone()
        .expect("checked by load_finetuned");
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let load = |partition| -> Result<(ImageSet, Vec<usize>, Vec<Vec<f32>>)> {
        let images = load_images_with(
            &index,
            &population(&index, &split, partition, &config, settings)?,
            &preprocess,
            config.skip_bad,
        )?;
        report_skipped(&images);
        let labels = images.class_labels().ok_or_else(|| Error::Data {
            path: index.root().to_path_buf(),
            reason: "multi-label data cannot be evaluated with a softmax classifier".into(),
        })?;
        let logits = predict_logits(&model, &images, &preprocess, device);
        Ok((images, labels, logits))
    };
    let (images, labels, logits) = load(partition)?;
    let (val_labels, val_logits) = if partition == Partition::Val {
        (labels.clone(), logits.clone())
    } else {
        let (_, l, z) = load(Partition::Val)?;
        (l, z)
    };
    let classes = config.class_names.len();
    let softmax_at = |z: &[Vec<f32>], t: f64| -> Vec<Vec<f32>> {
        z.iter()
            .map(|z| calibration::softmax_with_temperature(z, t))
            .collect()
    };
    let probabilities = softmax_at(&logits, 1.0);
    let metrics = ClassificationMetrics::compute(&probabilities, &labels, classes);

    let intervals = (settings.bootstrap > 0).then(|| {
        let members = group_members(&images.groups);
        let predicted = predictions(&probabilities);
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
        Intervals {
            resampled_by: index.grouped_by.clone(),
            groups: members.len(),
            resamples: n,
            accuracy: group_bootstrap(&members, n, seed, accuracy),
            balanced_accuracy: group_bootstrap(&members, n, seed, balanced),
            macro_auc: group_bootstrap(&members, n, seed, macro_auc),
        }
    });

    let temperature = calibration::fit_temperature(&val_logits, &val_labels);
    let calibrated = softmax_at(&logits, temperature);
    let (reliability_before, ece_before) =
        crate::metrics::reliability(&probabilities, &labels, settings.calibration_bins);
    let (reliability_after, ece_after) =
        crate::metrics::reliability(&calibrated, &labels, settings.calibration_bins);
    let val_calibrated = softmax_at(&val_logits, temperature);
    let operating_points = config
        .class_names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let column = |p: &[Vec<f32>]| p.iter().map(|p| p[c]).collect::<Vec<f32>>();
            let is_class = |y: &[usize]| y.iter().map(|&y| y == c).collect::<Vec<bool>>();
            let (val_scores, val_positive) = (column(&val_calibrated), is_class(&val_labels));
            let threshold = calibration::threshold_for_sensitivity(
                &val_scores,
                &val_positive,
                settings.target_sensitivity,
            );
            let at = |scores: &[f32], positive: &[bool]| {
                threshold.map_or((None, None), |t| {
                    calibration::sensitivity_specificity(scores, positive, t)
                })
            };
            let (val_sensitivity, val_specificity) = at(&val_scores, &val_positive);
            let (sensitivity, specificity) = at(&column(&calibrated), &is_class(&labels));
            calibration::OperatingPoint {
                class: name.clone(),
                threshold,
                val_sensitivity,
                val_specificity,
                sensitivity,
                specificity,
            }
        })
        .collect();
    let report = EvalReport {
        run: run.to_path_buf(),
        partition,
        class_names: config.class_names.clone(),
        metrics,
        intervals,
        calibration: Some(CalibrationReport {
            temperature,
            ece_before,
            ece_after,
            reliability_before,
            reliability_after,
        }),
        target_sensitivity: Some(settings.target_sensitivity),
        operating_points,
        in_sample: partition == Partition::Val,
        roc: (0..classes)
            .map(|c| {
                let scores: Vec<f32> = probabilities.iter().map(|p| p[c]).collect();
                let positive: Vec<bool> = labels.iter().map(|&y| y == c).collect();
                roc_curve(&scores, &positive, 200)
            })
            .collect(),
        population: settings.population.clone(),
        trained_on: config.train_where.clone(),
    };
    save_json(&run.join(eval_file_name(partition, settings)), &report)?;
    Ok(report)
}

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
    pub operating_points: Vec<calibration::OperatingPoint>,
    /// Thresholds were chosen on this same partition.
    pub in_sample: bool,
    /// ROC curve per finding over its counted labels (for plots).
    #[serde(default)]
    pub roc: Vec<Vec<(f64, f64)>>,
    /// The sub-population evaluated (`None`: the whole partition).
    #[serde(default)]
    pub population: Option<crate::data::SampleFilter>,
    /// The sub-population the run was fine-tuned on (`None`: all).
    #[serde(default)]
    pub trained_on: Option<crate::data::SampleFilter>,
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

/// Either kind of evaluation.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// Softmax classifier.
    MultiClass(EvalReport),
    /// One sigmoid per finding.
    MultiLabel(MultiLabelReport),
}

impl Evaluation {
    /// The report's table.
    pub fn table(&self) -> String {
        match self {
            Evaluation::MultiClass(r) => r.table(),
            Evaluation::MultiLabel(r) => r.table(),
        }
    }
}

/// Evaluates a run of either task on a partition and writes `eval-<partition>.json`.
pub fn evaluate<B: Backend>(
    run: &Path,
    partition: Partition,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<Evaluation> {
    let config = load_finetune_config(run)?;
    let (index, _) = open_split(&config.split, Some(&config.dataset))?;
    if index.task == crate::data::Task::MultiClass {
        return evaluate_run::<B>(run, partition, settings, device).map(Evaluation::MultiClass);
    }
    let (config, model) = load_finetuned::<B>(run, device)?;
    let preprocess = config
        .preprocess
        .clone()
        .expect("checked by load_finetuned");
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    // Images, N×K targets, N×K mask, N×K probabilities.
    type Scored = (ImageSet, Vec<f32>, Vec<f32>, Vec<Vec<f32>>);
    let load = |partition| -> Result<Scored> {
        let images = load_images_with(
            &index,
            &population(&index, &split, partition, &config, settings)?,
            &preprocess,
            config.skip_bad,
        )?;
        report_skipped(&images);
        let Labels::Findings { targets, mask } = Labels::of(&images, index.uncertainty) else {
            unreachable!("multi-label index")
        };
        let probabilities = sigmoid_rows(&predict_logits(&model, &images, &preprocess, device));
        Ok((images, targets, mask, probabilities))
    };
    let (images, targets, mask, probabilities) = load(partition)?;
    let (val_targets, val_mask, val_probabilities) = if partition == Partition::Val {
        (targets.clone(), mask.clone(), probabilities.clone())
    } else {
        let (_, t, m, p) = load(Partition::Val)?;
        (t, m, p)
    };
    let names = &config.class_names;
    let k = names.len();
    let min = MIN_POSITIVES_FOR_MEAN_AUC;
    let point = MultiLabelMetrics::compute(&probabilities, &targets, &mask, names, min);
    let included: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| point.mean_over.contains(n))
        .map(|(f, _)| f)
        .collect();
    let members = group_members(&images.groups);
    let mean_auc_interval = (settings.bootstrap > 0)
        .then(|| {
            group_bootstrap(&members, settings.bootstrap, settings.seed, |idx| {
                let aucs: Vec<f64> = included
                    .iter()
                    .filter_map(|&f| {
                        let (mut scores, mut positive) = (Vec::new(), Vec::new());
                        for &i in idx {
                            if mask[i * k + f] > 0.0 {
                                scores.push(probabilities[i][f]);
                                positive.push(targets[i * k + f] > 0.5);
                            }
                        }
                        roc_auc(&scores, &positive)
                    })
                    .collect();
                (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
            })
        })
        .flatten();
    let column = |p: &[Vec<f32>], t: &[f32], m: &[f32], f: usize| {
        let (mut scores, mut positive) = (Vec::new(), Vec::new());
        for (i, row) in p.iter().enumerate() {
            if m[i * k + f] > 0.0 {
                scores.push(row[f]);
                positive.push(t[i * k + f] > 0.5);
            }
        }
        (scores, positive)
    };
    let operating_points = names
        .iter()
        .enumerate()
        .map(|(f, name)| {
            let (val_scores, val_positive) = column(&val_probabilities, &val_targets, &val_mask, f);
            let (scores, positive) = column(&probabilities, &targets, &mask, f);
            let threshold = calibration::threshold_for_sensitivity(
                &val_scores,
                &val_positive,
                settings.target_sensitivity,
            );
            let at = |s: &[f32], p: &[bool]| {
                threshold.map_or((None, None), |t| {
                    calibration::sensitivity_specificity(s, p, t)
                })
            };
            let (val_sensitivity, val_specificity) = at(&val_scores, &val_positive);
            let (sensitivity, specificity) = at(&scores, &positive);
            calibration::OperatingPoint {
                class: name.clone(),
                threshold,
                val_sensitivity,
                val_specificity,
                sensitivity,
                specificity,
            }
        })
        .collect();
    let report = MultiLabelReport {
        run: run.to_path_buf(),
        partition,
        metrics: point,
        mean_auc_interval,
        resampled_by: index.grouped_by.clone(),
        resamples: settings.bootstrap,
        target_sensitivity: settings.target_sensitivity,
        operating_points,
        in_sample: partition == Partition::Val,
        roc: (0..k)
            .map(|f| {
                let (scores, positive) = column(&probabilities, &targets, &mask, f);
                roc_curve(&scores, &positive, 200)
            })
            .collect(),
        population: settings.population.clone(),
        trained_on: config.train_where.clone(),
    };
    save_json(&run.join(eval_file_name(partition, settings)), &report)?;
    Ok(Evaluation::MultiLabel(report))
}

/// `eval-test.json`, or `eval-test-dx_type-histo.json` for a sub-population.
pub fn eval_file_name(partition: Partition, settings: &EvalSettings) -> String {
    let name = serde_json::to_value(partition)
        .expect("enum")
        .as_str()
        .unwrap_or("split")
        .to_string();
    match &settings.population {
        Some(f) => format!("eval-{name}-{}.json", f.slug()),
        None => format!("eval-{name}.json"),
    }
}
