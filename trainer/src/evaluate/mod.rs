//! Evaluation of a fine-tuned model on one partition: top-1/top-3 and balanced accuracy,
//! per-class and macro one-vs-rest ROC AUC and the confusion matrix, 95 % bootstrap intervals
//! resampled by lesion/patient, calibration before and after temperature scaling fitted on
//! validation, and per-class operating points for a target sensitivity chosen on validation.
//! Prints a table and writes `eval-<partition>.json` into the run. Also the kNN probe of
//! pretrained features.

pub mod calibration;
pub mod metrics;

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use crate::data::{load_images_with, open_split, ImageSet, Partition};
use crate::finetune::{FinetuneConfig, MODEL_FILE};
use crate::model::{input_tensor, to_vec, Classifier, ResNet};
use crate::runlog::{load_json, load_weights, save_json};
use crate::{Error, Result};

/// Images per inference batch.
const EVAL_BATCH: usize = 256;

/// Metrics of a multi-class classifier on a set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Number of images.
    pub n: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Mean of the per-class AUCs that are defined.
    pub macro_auc: Option<f64>,
    /// One-vs-rest AUC per class (`None` when the class has no positives or no negatives).
    pub per_class_auc: Vec<Option<f64>>,
    /// Images per true class.
    pub class_counts: Vec<usize>,
    /// Fraction with the true class among the three most probable.
    #[serde(default)]
    pub top3_accuracy: f64,
    /// Mean per-class recall.
    #[serde(default)]
    pub balanced_accuracy: f64,
    /// Counts `[true class][predicted class]`.
    #[serde(default)]
    pub confusion: Vec<Vec<usize>>,
}

impl ClassificationMetrics {
    /// Computes the metrics from per-image class probabilities.
    pub fn compute(probabilities: &[Vec<f32>], labels: &[usize], classes: usize) -> Self {
        let n = labels.len();
        let correct = probabilities
            .iter()
            .zip(labels)
            .filter(|(p, &y)| argmax(p) == y)
            .count();
        let per_class_auc: Vec<Option<f64>> = (0..classes)
            .map(|c| {
                let scores: Vec<f32> = probabilities.iter().map(|p| p[c]).collect();
                let positives: Vec<bool> = labels.iter().map(|&y| y == c).collect();
                roc_auc(&scores, &positives)
            })
            .collect();
        let defined: Vec<f64> = per_class_auc.iter().flatten().copied().collect();
        let mut class_counts = vec![0; classes];
        labels.iter().for_each(|&y| class_counts[y] += 1);
        let predicted = metrics::predictions(probabilities);
        Self {
            n,
            accuracy: correct as f64 / n.max(1) as f64,
            macro_auc: (!defined.is_empty())
                .then(|| defined.iter().sum::<f64>() / defined.len() as f64),
            per_class_auc,
            class_counts,
            top3_accuracy: metrics::top_k_accuracy(probabilities, labels, 3),
            balanced_accuracy: metrics::balanced_accuracy(&predicted, labels, classes),
            confusion: metrics::confusion_matrix(&predicted, labels, classes),
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// ROC AUC by the Mann–Whitney statistic with average ranks for ties; `None` when either class
/// is absent.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

/// ROC curve points `(false-positive rate, sensitivity)` from the highest threshold down, one
/// per distinct score, thinned to at most `max_points` (the ends kept); empty when either
/// class is absent.
pub fn roc_curve(scores: &[f32], positive: &[bool], max_points: usize) -> Vec<(f64, f64)> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for (rank, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order.get(rank + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
        }
    }
    if points.len() > max_points.max(2) {
        let stride = points.len().div_ceil(max_points.max(2) - 1);
        let last = *points.last().expect("non-empty");
        points = points.into_iter().step_by(stride).collect();
        if points.last() != Some(&last) {
            points.push(last);
        }
    }
    points
}

/// Class probabilities for every image of a set (inference mode, batched).
pub fn predict<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    batched_outputs(model, images, preprocess, device, true)
}

/// Logits for every image of a set (inference mode, batched).
pub fn predict_logits<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    batched_outputs(model, images, preprocess, device, false)
}

fn batched_outputs<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
    probabilities: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let logits = model.forward(input_tensor::<B>(pixels, preprocess, device));
        let classes = logits.dims()[1];
        let values = if probabilities {
            to_vec(softmax(logits, 1))
        } else {
            to_vec(logits)
        };
        out.extend(values.chunks_exact(classes).map(|c| c.to_vec()));
    }
    out
}

/// Backbone features of images given as consecutive `C×H×W` blocks of `sample_len` floats
/// (`N × feature_dim`), in batches.
pub fn embed<B: Backend>(
    backbone: &ResNet<B>,
    pixels: &[f32],
    sample_len: usize,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let n = pixels.len() / sample_len.max(1);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(n);
        let batch = pixels[start * sample_len..end * sample_len].to_vec();
        let features = backbone.forward(input_tensor::<B>(batch, preprocess, device));
        let dim = features.dims()[1];
        out.extend(to_vec(features).chunks_exact(dim).map(|c| c.to_vec()));
    }
    out
}

fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Weighted k-nearest-neighbour predictions of `queries` against a labelled `bank`: cosine
/// similarity, the `k` nearest vote with weight `exp(sim / temperature)` (Wu et al. 2018, the
/// monitor solo-learn uses). Labels never reach training: this only measures the features.
pub fn knn_predict(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    k: usize,
    temperature: f32,
) -> Vec<Option<usize>> {
    let classes = bank_labels.iter().max().map_or(0, |m| m + 1);
    let bank: Vec<Vec<f32>> = bank.iter().map(|b| l2_normalised(b)).collect();
    queries
        .iter()
        .map(|q| {
            let q = l2_normalised(q);
            let mut sims: Vec<(f32, usize)> = bank
                .iter()
                .zip(bank_labels)
                .map(|(b, &l)| (b.iter().zip(&q).map(|(x, y)| x * y).sum::<f32>(), l))
                .collect();
            let k = k.min(sims.len());
            if k == 0 {
                return None;
            }
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0.0_f64; classes];
            for &(sim, l) in &sims[..k] {
                votes[l] += f64::from(sim / temperature).exp();
            }
            Some(argmax_f64(&votes))
        })
        .collect()
}

/// Top-1 accuracy of [`knn_predict`].
pub fn knn_accuracy(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    query_labels: &[usize],
    k: usize,
    temperature: f32,
) -> f64 {
    let (accuracy, _) = knn_scores(bank, bank_labels, queries, query_labels, k, temperature);
    accuracy
}

/// Top-1 accuracy and balanced accuracy (mean per-class recall, over classes present among the
/// queries) of [`knn_predict`]: with 67 % of HAM10000 in one class, the second is the telling one.
pub fn knn_scores(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    query_labels: &[usize],
    k: usize,
    temperature: f32,
) -> (f64, f64) {
    let predicted = knn_predict(bank, bank_labels, queries, k, temperature);
    let classes = query_labels.iter().max().map_or(0, |m| m + 1);
    let (mut hit, mut seen) = (vec![0_usize; classes], vec![0_usize; classes]);
    for (p, &y) in predicted.iter().zip(query_labels) {
        seen[y] += 1;
        hit[y] += usize::from(*p == Some(y));
    }
    let accuracy = hit.iter().sum::<usize>() as f64 / query_labels.len().max(1) as f64;
    let recalls: Vec<f64> = hit
        .iter()
        .zip(&seen)
        .filter(|(_, &n)| n > 0)
        .map(|(&h, &n)| h as f64 / n as f64)
        .collect();
    let balanced = recalls.iter().sum::<f64>() / recalls.len().max(1) as f64;
    (accuracy, balanced)
}

fn argmax_f64(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// How spread out L2-normalised embeddings are: the mean per-dimension standard deviation times
/// `√dim` — about 1 for embeddings spread over the sphere, → 0 when they collapse to a point.
pub fn embedding_spread(features: &[Vec<f32>]) -> f64 {
    let Some(dim) = features.first().map(Vec::len) else {
        return 0.0;
    };
    let normalised: Vec<Vec<f32>> = features.iter().map(|f| l2_normalised(f)).collect();
    let n = normalised.len() as f64;
    let mean_std = (0..dim)
        .map(|d| {
            let mean = normalised.iter().map(|f| f64::from(f[d])).sum::<f64>() / n;
            let var = normalised
                .iter()
                .map(|f| (f64::from(f[d]) - mean).powi(2))
                .sum::<f64>()
                / n;
            var.sqrt()
        })
        .sum::<f64>()
        / dim as f64;
    mean_std * (dim as f64).sqrt()
}

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
    use crate::pretrain::{PretrainConfig, BACKBONE_FILE};
    let config: PretrainConfig = load_json(&run.join("config.json"))?;
    let preprocess = config.preprocess.clone().ok_or_else(|| Error::Config {
        path: run.join("config.json"),
        reason: "no resolved preprocessing: not a completed pretraining run".into(),
    })?;
    B::seed(device, config.seed);
    let mut backbone = config.model.init::<B>(device);
    if !random_init {
        backbone = load_weights(backbone, &run.join(BACKBONE_FILE), device)?;
    }
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

/// A fine-tuned run loaded back: its resolved config and its model.
pub fn load_finetuned<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(FinetuneConfig, Classifier<B>)> {
    let config: FinetuneConfig = load_json(&run.join("config.json"))?;
    config.model.validate().map_err(|reason| Error::Config {
        path: run.join("config.json"),
        reason,
    })?;
    if config.preprocess.is_none() || config.class_names.is_empty() {
        return Err(Error::Config {
            path: run.join("config.json"),
            reason: "not a completed fine-tuning run (no preprocessing or class names)".into(),
        });
    }
    let backbone = config.model.init::<B>(device);
    let model = Classifier::new(
        backbone,
        config.model.feature_dim(),
        config.class_names.len(),
        device,
    );
    let model = load_weights(model, &run.join(MODEL_FILE), device)?;
    Ok((config, model))
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

/// How an evaluation is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Bootstrap resamples for the confidence intervals (0: none).
    pub bootstrap: usize,
    /// Seed of the resampling.
    pub seed: u64,
    /// Sensitivity each class's threshold must reach on validation.
    pub target_sensitivity: f64,
    /// Bins of the reliability diagram.
    pub calibration_bins: usize,
    /// Only the evaluated partition's images of this sub-population (distribution shift).
    #[serde(default)]
    pub population: Option<crate::data::SampleFilter>,
    /// The partition being evaluated (set by the evaluation itself).
    #[serde(default = "test_partition")]
    pub partition: Partition,
}

fn test_partition() -> Partition {
    Partition::Test
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            bootstrap: 1000,
            seed: 0,
            target_sensitivity: 0.95,
            calibration_bins: 15,
            population: None,
            partition: Partition::Test,
        }
    }
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
    pub accuracy: Option<metrics::Interval>,
    /// Balanced accuracy.
    pub balanced_accuracy: Option<metrics::Interval>,
    /// Macro one-vs-rest AUC.
    pub macro_auc: Option<metrics::Interval>,
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
    pub reliability_before: Vec<calibration::ReliabilityBin>,
    /// Reliability diagram, temperature-scaled.
    pub reliability_after: Vec<calibration::ReliabilityBin>,
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
        let ci = |i: Option<metrics::Interval>| {
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
        crate::pretrain::report_skipped(&images);
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
        let members = metrics::group_members(&images.groups);
        let predicted = metrics::predictions(&probabilities);
        let accuracy = |idx: &[usize]| {
            Some(
                idx.iter().filter(|&&i| predicted[i] == labels[i]).count() as f64
                    / idx.len().max(1) as f64,
            )
        };
        let balanced = |idx: &[usize]| {
            let p: Vec<usize> = idx.iter().map(|&i| predicted[i]).collect();
            let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            Some(metrics::balanced_accuracy(&p, &y, classes))
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
            accuracy: metrics::group_bootstrap(&members, n, seed, accuracy),
            balanced_accuracy: metrics::group_bootstrap(&members, n, seed, balanced),
            macro_auc: metrics::group_bootstrap(&members, n, seed, macro_auc),
        }
    });

    let temperature = calibration::fit_temperature(&val_logits, &val_labels);
    let calibrated = softmax_at(&logits, temperature);
    let (reliability_before, ece_before) =
        calibration::reliability(&probabilities, &labels, settings.calibration_bins);
    let (reliability_after, ece_after) =
        calibration::reliability(&calibrated, &labels, settings.calibration_bins);
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
    pub metrics: metrics::MultiLabelMetrics,
    /// 95 % bootstrap interval of the mean AUC (same findings), resampled by group.
    pub mean_auc_interval: Option<metrics::Interval>,
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
    let config: FinetuneConfig = load_json(&run.join("config.json"))?;
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
        crate::pretrain::report_skipped(&images);
        let crate::finetune::Labels::Findings { targets, mask } =
            crate::finetune::Labels::of(&images, index.uncertainty)
        else {
            unreachable!("multi-label index")
        };
        let probabilities =
            crate::finetune::sigmoid_rows(&predict_logits(&model, &images, &preprocess, device));
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
    let min = metrics::MIN_POSITIVES_FOR_MEAN_AUC;
    let point = metrics::MultiLabelMetrics::compute(&probabilities, &targets, &mask, names, min);
    let included: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| point.mean_over.contains(n))
        .map(|(f, _)| f)
        .collect();
    let members = metrics::group_members(&images.groups);
    let mean_auc_interval = (settings.bootstrap > 0)
        .then(|| {
            metrics::group_bootstrap(&members, settings.bootstrap, settings.seed, |idx| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_curve_steps_through_ties_and_thins_to_its_budget() {
        let y = [true, false, true, false];
        let curve = roc_curve(&[0.9, 0.5, 0.5, 0.1], &y, 100);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        let scores: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let alternating: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let thin = roc_curve(&scores, &alternating, 50);
        assert!(thin.len() <= 51, "{}", thin.len());
        assert_eq!(thin.last(), Some(&(1.0, 1.0)));
        assert!(roc_curve(&[0.1], &[true], 10).is_empty());
    }

    #[test]
    fn auc_of_perfect_random_and_tied_scores() {
        let y = [true, true, false, false];
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &y), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &y), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &y), Some(0.5));
        assert_eq!(roc_auc(&[0.9, 0.4, 0.6, 0.1], &y), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn metrics_skip_undefined_classes_in_the_macro_mean() {
        let probs = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.2, 0.8, 0.0],
            vec![0.6, 0.4, 0.0],
        ];
        let m = ClassificationMetrics::compute(&probs, &[0, 1, 1], 3);
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.per_class_auc[2], None);
        assert_eq!(m.macro_auc, Some(1.0));
        assert_eq!(m.class_counts, vec![1, 2, 0]);
    }

    #[test]
    fn knn_finds_the_class_of_nearby_points() {
        let bank = vec![
            vec![1.0, 0.1],
            vec![0.9, 0.0],
            vec![0.0, 1.0],
            vec![0.1, 0.8],
        ];
        let labels = [0, 0, 1, 1];
        let queries = vec![vec![1.0, 0.05], vec![0.05, 1.0], vec![1.0, 0.0]];
        let acc = knn_accuracy(&bank, &labels, &queries, &[0, 1, 1], 2, 0.07);
        assert!((acc - 2.0 / 3.0).abs() < 1e-9, "{acc}");
        let (_, balanced) = knn_scores(&bank, &labels, &queries, &[0, 1, 1], 2, 0.07);
        assert!(
            (balanced - 0.75).abs() < 1e-9,
            "recall 1 for class 0, 1/2 for class 1"
        );
    }

    #[test]
    fn spread_is_near_one_for_spread_embeddings_and_zero_for_collapsed_ones() {
        let spread: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let a = i as f32 * 0.7;
                vec![a.cos(), a.sin(), (a * 1.3).cos(), (a * 1.3).sin()]
            })
            .collect();
        let s = embedding_spread(&spread);
        assert!(s > 0.8 && s < 1.2, "{s}");
        let collapsed = vec![vec![0.3, 0.4, 0.5, 0.1]; 100];
        assert!(embedding_spread(&collapsed) < 1e-6);
    }
}
