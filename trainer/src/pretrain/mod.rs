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

mod checkpoint;
mod health;
mod objectives;
mod step;
mod views;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::ProgressBar;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::Serialize;
use serde_json::json;

use crate::augment::Geometry;
use crate::config::{Method, Objectives, PretrainConfig};
use crate::data::{load_training_images, open_split, ImageSet, Partition};
use crate::imagenet::{load_torchvision, InitReport};
use crate::model::SimClr;
use crate::optim::{batch_schedule, learning_rate_at, Lars, OptimizerKind};
use crate::run_dir::{load_pretrain_config, save_pretrain_config, BACKBONE_FILE};
use crate::runlog::{progress, save_weights, MetricsLog};
use crate::{Error, Result};
use checkpoint::{load_checkpoint, save_checkpoint, CheckpointState};
use health::{health_set, measure_health, HealthSet};
use step::{MicroBatching, StepGradients};
use views::{spawn_loader, ViewMaker};

pub use health::{Health, COLLAPSE_SPREAD};
pub use objectives::{negative_cosine, nt_xent_loss};
pub use views::rotate_quarter;

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
    let state = checkpoint::latest(out)?;
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

/// What training runs on, loaded once: the training images, their resolved preprocessing, and
/// the health signal's images.
struct TrainingSet {
    images: Arc<ImageSet>,
    preprocess: PreprocessConfig,
    health: Option<HealthSet>,
}

/// Loads the training partition (resolving the normalisation from it when the config has
/// none) and the health set; a fresh run's resolved config is saved into `out` first.
fn load_training_set(config: &PretrainConfig, out: &Path, fresh: bool) -> Result<TrainingSet> {
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
        return Err(Error::Config {
            path: out.to_path_buf(),
            reason: format!(
                "the training partition has {} images, fewer than one batch of {}",
                images.len(),
                config.batch_size
            ),
        });
    }
    let resolved = PretrainConfig {
        preprocess: Some(preprocess.clone()),
        ..config.clone()
    };
    if fresh {
        save_pretrain_config(out, &resolved)?;
    }
    let health = health_set(config, &index, &split, &images, &preprocess)?;
    Ok(TrainingSet {
        images: Arc::new(images),
        preprocess,
        health,
    })
}

/// Reads every float parameter, which makes burn draw the lazily initialised ones now.
struct DrawParameters;

impl<B: Backend> burn::module::ModuleVisitor<B> for DrawParameters {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// The network and optimiser a run starts from, with its step state.
struct Start<B: AutodiffBackend, O> {
    model: SimClr<B>,
    optimizer: O,
    state: CheckpointState,
    /// What ImageNet initialisation loaded, when it did.
    init: Option<InitReport>,
}

/// The model on the first device — seeded, its parameters drawn, from torchvision weights when
/// asked — with a fresh optimiser, or both as the checkpoint `resume` left them.
fn start<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    config: &PretrainConfig,
    out: &Path,
    device: &B::Device,
    optimizer: O,
    resume: Option<CheckpointState>,
) -> Result<Start<B, O>> {
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
    let mut init = None;
    if let (Some(file), None) = (&config.init, &resume) {
        let (backbone, report) = load_torchvision::<B>(&config.model, file, device)?;
        eprintln!(
            "backbone initialised from {}: {} tensors loaded, {} ignored",
            file.display(),
            report.loaded,
            report.ignored.len()
        );
        model.backbone = backbone;
        init = Some(report);
    }
    let Some(saved) = resume else {
        return Ok(Start {
            model,
            optimizer,
            state: CheckpointState::default(),
            init,
        });
    };
    let (model, optimizer) = load_checkpoint(out, model, optimizer, &saved, device)?;
    MetricsLog::truncate_after(out, saved.step)?;
    eprintln!("resuming {} from step {}", out.display(), saved.step);
    Ok(Start {
        model,
        optimizer,
        state: saved,
        init,
    })
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
    let set = load_training_set(config, out, resume.is_none())?;
    let mut start = start::<B, O>(config, out, device, optimizer, resume)?;
    let geometry = Geometry::of(&set.preprocess);
    let mut training = Training::begin(config, out, device, &set, &mut start)?;
    let schedule = batch_schedule(
        set.images.len(),
        config.batch_size,
        config.epochs,
        config.seed,
        training.total,
    );
    // Views for the next steps are augmented on a background thread while this one trains.
    let maker = ViewMaker::new(config, set.images.clone(), geometry, &set.preprocess);
    let loader = spawn_loader(maker, schedule, training.first_step);
    let batching = MicroBatching {
        config,
        preprocess: &set.preprocess,
        devices,
        count: micro_batches,
        image_len: geometry.len(),
        out,
    };
    let (mut model, mut optimizer) = (start.model, start.optimizer);
    for inputs in loader {
        let step = training.state.step;
        let StepGradients {
            loss,
            objectives,
            grads,
        } = batching.gradients(&model, &inputs, step)?;
        let lr = learning_rate_at(
            step,
            training.total,
            config.learning_rate,
            config.warmup_fraction,
        );
        model = optimizer.step(lr, model, grads);
        training.record_step(step, loss, &objectives, lr, inputs.cross)?;
        training.check_health(&model, &set, step)?;
        training.checkpoint(&model, &optimizer)?;
    }
    training.finish(model)
}

/// A pretraining run under way: its step state (what a checkpoint saves), the clock, and where
/// progress goes (the metrics log and the progress bar).
struct Training<'a, B: AutodiffBackend> {
    config: &'a PretrainConfig,
    out: &'a Path,
    device: &'a B::Device,
    state: CheckpointState,
    log: MetricsLog,
    bar: ProgressBar,
    steps_per_epoch: usize,
    /// Steps of the whole run.
    total: usize,
    /// The step this invocation started at (0, or where it resumed).
    first_step: usize,
    started: Instant,
    /// When the first [`WARMUP_STEPS`] steps of this invocation were done.
    warm_since: Option<Instant>,
}

impl<'a, B: AutodiffBackend> Training<'a, B> {
    /// Opens the metrics log (recording what ImageNet initialisation loaded), measures the
    /// health before training (random init, or the ImageNet weights) of a fresh run, then
    /// starts the progress bar and the clock.
    fn begin(
        config: &'a PretrainConfig,
        out: &'a Path,
        device: &'a B::Device,
        set: &TrainingSet,
        start: &mut Start<B, impl Optimizer<SimClr<B>, B>>,
    ) -> Result<Self> {
        let steps_per_epoch = set.images.len() / config.batch_size;
        let total = (steps_per_epoch * config.epochs).min(config.max_steps.unwrap_or(usize::MAX));
        let mut log = MetricsLog::open(out)?;
        if let Some(report) = &start.init {
            log.write(&json!({"stage": "pretrain", "init_weights": report}))?;
        }
        let state = &mut start.state;
        if let (Some(health_set), 0) = (&set.health, state.step) {
            let health = measure_health(
                &start.model,
                health_set,
                &set.images,
                &set.preprocess,
                device,
                0,
            );
            log.write(&json!({"stage": "pretrain", "health": &health, "init": true}))?;
            eprintln!(
                "health before training: kNN accuracy {:.3}, spread {:.3}",
                health.knn_accuracy, health.spread
            );
            state.health.push(health);
        }
        let bar = progress(total as u64, "pretrain");
        bar.set_position(state.step as u64);
        Ok(Self {
            config,
            out,
            device,
            first_step: state.step,
            state: std::mem::take(state),
            log,
            bar,
            steps_per_epoch,
            total,
            started: Instant::now(),
            warm_since: None,
        })
    }

    /// Counts a finished step and logs its loss, objectives, learning rate and throughput.
    fn record_step(
        &mut self,
        step: usize,
        loss: f32,
        objectives: &serde_json::Map<String, serde_json::Value>,
        lr: f64,
        cross: usize,
    ) -> Result<()> {
        let config = self.config;
        self.state.losses.push(loss);
        self.state.pairs.0 += cross;
        self.state.pairs.1 += config.batch_size;
        self.state.step += 1;
        if self.state.step - self.first_step == WARMUP_STEPS {
            self.warm_since = Some(Instant::now());
        }
        let rate = ((self.state.step - self.first_step) * config.batch_size) as f64
            / self.started.elapsed().as_secs_f64();
        let epoch = step / self.steps_per_epoch.max(1);
        self.log.write(&json!({"stage": "pretrain", "epoch": epoch, "step": step, "loss": loss, "objectives": objectives, "lr": lr, "images_per_s": rate}))?;
        self.bar
            .set_message(format!("loss {loss:.3} lr {lr:.2e} {rate:.0} img/s"));
        self.bar.inc(1);
        Ok(())
    }

    /// Measures the health after step `step` when an epoch of the health interval (or the
    /// run) just ended, and warns when the embeddings collapse.
    fn check_health(&mut self, model: &SimClr<B>, set: &TrainingSet, step: usize) -> Result<()> {
        let Some(health_set) = &set.health else {
            return Ok(());
        };
        let epoch = step / self.steps_per_epoch.max(1);
        let epoch_done = self.state.step.is_multiple_of(self.steps_per_epoch.max(1));
        let last = self.state.step == self.total;
        let every = self.config.health_every;
        if !((epoch_done && (epoch + 1).is_multiple_of(every)) || last) {
            return Ok(());
        }
        let health = measure_health(
            model,
            health_set,
            &set.images,
            &set.preprocess,
            self.device,
            self.state.step,
        );
        self.log
            .write(&json!({"stage": "pretrain", "epoch": epoch, "health": &health}))?;
        self.bar.println(format!(
            "epoch {epoch}: kNN accuracy {:.3} (balanced {:.3}), spread {:.3}",
            health.knn_accuracy, health.knn_balanced_accuracy, health.spread
        ));
        if health.spread < COLLAPSE_SPREAD {
            self.bar.println(format!(
                "warning: embeddings are collapsing (spread {:.4} < {COLLAPSE_SPREAD}); \
                 lower the learning rate or raise the temperature",
                health.spread
            ));
            self.log.write(
                &json!({"stage": "pretrain", "warning": "collapse", "spread": health.spread}),
            )?;
        }
        self.state.health.push(health);
        Ok(())
    }

    /// Saves a checkpoint every `checkpoint_every` steps, except after the last.
    fn checkpoint<O: Optimizer<SimClr<B>, B>>(
        &mut self,
        model: &SimClr<B>,
        optimizer: &O,
    ) -> Result<()> {
        let every = self.config.checkpoint_every;
        if every > 0 && self.state.step.is_multiple_of(every) && self.state.step != self.total {
            save_checkpoint(self.out, model, optimizer, &mut self.state)?;
        }
        Ok(())
    }

    /// Saves the backbone and logs and returns the summary.
    fn finish(mut self, model: SimClr<B>) -> Result<PretrainSummary> {
        self.bar.finish_and_clear();
        save_weights(model.valid().backbone, &self.out.join(BACKBONE_FILE))?;
        let (config, state) = (self.config, &self.state);
        let seconds = self.started.elapsed().as_secs_f64();
        let losses = &state.losses;
        let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len().max(1) as f32;
        let tail = (losses.len() / 10).max(1);
        let done = state.step - self.first_step;
        let summary = PretrainSummary {
            dir: self.out.to_path_buf(),
            method: config.method,
            objectives: config.objectives,
            steps: state.step,
            first_loss: mean(&losses[..self.steps_per_epoch.min(losses.len())]),
            final_loss: mean(&losses[losses.len().saturating_sub(tail)..]),
            seconds,
            images_per_second: (done * config.batch_size) as f64 / seconds,
            steady_images_per_second: self.warm_since.filter(|_| done > WARMUP_STEPS).map(
                |since| {
                    ((done - WARMUP_STEPS) * config.batch_size) as f64
                        / since.elapsed().as_secs_f64()
                },
            ),
            cross_image_pairs: state.pairs.0 as f64 / state.pairs.1.max(1) as f64,
            health: state.health.clone(),
        };
        self.log
            .write(&json!({"stage": "pretrain", "summary": &summary}))?;
        crate::runlog::write_metrics_csv(self.out)?;
        Ok(summary)
    }
}
