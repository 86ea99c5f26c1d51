//! Evaluation of a fine-tuned model on one partition: top-1 accuracy, per-class and macro
//! one-vs-rest ROC AUC. Prints a table and writes `eval-<partition>.json` into the run.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use crate::data::{load_images_with, open_split, ImageSet, Partition};
use crate::finetune::{FinetuneConfig, MODEL_FILE};
use crate::model::{input_tensor, to_vec, Classifier};
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
        Self {
            n,
            accuracy: correct as f64 / n.max(1) as f64,
            macro_auc: (!defined.is_empty())
                .then(|| defined.iter().sum::<f64>() / defined.len() as f64),
            per_class_auc,
            class_counts,
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

/// Class probabilities for every image of a set (inference mode, batched).
pub fn predict<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let logits = model.forward(input_tensor::<B>(pixels, preprocess, device));
        let classes = logits.dims()[1];
        let probs = to_vec(softmax(logits, 1));
        out.extend(probs.chunks_exact(classes).map(|c| c.to_vec()));
    }
    out
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

/// The evaluation of a run on one partition, as written to `eval-<partition>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The run directory.
    pub run: PathBuf,
    /// Which partition.
    pub partition: Partition,
    /// Class names.
    pub class_names: Vec<String>,
    /// The metrics.
    pub metrics: ClassificationMetrics,
}

impl EvalReport {
    /// A plain-text table of the metrics.
    pub fn table(&self) -> String {
        let m = &self.metrics;
        let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:6.3}"));
        let mut s = format!("{:<10} {:>6} {:>6}\n", "class", "n", "AUC");
        for (c, name) in self.class_names.iter().enumerate() {
            s += &format!(
                "{:<10} {:>6} {}\n",
                name,
                m.class_counts[c],
                fmt(m.per_class_auc[c])
            );
        }
        s += &format!(
            "{:<10} {:>6} {}  (macro one-vs-rest)\n",
            "all",
            m.n,
            fmt(m.macro_auc)
        );
        s += &format!(
            "top-1 accuracy {:.3} on {} {:?} images\n",
            m.accuracy, m.n, self.partition
        );
        s
    }
}

/// Evaluates a fine-tuned run on a partition of its split and writes the report.
pub fn evaluate_run<B: Backend>(
    run: &Path,
    partition: Partition,
    device: &B::Device,
) -> Result<EvalReport> {
    let (config, model) = load_finetuned::<B>(run, device)?;
    let preprocess = config
        .preprocess
        .clone()
        .expect("checked by load_finetuned");
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let images = load_images_with(
        &index,
        &split.indices(&index, partition),
        &preprocess,
        config.skip_bad,
    )?;
    crate::pretrain::report_skipped(&images);
    let labels = images.class_labels().ok_or_else(|| Error::Data {
        path: index.root().to_path_buf(),
        reason: "multi-label data cannot be evaluated with a softmax classifier".into(),
    })?;
    let probabilities = predict(&model, &images, &preprocess, device);
    let report = EvalReport {
        run: run.to_path_buf(),
        partition,
        class_names: config.class_names.clone(),
        metrics: ClassificationMetrics::compute(&probabilities, &labels, config.class_names.len()),
    };
    let name = format!(
        "eval-{}.json",
        serde_json::to_value(partition)
            .expect("enum")
            .as_str()
            .unwrap_or("split")
    );
    save_json(&run.join(name), &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
