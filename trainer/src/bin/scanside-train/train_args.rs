//! Arguments of the commands that train — `pretrain`, `finetune`, `demo`, `study` — and how
//! they become the library's settings. Each takes `--config FILE` (the settings' fields, each
//! optional); a flag given as well overrides the file, and what neither gives takes the
//! library's default, which `--help` shows. No default is written here.

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Args, Subcommand, ValueEnum};
use scanside_trainer::augment::Preset;
use scanside_trainer::config::{
    ClassWeights, DemoConfig, DemoSettings, FinetuneConfig, FinetuneMode, FinetuneSettings, Method,
    Objectives, PretrainConfig, PretrainSettings, QatConfig, QatSettings, ResNetSettings,
    StudyConfig,
};
use scanside_trainer::data::SampleFilter;
use scanside_trainer::int8_calibration::CalibrationMethod;
use scanside_trainer::optim::OptimizerKind;

use crate::help::{with_default, with_default_value};
use crate::usage;

/// The library's defaults, shown in `--help`.
static PRETRAIN: LazyLock<PretrainConfig> =
    LazyLock::new(|| PretrainConfig::new(PathBuf::new(), PathBuf::new()));
static FINETUNE: LazyLock<FinetuneConfig> =
    LazyLock::new(|| FinetuneConfig::new(PathBuf::new(), PathBuf::new(), None));
static QAT: LazyLock<QatConfig> = LazyLock::new(|| QatConfig::new(PathBuf::new()));
static DEMO: LazyLock<DemoConfig> = LazyLock::new(|| DemoConfig::new(PathBuf::new()));

const CONFIG_HELP: &str = "The configuration from a TOML or JSON file: the fields of a run's \
    config.json, each optional (missing ones take their defaults); flags given as well override \
    it";
const DEMO_CONFIG_HELP: &str = "The demo's settings from a TOML or JSON file (out, data, \
    image_size, width_multiplier, pretrain_epochs, finetune_epochs, max_steps, screen_images, \
    runtime_binary, seed; each optional); flags given as well override it";

fn optimiser_help() -> String {
    let lr = |o| PretrainConfig::default_learning_rate(o, 256);
    with_default_value(
        &format!(
            "Optimiser (default learning rates: AdamW {:e}, LARS {}·batch/256, SGD {}·batch/256)",
            lr(OptimizerKind::Adamw),
            lr(OptimizerKind::Lars),
            lr(OptimizerKind::Sgd)
        ),
        PRETRAIN.optimizer,
    )
}

fn weight_decay_help() -> String {
    let wd = PretrainConfig::default_weight_decay;
    format!(
        "Weight decay (default: {:e} for AdamW and SGD, {:e} for LARS)",
        wd(OptimizerKind::Adamw),
        wd(OptimizerKind::Lars)
    )
}

/// Block type of the backbone.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// Standard ResNet blocks.
    Resnet,
    /// Depthwise-separable blocks.
    Micro,
}

/// ResNet stem.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stem {
    /// 3×3 stride-1 convolution, no max-pool.
    Small,
    /// torchvision's 7×7 stride-2 convolution + 3×3 stride-2 max-pool.
    Imagenet,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Split file from `scanside-train data split` (it names the dataset).
    #[arg(long, required_unless_present_any = ["resume", "config"])]
    split: Option<PathBuf>,
    /// The dataset, when it moved since the split was made.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Leave unreadable images out, listing each, instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Run directory to write (or, with --resume, to continue).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint, with its saved configuration.
    #[arg(long)]
    resume: bool,
    #[arg(long, conflicts_with = "resume", help = CONFIG_HELP)]
    config: Option<PathBuf>,
    /// Objective weights NAME=WEIGHT, comma-separated or repeated (contrastive, simsiam,
    /// rotation, reconstruction), e.g. contrastive=1,rotation=0.5. Default contrastive=1.
    #[arg(long, value_delimiter = ',')]
    objective: Vec<String>,
    #[arg(long, value_enum, help = with_default_value(
        "Self-supervised objective", PRETRAIN.method
    ))]
    method: Option<Method>,
    #[arg(long, value_enum, help = optimiser_help())]
    optimizer: Option<OptimizerKind>,
    #[arg(long, help = weight_decay_help())]
    weight_decay: Option<f32>,
    #[arg(long, help = with_default(
        "Save a resumable checkpoint every N steps (0: never)", PRETRAIN.checkpoint_every
    ))]
    checkpoint_every: Option<usize>,
    #[arg(long, help = with_default(
        "Measure kNN accuracy and embedding spread every N epochs (0: never)",
        PRETRAIN.health_every
    ))]
    health_every: Option<usize>,
    #[arg(long, help = with_default("Passes over the training images", PRETRAIN.epochs))]
    epochs: Option<usize>,
    #[arg(long, help = with_default(
        "Images per step (each gives two views)", PRETRAIN.batch_size
    ))]
    batch_size: Option<usize>,
    /// Peak learning rate (default: the optimiser's, see --optimizer).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, help = with_default(
        "Seed of initialisation, shuffling and augmentation", PRETRAIN.seed
    ))]
    seed: Option<u64>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, help = with_default("ResNet depth (18, 34 or 50)", PRETRAIN.model.depth))]
    depth: Option<usize>,
    #[arg(long, value_enum, help = with_default_value(
        "Block type: `resnet` (3×3 + 3×3 basic blocks) or `micro` (depthwise-separable blocks, \
         ~8× fewer MACs: for the `mcu` export target). Fine-tuning keeps it",
        if PRETRAIN.model.separable { Arch::Micro } else { Arch::Resnet }
    ))]
    arch: Option<Arch>,
    #[arg(long, help = with_default(
        "Width multiplier of the ResNet stages", PRETRAIN.model.width_multiplier
    ))]
    width: Option<f32>,
    #[arg(long, value_enum, help = with_default_value(
        "Stem: `small` (3×3, stride 1, no max-pool; for 28–128 px) or torchvision's `imagenet` \
         (7×7 stride 2 + max-pool; needed by --init)",
        if PRETRAIN.model.small_input_stem { Stem::Small } else { Stem::Imagenet }
    ))]
    stem: Option<Stem>,
    /// Start from torchvision ImageNet weights (.safetensors, or a PyTorch .pth state dict)
    /// of the same depth and width: the paper's ImageNet-then-medical recipe.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long, help = with_default(
        "Gradient accumulation: split each batch into this many micro-batches (memory of one \
         micro-batch, one optimiser step per batch)",
        PRETRAIN.accumulation_steps
    ))]
    accumulate: Option<usize>,
    #[arg(long, help = with_default("Input size in pixels", PRETRAIN.image_size))]
    image_size: Option<u32>,
    #[arg(long, help = with_default("NT-Xent temperature", PRETRAIN.temperature))]
    temperature: Option<f32>,
    #[arg(long, value_enum, help = with_default_value(
        "Augmentation preset for the views", Preset::default()
    ))]
    preset: Option<Preset>,
}

/// What `pretrain` does: continue a run, or start one.
pub enum PretrainPlan {
    /// Continue the run in this directory from its latest checkpoint.
    Resume(PathBuf),
    /// Pretrain with this config into this directory.
    Run(Box<PretrainConfig>, PathBuf),
}

impl PretrainArgs {
    /// The plan: `--resume`, or the `--config` file's settings under the flags, validated.
    pub fn plan(self) -> anyhow::Result<PretrainPlan> {
        if self.resume {
            return Ok(PretrainPlan::Resume(self.out));
        }
        let file = match &self.config {
            Some(path) => PretrainSettings::read(path)?,
            None => PretrainSettings::default(),
        };
        let config = file.overridden_by(self.flags()?).build()?;
        Ok(PretrainPlan::Run(Box::new(config), self.out))
    }

    /// The settings the flags give.
    fn flags(&self) -> anyhow::Result<PretrainSettings> {
        let objectives = (!self.objective.is_empty())
            .then(|| Objectives::parse(&self.objective))
            .transpose()
            .map_err(usage)?;
        Ok(PretrainSettings {
            dataset: self.data.clone(),
            split: self.split.clone(),
            skip_bad: self.skip_bad.then_some(true),
            method: self.method,
            objectives,
            model: ResNetSettings {
                depth: self.depth,
                width_multiplier: self.width,
                in_channels: None,
                small_input_stem: self.stem.map(|s| s == Stem::Small),
                separable: self.arch.map(|a| a == Arch::Micro),
            },
            image_size: self.image_size,
            augment: self.preset.map(Preset::ssl),
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            learning_rate: self.lr,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            seed: self.seed,
            max_steps: self.max_steps,
            checkpoint_every: self.checkpoint_every,
            health_every: self.health_every,
            init: self.init.clone(),
            accumulation_steps: self.accumulate,
            ..PretrainSettings::default()
        })
    }
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// Split file from `scanside-train data split` (it names the dataset).
    #[arg(long, required_unless_present = "config")]
    split: Option<PathBuf>,
    /// The dataset, when it moved since the split was made (its content must not change).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Leave unreadable images out, listing each, instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Run directory to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, help = CONFIG_HELP)]
    config: Option<PathBuf>,
    /// Pretraining run directory to start from.
    #[arg(
        long,
        conflicts_with_all = ["from_scratch", "qat"],
        required_unless_present_any = ["from_scratch", "qat", "config"]
    )]
    pretrained: Option<PathBuf>,
    /// Start from random weights.
    #[arg(long, conflicts_with = "qat")]
    from_scratch: bool,
    /// Quantisation-aware training: continue this fine-tuned run with int8 rounding of
    /// weights and activations in the forward pass (use a few epochs and a small
    /// --lr, e.g. 1e-4), then export the new run.
    #[arg(long, value_name = "RUN")]
    qat: Option<PathBuf>,
    #[arg(long, value_parser = CalibrationMethod::parse, help = with_default(
        "How --qat calibrates the activation ranges it holds fixed: minmax, percentile-P or \
         entropy",
        QAT.calibration.name()
    ))]
    qat_calibration: Option<CalibrationMethod>,
    #[arg(long, help = with_default(
        "Training images --qat calibrates on", QAT.calibration_images
    ))]
    qat_calibration_images: Option<usize>,
    #[arg(long, help = with_default("Passes over the training images", FINETUNE.epochs))]
    epochs: Option<usize>,
    #[arg(long, help = with_default("Images per step", FINETUNE.batch_size))]
    batch_size: Option<usize>,
    #[arg(long, help = with_default("Peak learning rate", FINETUNE.learning_rate))]
    lr: Option<f64>,
    #[arg(long, help = with_default(
        "Seed of initialisation, shuffling and augmentation", FINETUNE.seed
    ))]
    seed: Option<u64>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, help = with_default(
        "Input size when training from scratch", FINETUNE.image_size
    ))]
    image_size: Option<u32>,
    #[arg(long, help = with_default(
        "Fraction of the training labels to use (nested, stratified subset of the split)",
        FINETUNE.label_fraction
    ))]
    label_fraction: Option<f64>,
    #[arg(long, value_enum, help = with_default_value(
        "Augmentation preset (its fine-tuning set)", Preset::default()
    ))]
    preset: Option<Preset>,
    #[arg(long, value_enum, help = with_default_value(
        "`full` (backbone and head) or `linear-probe` (head on frozen features)", FINETUNE.mode
    ))]
    mode: Option<FinetuneMode>,
    #[arg(long, value_enum, help = with_default_value(
        "Cross-entropy class weights: `none` or `balanced` (N / (K·n_class))",
        FINETUNE.class_weights
    ))]
    class_weights: Option<ClassWeights>,
    /// Stop after N epochs without a better validation macro AUC.
    #[arg(long)]
    patience: Option<usize>,
    /// Fine-tune on a sub-population only, COLUMN=VALUE[,VALUE...] of the manifest (e.g.
    /// view=PA); evaluate elsewhere with `evaluate --where`.
    #[arg(long = "where", value_name = "COLUMN=VALUES")]
    train_where: Option<String>,
}

impl FinetuneArgs {
    /// The `--config` file's settings under the flags, validated, and the run directory.
    pub fn config(self) -> anyhow::Result<(FinetuneConfig, PathBuf)> {
        let file = match &self.config {
            Some(path) => FinetuneSettings::read(path)?,
            None => FinetuneSettings::default(),
        };
        let config = file.overridden_by(self.flags()?).build()?;
        Ok((config, self.out))
    }

    /// The settings the flags give.
    fn flags(&self) -> anyhow::Result<FinetuneSettings> {
        let qat_given = self.qat.is_some()
            || self.qat_calibration.is_some()
            || self.qat_calibration_images.is_some();
        let train_where = self
            .train_where
            .as_deref()
            .map(SampleFilter::parse)
            .transpose()
            .map_err(usage)?;
        Ok(FinetuneSettings {
            dataset: self.data.clone(),
            split: self.split.clone(),
            label_fraction: self.label_fraction,
            skip_bad: self.skip_bad.then_some(true),
            pretrained: match (&self.pretrained, self.from_scratch) {
                (_, true) => Some(None),
                (dir, false) => dir.clone().map(Some),
            },
            image_size: self.image_size,
            augment: self.preset.map(Preset::finetune),
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            seed: self.seed,
            max_steps: self.max_steps,
            mode: self.mode,
            class_weights: self.class_weights,
            patience: self.patience,
            train_where,
            qat: qat_given.then(|| QatSettings {
                from: self.qat.clone(),
                calibration: self.qat_calibration,
                calibration_images: self.qat_calibration_images,
            }),
            ..FinetuneSettings::default()
        })
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, required_unless_present = "config")]
    out: Option<PathBuf>,
    #[arg(long, help = DEMO_CONFIG_HELP)]
    config: Option<PathBuf>,
    /// Dataset (default: $SCANSIDE_DATA/ham10000, ../shared/data/ham10000, or DermaMNIST).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, help = with_default("Input size in pixels", DEMO.image_size))]
    image_size: Option<u32>,
    #[arg(long, help = with_default("ResNet-18 width multiplier", DEMO.width_multiplier))]
    width: Option<f32>,
    #[arg(long, help = with_default("Pretraining epochs", DEMO.pretrain_epochs))]
    pretrain_epochs: Option<usize>,
    #[arg(long, help = with_default("Fine-tuning epochs", DEMO.finetune_epochs))]
    finetune_epochs: Option<usize>,
    /// Cap on steps per training stage (quick runs).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, help = with_default(
        "Held-out images to screen with the runtime", DEMO.screen_images
    ))]
    screen: Option<usize>,
    /// Path of the `scanside` binary (default: beside this executable).
    #[arg(long)]
    runtime: Option<PathBuf>,
    #[arg(long, help = with_default("Seed", DEMO.seed))]
    seed: Option<u64>,
}

impl DemoArgs {
    /// The `--config` file's settings under the flags, validated.
    pub fn config(self) -> anyhow::Result<DemoConfig> {
        let file = match &self.config {
            Some(path) => DemoSettings::read(path)?,
            None => DemoSettings::default(),
        };
        let flags = DemoSettings {
            out: self.out,
            data: self.data,
            image_size: self.image_size,
            width_multiplier: self.width,
            pretrain_epochs: self.pretrain_epochs,
            finetune_epochs: self.finetune_epochs,
            max_steps: self.max_steps,
            screen_images: self.screen,
            runtime_binary: self.runtime,
            seed: self.seed,
            origin: None,
        };
        Ok(file.overridden_by(flags).build()?)
    }
}

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Fine-tune and evaluate every pretraining × label fraction × seed cell (resumable:
    /// finished cells are kept), then write table.md, results.json, plots and index.html.
    #[command(after_help = crate::examples::STUDY_LABEL_EFFICIENCY)]
    LabelEfficiency(LabelEfficiencyArgs),
}

#[derive(Args)]
pub struct LabelEfficiencyArgs {
    /// Study configuration (TOML or JSON): split, pretrained runs by name, fractions,
    /// seeds, epochs, ... (see docs/results.md for the one used there).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (re-run with the same folder to resume).
    #[arg(long)]
    pub out: PathBuf,
}

impl LabelEfficiencyArgs {
    /// The study's configuration, read from `--config`.
    pub fn config(&self) -> anyhow::Result<StudyConfig> {
        Ok(StudyConfig::read(&self.config)?)
    }
}
