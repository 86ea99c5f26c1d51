//! Self-supervised pretraining without labels on the training partition's images.
//!
//! Methods ([`Method`]): **SimCLR** (two augmented views of each image, a 2-layer projection
//! head, NT-Xent with temperature) and **MICLe** (Azizi et al. 2021: when an image's lesion or
//! patient has other images, the positive pair is one view of it and one view of another image
//! of the same case; otherwise two views of the image; same loss). Optimisers: AdamW, LARS
//! (SimCLR's, see [`crate::optim`]) or SGD with momentum; linear warm-up then cosine decay.
//!
//! The engine checkpoints model and optimiser every `checkpoint_every` steps (augmentation and
//! batch order derive from the seed and the step, so that is all the state there is) and
//! [`resume_pretrain`] continues a killed run exactly where its last checkpoint left it. Every
//! `health_every` epochs — and once before training, as the random-init baseline — it reports
//! the backbone's weighted-kNN accuracy on the validation partition (labels only measure, they
//! never train) and warns when embeddings collapse.
//!
//! Writes `config.json`, `backbone.mpk`, `metrics.jsonl` and `checkpoints/` into the run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::augment::{augment_batch, Geometry};
use crate::config::{Method, Objectives, PretrainConfig};
use crate::data::{
    load_images_with, load_training_images, open_split, DatasetIndex, ImageSet, Partition, Prefetch,
};
use crate::imagenet::load_torchvision;
use crate::metrics::{embed, embedding_spread, knn_scores};
use crate::model::{input_tensor, SimClr, RECONSTRUCTION_GRID};
use crate::optim::{batch_schedule, learning_rate_at, step_seed, Lars, OptimizerKind};
use crate::run_dir::{load_pretrain_config, BACKBONE_FILE, CONFIG_FILE};
use crate::runlog::{load_json, progress, save_json, save_weights, MetricsLog};
use crate::{Error, Result};

/// Below this embedding spread (see [`embedding_spread`]) the run warns of collapse.
pub const COLLAPSE_SPREAD: f64 = 0.05;

/// Negative cosine similarity of `p` with `z`, averaged (SimSiam's `D`); `z` is not
/// differentiated through (stop-gradient).
pub fn negative_cosine<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    let z = z.detach();
    let norm = |t: Tensor<B, 2>| {
        let n = t.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
        t / n
    };
    (norm(p) * norm(z)).sum_dim(1).mean().neg()
}

/// Turns a square `C×S×S` image by `quarter_turns × 90°`.
pub fn rotate_quarter(chw: &[f32], channels: usize, side: usize, quarter_turns: usize) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0.0; chw.len()];
    for c in 0..channels {
        for y in 0..side {
            for x in 0..side {
                let (sy, sx) = match quarter_turns % 4 {
                    0 => (y, x),
                    1 => (x, side - 1 - y),
                    2 => (side - 1 - y, side - 1 - x),
                    _ => (side - 1 - x, y),
                };
                out[c * plane + y * side + x] = chw[c * plane + sy * side + sx];
            }
        }
    }
    out
}

/// Blanks half of the `G×G` patches of a `C×H×W` view (to the normalisation mean, i.e. 0
/// after normalising) and returns the per-patch means of the original (normalised) as targets
/// with a mask of the blanked patches (`C·G·G` each).
fn mask_patches(
    view: &mut [f32],
    preprocess: &PreprocessConfig,
    rng: &mut impl Rng,
) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = (
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    );
    let g = RECONSTRUCTION_GRID;
    let mut targets = vec![0.0; c * g * g];
    let mut mask = vec![0.0; c * g * g];
    let blanked: Vec<bool> = (0..g * g).map(|_| rng.random::<bool>()).collect();
    for ch in 0..c {
        for py in 0..g {
            for px in 0..g {
                let (y0, y1) = (py * h / g, (py + 1) * h / g);
                let (x0, x1) = (px * w / g, (px + 1) * w / g);
                let mut sum = 0.0;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let at = ch * h * w + y * w + x;
                        sum += view[at];
                        if blanked[py * g + px] {
                            view[at] = preprocess.mean[ch];
                        }
                    }
                }
                let count = ((y1 - y0) * (x1 - x0)).max(1) as f32;
                let k = ch * g * g + py * g + px;
                targets[k] = (sum / count - preprocess.mean[ch]) / preprocess.std[ch];
                mask[k] = f32::from(u8::from(blanked[py * g + px]));
            }
        }
    }
    (targets, mask)
}

/// One step's inputs, prepared on the loader thread.
struct StepInputs {
    /// Two views per image (`2N` images).
    views: Vec<f32>,
    /// MICLe pairs made of two different images.
    cross: usize,
    /// Turned views and how many quarter turns each.
    rotated: Option<(Vec<f32>, Vec<i64>)>,
    /// Masked views, patch-mean targets and mask.
    masked: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

/// The inputs of one micro-batch: slices of a step's inputs, in the same layout.
struct MicroBatch {
    /// Images in this micro-batch.
    images: usize,
    /// Both views of its images: `images` first views, then their `images` second views.
    views: Vec<f32>,
    rotated: Option<(Vec<f32>, Vec<i64>)>,
    masked: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

impl StepInputs {
    /// Micro-batch `k` of `count` (of `image_len` floats per image): the step's images cut into
    /// `count` equal runs, every input cut alike.
    fn micro_batch(&self, k: usize, count: usize, image_len: usize) -> MicroBatch {
        let n = self.views.len() / image_len / 2;
        let m = n / count;
        let rows = |v: &[f32], per: usize| v[k * m * per..(k + 1) * m * per].to_vec();
        let mut views = rows(&self.views[..n * image_len], image_len);
        views.extend(rows(&self.views[n * image_len..], image_len));
        MicroBatch {
            images: m,
            views,
            rotated: self.rotated.as_ref().map(|(turned, turns)| {
                (rows(turned, image_len), turns[k * m..(k + 1) * m].to_vec())
            }),
            masked: self.masked.as_ref().map(|(blanked, targets, mask)| {
                let per = targets.len() / n;
                (
                    rows(blanked, image_len),
                    rows(targets, per),
                    rows(mask, per),
                )
            }),
        }
    }
}

/// Each weighted objective's loss on one micro-batch, from one backbone pass over everything
/// the objectives need: `2m` views, then `m` turned, then `m` masked images.
fn objective_losses<B: AutodiffBackend>(
    model: &SimClr<B>,
    batch: MicroBatch,
    config: &PretrainConfig,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<(&'static str, Tensor<B, 1>)> {
    let n = batch.images;
    let mut pixels = batch.views;
    let mut rotation_labels = None;
    let mut reconstruction = None;
    if let Some((turned, turns)) = batch.rotated {
        pixels.extend(turned);
        rotation_labels = Some(turns);
    }
    if let Some((blanked, targets, mask)) = batch.masked {
        pixels.extend(blanked);
        reconstruction = Some((targets, mask));
    }
    let h = model
        .backbone
        .forward(input_tensor::<B>(pixels, preprocess, device));
    let feature_dim = h.dims()[1];
    let views_h = h.clone().slice([0..2 * n, 0..feature_dim]);
    let mut offset = 2 * n;
    let mut parts: Vec<(&'static str, Tensor<B, 1>)> = Vec::new();
    let objectives = config.objectives;
    if objectives.contrastive > 0.0 || objectives.simsiam > 0.0 {
        let z = model.project(views_h);
        if objectives.contrastive > 0.0 {
            parts.push((
                "contrastive",
                nt_xent_loss(z.clone(), config.temperature).mul_scalar(objectives.contrastive),
            ));
        }
        if objectives.simsiam > 0.0 {
            let dim = z.dims()[1];
            let z1 = z.clone().slice([0..n, 0..dim]);
            let z2 = z.clone().slice([n..2 * n, 0..dim]);
            let p1 = model.predict(z1.clone());
            let p2 = model.predict(z2.clone());
            let loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)).mul_scalar(0.5);
            parts.push(("simsiam", loss.mul_scalar(objectives.simsiam)));
        }
    }
    if let (Some(turns), Some(head)) = (rotation_labels, &model.rotation_head) {
        let logits = head.forward(h.clone().slice([offset..offset + n, 0..feature_dim]));
        offset += n;
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(turns, [n]), device);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y);
        parts.push(("rotation", loss.mul_scalar(objectives.rotation)));
    }
    if let (Some((targets, mask)), Some(decoder)) = (reconstruction, &model.decoder) {
        let out = decoder.forward(h.clone().slice([offset..offset + n, 0..feature_dim]));
        let len = targets.len() / n;
        let targets = Tensor::<B, 2>::from_data(TensorData::new(targets, [n, len]), device);
        let blanked: f32 = mask.iter().sum::<f32>().max(1.0);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, len]), device);
        let loss = ((out - targets).square() * mask).sum().div_scalar(blanked);
        parts.push(("reconstruction", loss.mul_scalar(objectives.reconstruction)));
    }
    parts
}

/// The backbone's kNN accuracy and embedding spread at one point of training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Steps done when measured.
    pub after_steps: usize,
    /// Weighted 20-NN top-1 accuracy of validation images against training images.
    pub knn_accuracy: f64,
    /// Its balanced accuracy (mean per-class recall).
    #[serde(default)]
    pub knn_balanced_accuracy: f64,
    /// See [`embedding_spread`]: ~1 spread out, → 0 collapsed.
    pub spread: f64,
}

/// What a pretraining run produced.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Run directory.
    pub dir: PathBuf,
    /// Pair formation.
    pub method: Method,
    /// Objective weights.
    pub objectives: Objectives,
    /// Steps taken.
    pub steps: usize,
    /// Mean loss over the first epoch's steps.
    pub first_loss: f32,
    /// Mean loss over the last 10 % of steps.
    pub final_loss: f32,
    /// Wall time of this invocation (a resumed run counts from the resume).
    pub seconds: f64,
    /// Throughput in images per second (two views count as one image).
    pub images_per_second: f64,
    /// Throughput after the first [`WARMUP_STEPS`] steps of this invocation (which pay for
    /// kernel compilation and autotuning on GPU backends); absent for shorter runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_images_per_second: Option<f64>,
    /// Fraction of MICLe pairs made of two different images (0 for SimCLR).
    pub cross_image_pairs: f64,
    /// Health before training (random init) and at the end; absent when disabled.
    pub health: Vec<Health>,
}

/// Steps left out of [`PretrainSummary::steady_images_per_second`] (the PyTorch peer in
/// `tools/bench` warms up for as many).
pub const WARMUP_STEPS: usize = 3;

/// NT-Xent (normalised temperature-scaled cross entropy) over `2N` projections where rows `i`
/// and `i + N` are the two views of one image.
pub fn nt_xent_loss<B: Backend>(z: Tensor<B, 2>, temperature: f32) -> Tensor<B, 1> {
    let device = z.device();
    let [rows, _] = z.dims();
    let n = rows / 2;
    let norm = z.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    let z = z / norm;
    let similarity = z.clone().matmul(z.transpose()).div_scalar(temperature);
    // Exclude each view's similarity with itself. An additive float mask rather than a Bool
    // tensor: not every backend (candle) can build Bool tensors from host data.
    let diagonal: Vec<f32> = (0..rows * rows)
        .map(|k| if k / rows == k % rows { 1.0e9 } else { 0.0 })
        .collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(diagonal, [rows, rows]), &device);
    let logits = similarity - mask;
    let positives: Vec<i64> = (0..rows).map(|i| ((i + n) % rows) as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(positives, [rows]), &device);
    CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets)
}

/// Where a checkpoint is and what it holds besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// Steps completed.
    step: usize,
    /// Folder under `checkpoints/`.
    dir: String,
    /// Loss of every completed step.
    losses: Vec<f32>,
    /// Health measurements so far.
    health: Vec<Health>,
    /// MICLe pairs so far: (cross-image, total).
    pairs: (usize, usize),
}

const LATEST: &str = "checkpoints/latest.json";

/// Reads every float parameter, which makes burn draw the lazily initialised ones now.
struct DrawParameters;

impl<B: Backend> burn::module::ModuleVisitor<B> for DrawParameters {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// One micro-batch's loss, its objectives' values and its gradients (on the first device).
type MicroResult = (f32, Vec<(&'static str, f32)>, GradientsParams);

/// Runs pretraining from scratch and writes the run directory `out`.
pub fn pretrain<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    device: &B::Device,
) -> Result<PretrainSummary> {
    pretrain_on::<B>(config, out, std::slice::from_ref(device))
}

/// [`pretrain`] data-parallel over `devices` (several GPUs): every step's batch is cut into
/// `accumulation_steps × devices` micro-batches, each device computes the gradients of its
/// share on its own replica of the model (one thread per device), and the gradients are moved
/// to the first device and summed there in micro-batch order before the optimiser step — the
/// same arithmetic as `accumulation_steps × devices` micro-batches on one device.
pub fn pretrain_on<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    devices: &[B::Device],
) -> Result<PretrainSummary> {
    dispatch::<B>(config, out, devices, None)
}

/// Continues the run in `out` from its latest checkpoint, with the configuration it was
/// started with; the steps after the checkpoint are redone exactly.
pub fn resume_pretrain<B: AutodiffBackend>(
    out: &Path,
    device: &B::Device,
) -> Result<PretrainSummary> {
    resume_pretrain_on::<B>(out, std::slice::from_ref(device))
}

/// [`resume_pretrain`] data-parallel over `devices` (see [`pretrain_on`]); a run resumes
/// exactly only on as many devices as it started with.
pub fn resume_pretrain_on<B: AutodiffBackend>(
    out: &Path,
    devices: &[B::Device],
) -> Result<PretrainSummary> {
    let config = load_pretrain_config(out)?;
    let state: CheckpointState = load_json(&out.join(LATEST)).map_err(|e| Error::Checkpoint {
        path: out.join(LATEST),
        reason: format!("no checkpoint to resume from ({e})"),
    })?;
    dispatch::<B>(&config, out, devices, Some(state))
}

fn dispatch<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    devices: &[B::Device],
    resume: Option<CheckpointState>,
) -> Result<PretrainSummary> {
    match config.optimizer {
        OptimizerKind::Adamw => {
            let optimizer = AdamWConfig::new()
                .with_weight_decay(config.weight_decay)
                .init::<B, SimClr<B>>();
            run::<B, _>(config, out, devices, optimizer, resume)
        }
        OptimizerKind::Lars => {
            let optimizer = Lars {
                momentum: config.momentum,
                weight_decay: f64::from(config.weight_decay),
                ..Lars::default()
            }
            .init::<B, SimClr<B>>();
            run::<B, _>(config, out, devices, optimizer, resume)
        }
        OptimizerKind::Sgd => {
            let optimizer = SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: config.momentum,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig {
                    penalty: config.weight_decay,
                }))
                .init::<B, SimClr<B>>();
            run::<B, _>(config, out, devices, optimizer, resume)
        }
    }
}

/// MICLe partners: for each training image, the other images of its bag.
fn bag_partners(images: &ImageSet) -> Vec<Vec<usize>> {
    let mut by_group: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, g) in images.groups.iter().enumerate() {
        by_group.entry(g.as_str()).or_default().push(i);
    }
    images
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            by_group[g.as_str()]
                .iter()
                .copied()
                .filter(|&j| j != i)
                .collect()
        })
        .collect()
}

/// Validation images and labels for the health signal (multi-class data only).
struct HealthSet {
    bank: Vec<usize>,
    bank_labels: Vec<usize>,
    queries: ImageSet,
    query_labels: Vec<usize>,
}

fn health_set(
    config: &PretrainConfig,
    index: &DatasetIndex,
    split: &crate::data::SplitFile,
    train: &ImageSet,
    preprocess: &PreprocessConfig,
) -> Result<Option<HealthSet>> {
    if config.health_every == 0 {
        return Ok(None);
    }
    let Some(train_labels) = train.class_labels() else {
        eprintln!("health: multi-label data, kNN accuracy is not measured");
        return Ok(None);
    };
    let mut val = split.indices(index, Partition::Val);
    if val.is_empty() {
        return Ok(None);
    }
    val.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    val.truncate(config.health_images);
    val.sort_unstable();
    let queries = load_images_with(index, &val, preprocess, config.skip_bad)?;
    let query_labels = queries.class_labels().expect("same dataset, multi-class");
    let mut bank: Vec<usize> = (0..train.len()).collect();
    bank.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed ^ 0x6b6e6e));
    bank.truncate(config.health_images);
    let bank_labels = bank.iter().map(|&i| train_labels[i]).collect();
    Ok(Some(HealthSet {
        bank,
        bank_labels,
        queries,
        query_labels,
    }))
}

fn measure_health<B: AutodiffBackend>(
    model: &SimClr<B>,
    set: &HealthSet,
    train: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
    after_steps: usize,
) -> Health {
    let backbone = model.valid().backbone;
    let bank_pixels: Vec<f32> = set
        .bank
        .iter()
        .flat_map(|&i| train.image(i).iter().copied())
        .collect();
    let bank = embed(
        &backbone,
        &bank_pixels,
        train.sample_len,
        preprocess,
        device,
    );
    let queries = embed(
        &backbone,
        &set.queries.pixels,
        set.queries.sample_len,
        preprocess,
        device,
    );
    debug_assert_eq!(bank.len(), set.bank_labels.len());
    let (knn_accuracy, knn_balanced_accuracy) = knn_scores(
        &bank,
        &set.bank_labels,
        &queries,
        &set.query_labels,
        20,
        0.07,
    );
    Health {
        after_steps,
        knn_accuracy,
        knn_balanced_accuracy,
        spread: embedding_spread(&queries),
    }
}

fn checkpoint_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

/// Writes `checkpoints/step-N/` (model + optimiser), then points `latest.json` at it, then
/// removes older ones: a kill at any moment leaves the previous checkpoint usable.
fn save_checkpoint<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    out: &Path,
    model: &SimClr<B>,
    optimizer: &O,
    state: &mut CheckpointState,
) -> Result<()> {
    let root = out.join("checkpoints");
    let name = format!("step-{:08}", state.step);
    let partial = root.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(crate::io_error(&partial))?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    model
        .clone()
        .save_file(partial.join("model"), &recorder)
        .map_err(|e| checkpoint_error(&partial)(e.to_string()))?;
    Recorder::<B>::record(&recorder, optimizer.to_record(), partial.join("optimizer"))
        .map_err(|e| checkpoint_error(&partial)(e.to_string()))?;
    let done = root.join(&name);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done).map_err(crate::io_error(&done))?;
    state.dir = name.clone();
    save_json(&out.join(LATEST), state)?;
    for entry in std::fs::read_dir(&root)
        .map_err(crate::io_error(&root))?
        .flatten()
    {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with("step-") && file_name != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn load_checkpoint<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    out: &Path,
    model: SimClr<B>,
    optimizer: O,
    state: &CheckpointState,
    device: &B::Device,
) -> Result<(SimClr<B>, O)> {
    let dir = out.join("checkpoints").join(&state.dir);
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let model = model
        .load_file(dir.join("model"), &recorder, device)
        .map_err(|e| checkpoint_error(&dir)(e.to_string()))?;
    let record = Recorder::<B>::load(&recorder, dir.join("optimizer"), device)
        .map_err(|e| checkpoint_error(&dir)(e.to_string()))?;
    Ok((model, optimizer.load_record(record)))
}

fn run<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    config: &PretrainConfig,
    out: &Path,
    devices: &[B::Device],
    optimizer: O,
    resume: Option<CheckpointState>,
) -> Result<PretrainSummary> {
    let bad = |reason: String| Error::Config {
        path: out.to_path_buf(),
        reason,
    };
    // The model, the optimiser and everything but the micro-batches' gradients live on the
    // first device.
    let Some(device) = devices.first() else {
        return Err(bad("no compute device given".into()));
    };
    config.validate().map_err(bad)?;
    let micro_batches = config.micro_batches(devices.len()).map_err(bad)?;
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
    if resume.is_none() {
        save_json(&out.join(CONFIG_FILE), &resolved)?;
    }
    let health_set = health_set(config, &index, &split, &images, &preprocess)?;

    B::seed(device, config.seed);
    let mut model = SimClr::<B>::new(
        &config.model,
        config.projection_dim,
        config.objectives.heads(),
        device,
    );
    // burn creates parameters lazily, drawing their random values on first use: a clone made
    // before then (a device's replica) would draw its own. Drawn here, in module order, once.
    model.visit(&mut DrawParameters);
    let mut init_report = None;
    if let (Some(file), None) = (&config.init, &resume) {
        let (backbone, report) = load_torchvision::<B>(&config.model, file, device)?;
        eprintln!(
            "backbone initialised from {}: {} tensors loaded, {} ignored",
            file.display(),
            report.loaded,
            report.ignored.len()
        );
        model.backbone = backbone;
        init_report = Some(report);
    }
    let mut optimizer = optimizer;
    let mut state = CheckpointState {
        step: 0,
        dir: String::new(),
        losses: Vec::new(),
        health: Vec::new(),
        pairs: (0, 0),
    };
    if let Some(saved) = resume {
        (model, optimizer) = load_checkpoint(out, model, optimizer, &saved, device)?;
        MetricsLog::truncate_after(out, saved.step)?;
        eprintln!("resuming {} from step {}", out.display(), saved.step);
        state = saved;
    }
    let geometry = Geometry::of(&preprocess);
    let steps_per_epoch = images.len() / config.batch_size;
    let total = (steps_per_epoch * config.epochs).min(config.max_steps.unwrap_or(usize::MAX));
    let mut log = MetricsLog::open(out)?;
    if let Some(report) = &init_report {
        log.write(&json!({"stage": "pretrain", "init_weights": report}))?;
    }
    if let (Some(set), 0) = (&health_set, state.step) {
        let health = measure_health(&model, set, &images, &preprocess, device, 0);
        log.write(&json!({"stage": "pretrain", "health": &health, "init": true}))?;
        eprintln!(
            "health before training: kNN accuracy {:.3}, spread {:.3}",
            health.knn_accuracy, health.spread
        );
        state.health.push(health);
    }
    let bar = progress(total as u64, "pretrain");
    bar.set_position(state.step as u64);
    let started = Instant::now();
    let first_step = state.step;
    let mut warm_since: Option<Instant> = None;
    let schedule = batch_schedule(
        images.len(),
        config.batch_size,
        config.epochs,
        config.seed,
        total,
    );
    // Views for the next steps are augmented on a background thread while this one trains.
    let images = Arc::new(images);
    let partners = Arc::new(match config.method {
        Method::Simclr => vec![Vec::new(); images.len()],
        Method::Micle => bag_partners(&images),
    });
    let loader = {
        let (images, partners) = (images.clone(), partners.clone());
        let (augment, seed, objectives) = (config.augment.clone(), config.seed, config.objectives);
        let preprocess = preprocess.clone();
        Prefetch::spawn(schedule.len() - first_step, 2, move |k| {
            let step = first_step + k;
            let batch = &schedule[step];
            // MICLe: the second view comes from another image of the same case when there is one.
            let mut rng = ChaCha8Rng::seed_from_u64(step_seed(seed, step) ^ 0x006d_6963_6c65);
            let second: Vec<usize> = batch
                .iter()
                .map(|&i| match partners[i].len() {
                    0 => i,
                    n => partners[i][rng.random_range(0..n)],
                })
                .collect();
            let cross = batch.iter().zip(&second).filter(|(a, b)| a != b).count();
            let first: Vec<&[f32]> = batch.iter().map(|&i| images.image(i)).collect();
            let other: Vec<&[f32]> = second.iter().map(|&i| images.image(i)).collect();
            let view_a = augment_batch(&first, geometry, &augment, step_seed(seed, step), 0);
            let mut views = view_a.clone();
            views.extend(augment_batch(
                &other,
                geometry,
                &augment,
                step_seed(seed, step),
                1,
            ));
            let rotated = (objectives.rotation > 0.0).then(|| {
                let mut turned = Vec::with_capacity(view_a.len());
                let mut turns = Vec::with_capacity(batch.len());
                for v in view_a.chunks_exact(geometry.len()) {
                    let q = rng.random_range(0..4_usize);
                    turned.extend(rotate_quarter(v, geometry.channels, geometry.width, q));
                    turns.push(q as i64);
                }
                (turned, turns)
            });
            let masked = (objectives.reconstruction > 0.0).then(|| {
                let mut blanked = view_a.clone();
                let (mut targets, mut mask) = (Vec::new(), Vec::new());
                for v in blanked.chunks_exact_mut(geometry.len()) {
                    let (t, m) = mask_patches(v, &preprocess, &mut rng);
                    targets.extend(t);
                    mask.extend(m);
                }
                (blanked, targets, mask)
            });
            StepInputs {
                views,
                cross,
                rotated,
                masked,
            }
        })
    };
    let scalar = |t: &Tensor<B, 1>| -> f32 {
        t.clone()
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap_or(f32::NAN)
    };
    for inputs in loader {
        let step = state.step;
        let epoch = step / steps_per_epoch.max(1);
        let cross = inputs.cross;
        // One micro-batch on one device: its loss, its objectives and its gradients, moved
        // to the first device.
        let micro_step = |replica: &SimClr<B>, on: &B::Device, micro: usize| {
            let batch = inputs.micro_batch(micro, micro_batches, geometry.len());
            let parts = objective_losses(replica, batch, config, &preprocess, on);
            let loss = parts
                .iter()
                .map(|(_, t)| t.clone())
                .reduce(|a, b| a + b)
                .expect("validated: at least one objective")
                .div_scalar(micro_batches as f32);
            let value = scalar(&loss);
            if !value.is_finite() {
                return Err(bad(format!(
                    "loss became {value} at step {step}; lower the learning rate"
                )));
            }
            let values: Vec<(&'static str, f32)> =
                parts.iter().map(|(name, t)| (*name, scalar(t))).collect();
            let grads = GradientsParams::from_grads(loss.backward(), replica);
            Ok((value, values, grads.to_device(device, replica)))
        };
        let results: Vec<MicroResult> = if devices.len() == 1 {
            (0..micro_batches)
                .map(|micro| micro_step(&model, device, micro))
                .collect::<Result<_>>()?
        } else {
            // Device `d` takes micro-batches d, d + D, d + 2D, … on its own thread.
            let mut by_device = std::thread::scope(|scope| {
                let workers: Vec<_> = devices
                    .iter()
                    .enumerate()
                    .map(|(d, on)| {
                        let replica = model.clone().fork(on);
                        let micro_step = &micro_step;
                        scope.spawn(move || {
                            (d..micro_batches)
                                .step_by(devices.len())
                                .map(|micro| micro_step(&replica, on, micro))
                                .collect::<Result<Vec<_>>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| worker.join().expect("a device's worker panicked"))
                    .collect::<Result<Vec<_>>>()
            })?
            .into_iter()
            .map(Vec::into_iter)
            .collect::<Vec<_>>();
            // Back into micro-batch order: the sums below do not depend on which device
            // finished first.
            (0..micro_batches)
                .map(|micro| {
                    by_device[micro % devices.len()]
                        .next()
                        .expect("every device returns its micro-batches")
                })
                .collect()
        };
        let mut grads = GradientsAccumulator::<SimClr<B>>::new();
        let mut loss_value = 0.0;
        let mut components = serde_json::Map::new();
        for (value, parts, micro_grads) in results {
            loss_value += value;
            for (name, t) in parts {
                let sum = components.entry(name.to_string()).or_insert(json!(0.0));
                *sum = json!(sum.as_f64().unwrap_or(0.0) + f64::from(t) / micro_batches as f64);
            }
            grads.accumulate(&model, micro_grads);
        }
        let grads = grads.grads();
        let lr = learning_rate_at(step, total, config.learning_rate, config.warmup_fraction);
        model = optimizer.step(lr, model, grads);
        state.losses.push(loss_value);
        state.pairs.0 += cross;
        state.pairs.1 += config.batch_size;
        state.step += 1;
        if state.step - first_step == WARMUP_STEPS {
            warm_since = Some(Instant::now());
        }
        let rate = ((state.step - first_step) * config.batch_size) as f64
            / started.elapsed().as_secs_f64();
        log.write(&json!({"stage": "pretrain", "epoch": epoch, "step": step, "loss": loss_value, "objectives": components, "lr": lr, "images_per_s": rate}))?;
        bar.set_message(format!("loss {loss_value:.3} lr {lr:.2e} {rate:.0} img/s"));
        bar.inc(1);
        let epoch_done = state.step.is_multiple_of(steps_per_epoch.max(1));
        let last = state.step == total;
        if let Some(set) = &health_set {
            let every = config.health_every;
            if (epoch_done && (epoch + 1).is_multiple_of(every)) || last {
                let health = measure_health(&model, set, &images, &preprocess, device, state.step);
                log.write(&json!({"stage": "pretrain", "epoch": epoch, "health": &health}))?;
                bar.println(format!(
                    "epoch {epoch}: kNN accuracy {:.3} (balanced {:.3}), spread {:.3}",
                    health.knn_accuracy, health.knn_balanced_accuracy, health.spread
                ));
                if health.spread < COLLAPSE_SPREAD {
                    bar.println(format!(
                        "warning: embeddings are collapsing (spread {:.4} < {COLLAPSE_SPREAD}); \
                         lower the learning rate or raise the temperature",
                        health.spread
                    ));
                    log.write(&json!({"stage": "pretrain", "warning": "collapse", "spread": health.spread}))?;
                }
                state.health.push(health);
            }
        }
        if config.checkpoint_every > 0
            && state.step.is_multiple_of(config.checkpoint_every)
            && !last
        {
            save_checkpoint(out, &model, &optimizer, &mut state)?;
        }
    }
    bar.finish_and_clear();
    save_weights(model.valid().backbone, &out.join(BACKBONE_FILE))?;
    let seconds = started.elapsed().as_secs_f64();
    let losses = &state.losses;
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len().max(1) as f32;
    let tail = (losses.len() / 10).max(1);
    let summary = PretrainSummary {
        dir: out.to_path_buf(),
        method: config.method,
        objectives: config.objectives,
        steps: state.step,
        first_loss: mean(&losses[..steps_per_epoch.min(losses.len())]),
        final_loss: mean(&losses[losses.len().saturating_sub(tail)..]),
        seconds,
        images_per_second: ((state.step - first_step) * config.batch_size) as f64 / seconds,
        steady_images_per_second: warm_since
            .filter(|_| state.step - first_step > WARMUP_STEPS)
            .map(|since| {
                ((state.step - first_step - WARMUP_STEPS) * config.batch_size) as f64
                    / since.elapsed().as_secs_f64()
            }),
        cross_image_pairs: state.pairs.0 as f64 / state.pairs.1.max(1) as f64,
        health: state.health.clone(),
    };
    log.write(&json!({"stage": "pretrain", "summary": &summary}))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn micro_batches_cut_every_input_alike_and_reassemble_the_step() {
        let image_len = 3;
        let n = 4;
        // Image i's first view holds i, its second view 100 + i, turned 200 + i, masked 300 + i.
        let fill = |base: f32| -> Vec<f32> {
            (0..n)
                .flat_map(|i| vec![base + i as f32; image_len])
                .collect()
        };
        let mut views = fill(0.0);
        views.extend(fill(100.0));
        let inputs = StepInputs {
            views,
            cross: 0,
            rotated: Some((fill(200.0), (0..n as i64).collect())),
            masked: Some((fill(300.0), fill(400.0), fill(500.0))),
        };
        let first = |v: &[f32]| v.chunks(image_len).map(|c| c[0]).collect::<Vec<_>>();
        for k in 0..2 {
            let micro = inputs.micro_batch(k, 2, image_len);
            let (a, b) = (2.0 * k as f32, 2.0 * k as f32 + 1.0);
            assert_eq!(micro.images, 2);
            assert_eq!(first(&micro.views), vec![a, b, 100.0 + a, 100.0 + b]);
            let (turned, turns) = micro.rotated.unwrap();
            assert_eq!(first(&turned), vec![200.0 + a, 200.0 + b]);
            assert_eq!(turns, vec![a as i64, b as i64]);
            let (blanked, targets, mask) = micro.masked.unwrap();
            assert_eq!(first(&blanked), vec![300.0 + a, 300.0 + b]);
            assert_eq!(first(&targets), vec![400.0 + a, 400.0 + b]);
            assert_eq!(first(&mask), vec![500.0 + a, 500.0 + b]);
        }
        let whole = inputs.micro_batch(0, 1, image_len);
        assert_eq!(whole.views, inputs.views);
    }

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
    fn four_quarter_turns_are_the_identity_and_one_turns_columns_into_rows() {
        let img: Vec<f32> = (0..2 * 9).map(|i| i as f32).collect();
        let mut t = img.clone();
        for _ in 0..4 {
            t = rotate_quarter(&t, 2, 3, 1);
        }
        assert_eq!(t, img);
        let once = rotate_quarter(&img, 2, 3, 1);
        assert_eq!(&once[..3], &[2.0, 5.0, 8.0]);
        assert_eq!(
            rotate_quarter(&img, 2, 3, 2),
            rotate_quarter(&once, 2, 3, 1)
        );
    }

    #[test]
    fn masking_blanks_patches_to_the_mean_and_targets_their_normalised_means() {
        let pre = PreprocessConfig::new(16, 1, vec![0.5], vec![0.25]);
        let mut view = vec![0.75_f32; 256];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (targets, mask) = mask_patches(&mut view, &pre, &mut rng);
        assert_eq!(targets.len(), 64);
        assert!(
            targets.iter().all(|t| (t - 1.0).abs() < 1e-6),
            "(0.75 - 0.5) / 0.25"
        );
        let blanked = mask.iter().filter(|&&m| m == 1.0).count();
        assert!(blanked > 10 && blanked < 54, "{blanked} of 64");
        let at_mean = view.iter().filter(|&&v| v == 0.5).count();
        assert_eq!(
            at_mean,
            blanked * 4,
            "each blanked 2×2 patch is set to the mean"
        );
    }

    #[test]
    fn negative_cosine_is_minus_one_for_aligned_vectors() {
        let device = Default::default();
        let p = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 2.0, -3.0, 0.5], [2, 2]),
            &device,
        );
        let z = p.clone().mul_scalar(3.0);
        let d: f32 = negative_cosine(p, z).into_scalar();
        assert!((d + 1.0).abs() < 1e-6, "{d}");
    }
}
