//! Self-supervised pretraining without labels: SimCLR (two augmented views per image, a 2-layer
//! projection head, NT-Xent loss with temperature) on the training partition's images; labels
//! are never read here.
//!
//! Writes `config.json` (the resolved config, preprocessing included), `backbone.mpk` and
//! `metrics.jsonl` into the run directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::augment::{augment_batch, AugmentConfig, Geometry};
use crate::data::{load_images_with, open_split, DatasetIndex, ImageSet, Partition, Prefetch};
use crate::model::{input_tensor, ResNetConfig, SimClr};
use crate::runlog::{progress, save_json, save_weights, MetricsLog};
use crate::{Error, Result};

/// File names inside a pretraining run directory.
pub const BACKBONE_FILE: &str = "backbone.mpk";

/// Pretraining settings; the resolved form is saved as `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Dataset folder or file (the split file's source, or where that data moved to).
    pub dataset: PathBuf,
    /// Split file (only its train partition is used).
    pub split: PathBuf,
    /// Leave unreadable images out (listing each) instead of stopping.
    #[serde(default)]
    pub skip_bad: bool,
    /// Backbone.
    pub model: ResNetConfig,
    /// Input size in pixels (square).
    pub image_size: u32,
    /// Preprocessing; when absent it is resolved from the training images' statistics.
    pub preprocess: Option<PreprocessConfig>,
    /// View augmentations.
    pub augment: AugmentConfig,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step (each gives two views).
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Fraction of steps spent in linear warm-up before cosine decay.
    pub warmup_fraction: f64,
    /// NT-Xent temperature.
    pub temperature: f32,
    /// Output size of the projection head.
    pub projection_dim: usize,
    /// Seed for initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Stop after this many steps (for quick runs); all epochs when absent.
    pub max_steps: Option<usize>,
}

impl PretrainConfig {
    /// Defaults for a dataset and split.
    pub fn new(dataset: PathBuf, split: PathBuf) -> Self {
        Self {
            dataset,
            split,
            skip_bad: false,
            model: ResNetConfig::default(),
            image_size: 32,
            preprocess: None,
            augment: AugmentConfig::derm_ssl(),
            epochs: 10,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            warmup_fraction: 0.1,
            temperature: 0.2,
            projection_dim: 128,
            seed: 0,
            max_steps: None,
        }
    }
}

/// What a pretraining run produced.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Run directory.
    pub dir: PathBuf,
    /// Steps taken.
    pub steps: usize,
    /// Mean loss over the first epoch's steps.
    pub first_loss: f32,
    /// Mean loss over the last 10 % of steps.
    pub final_loss: f32,
    /// Wall time.
    pub seconds: f64,
    /// Throughput in images per second (two views count as one image).
    pub images_per_second: f64,
}

/// Linear warm-up then cosine decay to zero.
pub fn learning_rate_at(step: usize, total: usize, peak: f64, warmup_fraction: f64) -> f64 {
    let warmup = ((total as f64 * warmup_fraction).round() as usize).max(1);
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// NT-Xent (normalised temperature-scaled cross entropy) over `2N` projections where rows `i`
/// and `i + N` are the two views of one image.
pub fn nt_xent_loss<B: Backend>(z: Tensor<B, 2>, temperature: f32) -> Tensor<B, 1> {
    let device = z.device();
    let [rows, _] = z.dims();
    let n = rows / 2;
    let norm = z.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    let z = z / norm;
    let similarity = z.clone().matmul(z.transpose()).div_scalar(temperature);
    let diagonal: Vec<bool> = (0..rows * rows).map(|k| k / rows == k % rows).collect();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(diagonal, [rows, rows]), &device);
    let logits = similarity.mask_fill(mask, -1.0e9);
    let positives: Vec<i64> = (0..rows).map(|i| ((i + n) % rows) as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(positives, [rows]), &device);
    CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets)
}

/// Loads the given samples and resolves preprocessing from their statistics when unset.
/// With `skip_bad`, unreadable images are listed on stderr and left out.
pub fn load_training_images(
    index: &DatasetIndex,
    which: &[usize],
    image_size: u32,
    channels: usize,
    preprocess: Option<PreprocessConfig>,
    skip_bad: bool,
) -> Result<(ImageSet, PreprocessConfig)> {
    let unnormalised = preprocess.clone().unwrap_or_else(|| {
        PreprocessConfig::new(
            image_size,
            channels as u32,
            vec![0.0; channels],
            vec![1.0; channels],
        )
    });
    let images = load_images_with(index, which, &unnormalised, skip_bad)?;
    report_skipped(&images);
    let resolved = match preprocess {
        Some(p) => p,
        None => {
            let (mean, std) = images.channel_stats(channels);
            PreprocessConfig {
                mean,
                std,
                ..unnormalised
            }
        }
    };
    Ok((images, resolved))
}

/// Lists images left out by `--skip-bad` on stderr.
pub(crate) fn report_skipped(images: &ImageSet) {
    for reason in &images.skipped {
        eprintln!("skipped unreadable image: {reason}");
    }
    if !images.skipped.is_empty() {
        eprintln!(
            "skipped {} unreadable image(s); {} loaded",
            images.skipped.len(),
            images.len()
        );
    }
}

/// The batches of every step: a seeded shuffle per epoch, whole batches only.
pub(crate) fn batch_schedule(
    images: usize,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    total: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..images).collect();
    let mut schedule = Vec::with_capacity(total);
    for epoch in 0..epochs {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1)));
        for batch in order.chunks_exact(batch_size) {
            if schedule.len() == total {
                return schedule;
            }
            schedule.push(batch.to_vec());
        }
    }
    schedule
}

/// The augmentation seed of a step.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(step as u64)
}

/// Runs SimCLR pretraining and writes the run directory `out`.
pub fn pretrain<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    device: &B::Device,
) -> Result<PretrainSummary> {
    let bad = |reason: String| Error::Config {
        path: out.to_path_buf(),
        reason,
    };
    config.model.validate().map_err(bad)?;
    if config.batch_size < 2 || config.epochs == 0 {
        return Err(bad("pretraining needs batch_size ≥ 2 and epochs ≥ 1".into()));
    }
    std::fs::create_dir_all(out).map_err(crate::io_error(out))?;
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let (images, preprocess) = load_training_images(
        &index,
        &split.indices(&index, Partition::Train),
        config.image_size,
        config.model.in_channels,
        config.preprocess.clone(),
        config.skip_bad,
    )?;
    if images.len() < config.batch_size {
        return Err(bad(format!(
            "the training partition has {} images, fewer than one batch of {}",
            images.len(),
            config.batch_size
        )));
    }
    let resolved = PretrainConfig {
        preprocess: Some(preprocess.clone()),
        ..config.clone()
    };
    save_json(&out.join("config.json"), &resolved)?;

    B::seed(device, config.seed);
    let mut model = SimClr::<B>::new(&config.model, config.projection_dim, device);
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .init();
    let geometry = Geometry::of(&preprocess);
    let steps_per_epoch = images.len() / config.batch_size;
    let total = (steps_per_epoch * config.epochs).min(config.max_steps.unwrap_or(usize::MAX));
    let mut log = MetricsLog::open(out)?;
    let bar = progress(total as u64, "pretrain");
    let started = Instant::now();
    let mut losses = Vec::with_capacity(total);
    let schedule = batch_schedule(
        images.len(),
        config.batch_size,
        config.epochs,
        config.seed,
        total,
    );
    // Views for the next steps are augmented on a background thread while this one trains.
    let images = Arc::new(images);
    let loader = {
        let (images, augment, seed) = (images.clone(), config.augment.clone(), config.seed);
        Prefetch::spawn(schedule.len(), 2, move |step| {
            let sources: Vec<&[f32]> = schedule[step].iter().map(|&i| images.image(i)).collect();
            let mut views = augment_batch(&sources, geometry, &augment, step_seed(seed, step), 0);
            views.extend(augment_batch(
                &sources,
                geometry,
                &augment,
                step_seed(seed, step),
                1,
            ));
            views
        })
    };
    let mut step = 0;
    for views in loader {
        let epoch = step / steps_per_epoch.max(1);
        let x = input_tensor::<B>(views, &preprocess, device);
        let loss = nt_xent_loss(model.forward(x), config.temperature);
        let loss_value: f32 = loss
            .clone()
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap_or(f32::NAN);
        if !loss_value.is_finite() {
            return Err(bad(format!(
                "loss became {loss_value} at step {step}; lower the learning rate"
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = learning_rate_at(step, total, config.learning_rate, config.warmup_fraction);
        model = optimizer.step(lr, model, grads);
        losses.push(loss_value);
        let rate = ((step + 1) * config.batch_size) as f64 / started.elapsed().as_secs_f64();
        log.write(&json!({"stage": "pretrain", "epoch": epoch, "step": step, "loss": loss_value, "lr": lr, "images_per_s": rate}))?;
        bar.set_message(format!("loss {loss_value:.3} lr {lr:.2e} {rate:.0} img/s"));
        bar.inc(1);
        step += 1;
    }
    bar.finish_and_clear();
    save_weights(model.valid().backbone, &out.join(BACKBONE_FILE))?;
    let seconds = started.elapsed().as_secs_f64();
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len().max(1) as f32;
    let tail = (losses.len() / 10).max(1);
    let summary = PretrainSummary {
        dir: out.to_path_buf(),
        steps: step,
        first_loss: mean(&losses[..steps_per_epoch.min(losses.len())]),
        final_loss: mean(&losses[losses.len().saturating_sub(tail)..]),
        seconds,
        images_per_second: (step * config.batch_size) as f64 / seconds,
    };
    log.write(&json!({"stage": "pretrain", "summary": &summary}))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn nt_xent_prefers_matching_views() {
        let device = Default::default();
        // Views 0/2 and 1/3 are identical: the loss must be far below that of mismatched pairs.
        let aligned = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [4, 2]),
            &device,
        );
        let crossed = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [4, 2]),
            &device,
        );
        let good: f32 = nt_xent_loss(aligned, 0.1)
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap();
        let bad: f32 = nt_xent_loss(crossed, 0.1)
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap();
        assert!(good < 0.01, "aligned loss {good}");
        assert!(bad > 5.0, "crossed loss {bad}");
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let lr: Vec<f64> = (0..100)
            .map(|s| learning_rate_at(s, 100, 1.0, 0.1))
            .collect();
        assert!((lr[9] - 1.0).abs() < 1e-9 && lr[0] < 0.2);
        assert!(lr[50] < 1.0 && lr[99] < 0.01);
    }
}
