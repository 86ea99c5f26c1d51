//! Supervised fine-tuning: a linear head on the backbone (pretrained by [`crate::pretrain`] or
//! freshly initialised), trained end to end (`full`) or on frozen features (`linear-probe`)
//! with cross-entropy on a label fraction of the training partition, optionally weighted
//! against class imbalance. The checkpoint with the best validation macro AUC is kept; training
//! stops early after `patience` epochs without improvement.
//!
//! Writes `config.json`, `model.mpk` and `metrics.jsonl` into the run directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::ProgressBar;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::augment::{augment_batch, Geometry};
use crate::config::{ClassWeights, FinetuneConfig, FinetuneMode};
use crate::data::{
    load_images_with, load_training_images, open_split, report_skipped, spread, DatasetIndex,
    ImageSet, Partition, Prefetch, SplitFile, Task,
};
use crate::int8_calibration::{activation_ranges, fake_quant_forward};
use crate::metrics::{
    embed, predict, predict_logits, sigmoid_rows, ClassificationMetrics, Labels, MultiLabelMetrics,
    MIN_POSITIVES_FOR_MEAN_AUC,
};
use crate::model::{input_tensor, Classifier};
use crate::optim::{batch_schedule, learning_rate_at, step_seed};
use crate::run_dir::{
    load_finetune_config, load_pretrain_config, save_finetune_config, BACKBONE_FILE, MODEL_FILE,
};
use crate::runlog::{load_weights, progress, save_weights, MetricsLog};
use crate::{Error, Result};

/// `N / (K · n_c)` per class from the training labels (0 for absent classes).
pub fn balanced_class_weights(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    labels.iter().for_each(|&y| counts[y] += 1);
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                labels.len() as f32 / (present * c) as f32
            }
        })
        .collect()
}

/// What a fine-tuning run produced.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSummary {
    /// Run directory.
    pub dir: PathBuf,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Its validation metrics.
    pub best_val: ValMetrics,
    /// Steps taken.
    pub steps: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Validation metrics of a fine-tuning epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValMetrics {
    /// Softmax classifier.
    MultiClass(ClassificationMetrics),
    /// One sigmoid per finding.
    MultiLabel(MultiLabelMetrics),
}

impl ValMetrics {
    /// What selects the kept checkpoint: macro one-vs-rest AUC, or mean per-finding AUC.
    pub fn selection_auc(&self) -> Option<f64> {
        match self {
            ValMetrics::MultiClass(m) => m.macro_auc,
            ValMetrics::MultiLabel(m) => m.mean_auc,
        }
    }
}

/// Binary cross-entropy on logits, masked: `Σ mask·(softplus(z) − y·z) / Σ mask`, in the
/// numerically stable form `max(z, 0) − y·z + ln(1 + e^−|z|)`.
pub fn masked_bce_with_logits<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let counted = mask.clone().sum().clamp_min(1.0);
    let per =
        logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    (per * mask).sum() / counted
}

/// Fine-tunes and writes the run directory `out`.
pub fn finetune<B: AutodiffBackend>(
    request: &FinetuneConfig,
    out: &Path,
    device: &B::Device,
) -> Result<FinetuneSummary> {
    let config = resolved_config(request, out)?;
    std::fs::create_dir_all(out).map_err(crate::io_error(out))?;
    let data = FinetuneData::load(&config, out)?;
    let config = FinetuneConfig {
        preprocess: Some(data.preprocess.clone()),
        class_names: data.index.class_names.clone(),
        ..config
    };
    save_finetune_config(out, &config)?;
    let (mut model, qat_ranges) = init_model::<B>(&config, &data, device)?;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .init();
    let cx = StepContext::new(&config, &data, &model, qat_ranges, device);
    let batch_size = config.batch_size.min(data.train.len());
    let steps_per_epoch = data.train.len() / batch_size;
    let total = (steps_per_epoch * config.epochs).min(config.max_steps.unwrap_or(usize::MAX));
    let mut selection = Selection::start(out, total)?;
    let schedule = batch_schedule(
        data.train.len(),
        batch_size,
        config.epochs,
        config.seed,
        total,
    );
    let loader = spawn_view_loader(&config, &data, schedule.clone());
    let mut loader = loader.zip(schedule.iter());
    let mut step = 0;
    for epoch in 0..config.epochs {
        if step >= total {
            break;
        }
        let mut epoch_loss = 0.0;
        let mut epoch_steps = 0;
        for (views, batch) in loader.by_ref().take(steps_per_epoch) {
            let loss = cx.loss(&model, views, batch);
            let loss_value = finite_loss(&loss, step, out)?;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = learning_rate_at(step, total, config.learning_rate, config.warmup_fraction);
            model = optimizer.step(lr, model, grads);
            selection.log.write(&json!({"stage": "finetune", "epoch": epoch, "step": step, "loss": loss_value, "lr": lr}))?;
            selection
                .bar
                .set_message(format!("epoch {epoch} loss {loss_value:.3}"));
            selection.bar.inc(1);
            epoch_loss += loss_value;
            epoch_steps += 1;
            step += 1;
        }
        let train_loss = epoch_loss / epoch_steps.max(1) as f32;
        let last_epoch = epoch + 1 == config.epochs || step >= total;
        if !last_epoch && !(epoch + 1).is_multiple_of(config.validate_every.max(1)) {
            selection.log.write(&json!({
                "stage": "finetune", "epoch": epoch, "train_loss": train_loss,
            }))?;
            continue;
        }
        let metrics = validation_metrics(&model.valid(), &config, &data, device);
        if selection.after_validation(epoch, train_loss, metrics, &model, &config)? {
            break;
        }
    }
    selection.finish(step)
}

/// The request with what the run it continues fixes — a fine-tuned run for quantisation-aware
/// training (network, input, preprocessing, classes), or a pretraining run (network, input,
/// preprocessing) — validated before and after.
fn resolved_config(request: &FinetuneConfig, out: &Path) -> Result<FinetuneConfig> {
    let bad = |reason: String| Error::Config {
        path: out.to_path_buf(),
        reason,
    };
    request.validate().map_err(bad)?;
    let mut config = request.clone();
    if let Some(qat) = &request.qat {
        let base = load_finetune_config(&qat.from)?;
        config.model = base.model;
        config.image_size = base.image_size;
        config.preprocess = base.preprocess;
        config.pretrain_config = base.pretrain_config;
        config.class_names = base.class_names;
    }
    if let Some(dir) = &request.pretrained {
        let pre = load_pretrain_config(dir)?;
        config.model = pre.model.clone();
        config.image_size = pre.image_size;
        config.preprocess = pre.preprocess.clone();
        config.pretrain_config = Some(pre);
    }
    config.validate().map_err(bad)?;
    Ok(config)
}

/// Each activation tensor's int8 `(scale, zero point)`, in the graph's tensor order.
type ActivationRanges = Vec<(f32, i8)>;

/// The images fine-tuning trains and selects on, loaded once.
struct FinetuneData {
    index: DatasetIndex,
    split: SplitFile,
    /// The labelled training subset (of the sub-population trained on).
    train: Arc<ImageSet>,
    /// The validation partition (of that sub-population).
    val: ImageSet,
    /// Resolved: the pretraining run's, or from the training images' statistics.
    preprocess: PreprocessConfig,
    train_labels: Labels,
    val_labels: Labels,
}

impl FinetuneData {
    /// Loads the label fraction's training images and the validation images, restricted to
    /// the sub-population trained on; refuses class weights on multi-label data and a QAT run
    /// whose classes are not this dataset's.
    fn load(config: &FinetuneConfig, out: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            path: out.to_path_buf(),
            reason,
        };
        let (index, split) = open_split(&config.split, Some(&config.dataset))?;
        if index.task == Task::MultiLabel && config.class_weights != ClassWeights::None {
            return Err(bad(
                "class weights apply to multi-class data; multi-label findings train with plain \
                 BCE"
                .into(),
            ));
        }
        let restrict = |indices: &[usize]| -> Result<Vec<usize>> {
            match &config.train_where {
                Some(f) => {
                    let kept = f.apply(&index, indices)?;
                    if kept.is_empty() {
                        return Err(bad(format!("no images with {}", f.slug())));
                    }
                    Ok(kept)
                }
                None => Ok(indices.to_vec()),
            }
        };
        let (train, preprocess) = load_training_images(
            &index,
            &restrict(&split.labeled_subset(&index, config.label_fraction))?,
            config.image_size,
            config.model.in_channels,
            config.preprocess.clone(),
            config.skip_bad,
        )?;
        let val = load_images_with(
            &index,
            &restrict(&split.indices(&index, Partition::Val))?,
            &preprocess,
            config.skip_bad,
        )?;
        report_skipped(&val);
        let train_labels = Labels::of(&train, index.uncertainty);
        let val_labels = Labels::of(&val, index.uncertainty);
        if let Some(qat) = &config.qat {
            if config.class_names != index.class_names {
                return Err(bad(format!(
                    "{} was fine-tuned for classes {:?}, this dataset has {:?}",
                    qat.from.display(),
                    config.class_names,
                    index.class_names
                )));
            }
        }
        Ok(Self {
            index,
            split,
            train: Arc::new(train),
            val,
            preprocess,
            train_labels,
            val_labels,
        })
    }
}

/// The classifier to train — seeded, its backbone from the pretraining run when there is one,
/// all of it from the fine-tuned run QAT continues — and, for QAT, the activation ranges
/// calibrated once on the float model and then held fixed.
fn init_model<B: AutodiffBackend>(
    config: &FinetuneConfig,
    data: &FinetuneData,
    device: &B::Device,
) -> Result<(Classifier<B>, Option<ActivationRanges>)> {
    B::seed(device, config.seed);
    let mut backbone = config.model.init::<B>(device);
    if let Some(dir) = &config.pretrained {
        backbone = load_weights(backbone, &dir.join(BACKBONE_FILE), device)?;
    }
    let classes = config.class_names.len();
    let mut model = Classifier::new(backbone, config.model.feature_dim(), classes, device);
    let Some(qat) = &config.qat else {
        return Ok((model, None));
    };
    model = load_weights(model, &qat.from.join(MODEL_FILE), device)?;
    let picks = spread(
        &data.split.indices(&data.index, Partition::Train),
        qat.calibration_images,
    );
    let images = load_images_with(&data.index, &picks, &data.preprocess, config.skip_bad)?;
    let ranges = activation_ranges(
        &model.valid(),
        &images,
        &data.preprocess,
        qat.calibration,
        device,
    );
    Ok((model, Some(ranges)))
}

/// What a step needs besides the model and optimiser: the loss, the labels, and how logits are
/// made (frozen features for a linear probe, int8 rounding for QAT).
struct StepContext<'a, B: AutodiffBackend> {
    preprocess: &'a PreprocessConfig,
    device: &'a B::Device,
    labels: &'a Labels,
    classes: usize,
    loss_fn: CrossEntropyLoss<B>,
    /// Linear probe: the frozen backbone's features of every training image (dimension, rows).
    frozen_features: Option<(usize, Vec<f32>)>,
    /// QAT: each activation tensor's `(scale, zero point)`.
    qat_ranges: Option<ActivationRanges>,
}

impl<'a, B: AutodiffBackend> StepContext<'a, B> {
    fn new(
        config: &FinetuneConfig,
        data: &'a FinetuneData,
        model: &Classifier<B>,
        qat_ranges: Option<ActivationRanges>,
        device: &'a B::Device,
    ) -> Self {
        let classes = config.class_names.len();
        let loss_fn = CrossEntropyLossConfig::new()
            .with_weights(match (&data.train_labels, config.class_weights) {
                (Labels::Classes(y), ClassWeights::Balanced) => {
                    Some(balanced_class_weights(y, classes))
                }
                _ => None,
            })
            .init(device);
        // Linear probe: the frozen backbone's features of every training image, once.
        let frozen_features = (config.mode == FinetuneMode::LinearProbe).then(|| {
            let features = embed(
                &model.backbone.valid(),
                &data.train.pixels,
                data.train.sample_len,
                &data.preprocess,
                device,
            );
            (features[0].len(), features.concat())
        });
        Self {
            preprocess: &data.preprocess,
            device,
            labels: &data.train_labels,
            classes,
            loss_fn,
            frozen_features,
            qat_ranges,
        }
    }

    /// The loss of `model` on the images `batch`: their augmented `views`, or their frozen
    /// features.
    fn loss(&self, model: &Classifier<B>, views: Vec<f32>, batch: &[usize]) -> Tensor<B, 1> {
        let (device, classes) = (self.device, self.classes);
        let logits = match &self.frozen_features {
            Some((dim, features)) => {
                let rows: Vec<f32> = batch
                    .iter()
                    .flat_map(|&i| features[i * dim..(i + 1) * dim].iter().copied())
                    .collect();
                let h =
                    Tensor::<B, 2>::from_data(TensorData::new(rows, [batch.len(), *dim]), device);
                model.head.forward(h)
            }
            None => {
                let x = input_tensor::<B>(views, self.preprocess, device);
                match &self.qat_ranges {
                    Some(ranges) => fake_quant_forward(model, x, ranges),
                    None => model.forward(x),
                }
            }
        };
        match self.labels {
            Labels::Classes(classes_of) => {
                let y: Vec<i64> = batch.iter().map(|&i| classes_of[i] as i64).collect();
                let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [batch.len()]), device);
                self.loss_fn.forward(logits, y)
            }
            Labels::Findings { targets, mask } => {
                let rows = |v: &[f32]| -> Tensor<B, 2> {
                    let picked: Vec<f32> = batch
                        .iter()
                        .flat_map(|&i| v[i * classes..(i + 1) * classes].iter().copied())
                        .collect();
                    Tensor::from_data(TensorData::new(picked, [batch.len(), classes]), device)
                };
                masked_bce_with_logits(logits, rows(targets), rows(mask))
            }
        }
    }
}

/// The loss's value, or an error naming the step when it is not finite.
fn finite_loss<B: AutodiffBackend>(loss: &Tensor<B, 1>, step: usize, out: &Path) -> Result<f32> {
    let value: f32 = loss
        .clone()
        .into_data()
        .iter::<f32>()
        .next()
        .unwrap_or(f32::NAN);
    if !value.is_finite() {
        return Err(Error::Config {
            path: out.to_path_buf(),
            reason: format!("loss became {value} at step {step}; lower the learning rate"),
        });
    }
    Ok(value)
}

/// Each step's augmented views, made two steps ahead on a background thread (none for a linear
/// probe, whose head trains on precomputed features).
fn spawn_view_loader(
    config: &FinetuneConfig,
    data: &FinetuneData,
    schedule: Vec<Vec<usize>>,
) -> Prefetch<Vec<f32>> {
    let (train, augment, seed) = (data.train.clone(), config.augment.clone(), config.seed);
    let geometry = Geometry::of(&data.preprocess);
    let frozen = config.mode == FinetuneMode::LinearProbe;
    Prefetch::spawn(schedule.len(), 2, move |step| {
        if frozen {
            return Vec::new();
        }
        let sources: Vec<&[f32]> = schedule[step].iter().map(|&i| train.image(i)).collect();
        augment_batch(&sources, geometry, &augment, step_seed(seed, step), 0)
    })
}

/// The validation metrics of the model: softmax classification metrics, or per-finding AUCs.
fn validation_metrics<B: Backend>(
    model: &Classifier<B>,
    config: &FinetuneConfig,
    data: &FinetuneData,
    device: &B::Device,
) -> ValMetrics {
    let classes = config.class_names.len();
    match &data.val_labels {
        Labels::Classes(y) => {
            let probabilities = predict(model, &data.val, &data.preprocess, device);
            ValMetrics::MultiClass(ClassificationMetrics::compute(&probabilities, y, classes))
        }
        Labels::Findings { targets, mask } => {
            let logits = predict_logits(model, &data.val, &data.preprocess, device);
            ValMetrics::MultiLabel(MultiLabelMetrics::compute(
                &sigmoid_rows(&logits),
                targets,
                mask,
                &config.class_names,
                MIN_POSITIVES_FOR_MEAN_AUC,
            ))
        }
    }
}

/// The checkpoint selection on validation, and where progress goes: keeps the weights of the
/// epoch with the best selection AUC, stops early after `patience` epochs without one.
struct Selection<'a> {
    out: &'a Path,
    log: MetricsLog,
    bar: ProgressBar,
    started: Instant,
    best: Option<(usize, ValMetrics)>,
}

impl<'a> Selection<'a> {
    /// Opens the metrics log and starts the progress bar (of `total` steps) and the clock.
    fn start(out: &'a Path, total: usize) -> Result<Self> {
        let log = MetricsLog::open(out)?;
        let bar = progress(total as u64, "finetune");
        Ok(Self {
            out,
            log,
            bar,
            started: Instant::now(),
            best: None,
        })
    }

    /// Logs an epoch's validation, saves the model when it is the best so far, and says
    /// whether to stop early.
    fn after_validation<B: AutodiffBackend>(
        &mut self,
        epoch: usize,
        train_loss: f32,
        metrics: ValMetrics,
        model: &Classifier<B>,
        config: &FinetuneConfig,
    ) -> Result<bool> {
        let accuracy = match &metrics {
            ValMetrics::MultiClass(m) => Some(m.accuracy),
            ValMetrics::MultiLabel(_) => None,
        };
        self.log.write(&json!({
            "stage": "finetune", "epoch": epoch,
            "train_loss": train_loss,
            "val_accuracy": accuracy, "val_auc": metrics.selection_auc(),
        }))?;
        let better = self.best.as_ref().is_none_or(|(_, b)| {
            metrics.selection_auc().unwrap_or(0.0) > b.selection_auc().unwrap_or(0.0)
        });
        if better {
            save_weights(model.valid(), &self.out.join(MODEL_FILE))?;
            self.best = Some((epoch, metrics));
        }
        let best_epoch = self.best.as_ref().map_or(epoch, |(e, _)| *e);
        if config.patience.is_none_or(|p| epoch - best_epoch < p) {
            return Ok(false);
        }
        self.bar.println(format!(
            "early stop after epoch {epoch}: no better val macro AUC since epoch {best_epoch}"
        ));
        self.log.write(
            &json!({"stage": "finetune", "early_stop_epoch": epoch, "best_epoch": best_epoch}),
        )?;
        Ok(true)
    }

    /// The summary after `steps` steps, logged.
    fn finish(mut self, steps: usize) -> Result<FinetuneSummary> {
        self.bar.finish_and_clear();
        let (best_epoch, best_val) = self.best.take().ok_or_else(|| Error::Config {
            path: self.out.to_path_buf(),
            reason: "no epoch completed".into(),
        })?;
        let summary = FinetuneSummary {
            dir: self.out.to_path_buf(),
            best_epoch,
            best_val,
            steps,
            seconds: self.started.elapsed().as_secs_f64(),
        };
        self.log
            .write(&json!({"stage": "finetune", "summary": &summary}))?;
        crate::runlog::write_metrics_csv(self.out)?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_make_every_present_class_weigh_the_same_in_total() {
        let labels = [0, 0, 0, 0, 0, 0, 1, 1, 2, 0];
        let w = balanced_class_weights(&labels, 4);
        // 10 images, 3 present classes: 10/(3·7), 10/(3·2), 10/(3·1), absent 0.
        assert!((w[0] - 10.0 / 21.0).abs() < 1e-6);
        assert!((w[1] - 10.0 / 6.0).abs() < 1e-6);
        assert!((w[2] - 10.0 / 3.0).abs() < 1e-6);
        assert_eq!(w[3], 0.0);
        let totals: Vec<f32> = [7.0, 2.0, 1.0].iter().zip(&w).map(|(n, w)| n * w).collect();
        assert!(
            totals.iter().all(|t| (t - totals[0]).abs() < 1e-5),
            "{totals:?}"
        );
    }
}
