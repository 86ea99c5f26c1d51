//! Pretraining settings: the objectives and how pairs are formed, the backbone, views,
//! optimiser and schedule — with their defaults (the optimiser's learning rate and weight decay
//! depend on the optimiser and the batch size), their validation, and the optional form they
//! are given in. Nothing here reads data or trains.

use std::path::{Path, PathBuf};

use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use super::{settings_error, ResNetSettings};
use crate::augment::AugmentConfig;
use crate::data::SplitFile;
use crate::model::{ResNetConfig, SslHeads};
use crate::optim::OptimizerKind;
use crate::Result;

/// Self-supervised objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Two views of one image.
    #[default]
    Simclr,
    /// Views of two different images of one lesion / patient when it has several.
    Micle,
}

/// Weights of the self-supervised objectives; a run minimises their weighted sum (the review
/// of Huang et al. 2023 finds combinations beat single objectives). Zero turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objectives {
    /// NT-Xent between the two views (SimCLR or MICLe pairs) — the contrastive family.
    pub contrastive: f32,
    /// SimSiam: predictor + stop-gradient negative cosine, no negatives — works at small batch.
    pub simsiam: f32,
    /// Predict which of 0/90/180/270° a view was turned by — the innate-relationship family.
    pub rotation: f32,
    /// Masked-patch reconstruction: half of an 8×8 patch grid is blanked and a light decoder
    /// predicts the blanked patches' means — the generative / self-prediction family.
    pub reconstruction: f32,
}

impl Default for Objectives {
    fn default() -> Self {
        Self {
            contrastive: 1.0,
            simsiam: 0.0,
            rotation: 0.0,
            reconstruction: 0.0,
        }
    }
}

impl Objectives {
    fn named(&self) -> [(&'static str, f32); 4] {
        [
            ("contrastive", self.contrastive),
            ("simsiam", self.simsiam),
            ("rotation", self.rotation),
            ("reconstruction", self.reconstruction),
        ]
    }

    /// Parses `name=weight` pairs, e.g. `contrastive=1,rotation=0.5`; unnamed objectives get 0.
    pub fn parse(pairs: &[String]) -> std::result::Result<Self, String> {
        let mut o = Objectives {
            contrastive: 0.0,
            ..Objectives::default()
        };
        for pair in pairs {
            let (name, weight) = pair
                .split_once('=')
                .ok_or_else(|| format!("objective {pair:?}: expected NAME=WEIGHT"))?;
            let weight: f32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("objective {pair:?}: weight is not a number"))?;
            let slot = match name.trim() {
                "contrastive" => &mut o.contrastive,
                "simsiam" => &mut o.simsiam,
                "rotation" => &mut o.rotation,
                "reconstruction" => &mut o.reconstruction,
                other => {
                    return Err(format!(
                    "unknown objective {other:?} (contrastive, simsiam, rotation, reconstruction)"
                ))
                }
            };
            *slot = weight;
        }
        o.validate()?;
        Ok(o)
    }

    /// Weights must be finite, non-negative, and not all zero.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self
            .named()
            .iter()
            .any(|(_, w)| !(w.is_finite() && *w >= 0.0))
        {
            return Err(format!("objective weights must be ≥ 0: {self:?}"));
        }
        if self.named().iter().all(|(_, w)| *w == 0.0) {
            return Err("every objective weight is 0: nothing to learn".into());
        }
        Ok(())
    }

    /// The heads these objectives need.
    pub fn heads(&self) -> SslHeads {
        SslHeads {
            predictor: self.simsiam > 0.0,
            rotation: self.rotation > 0.0,
            reconstruction: self.reconstruction > 0.0,
        }
    }
}

/// Pretraining settings, complete; saved as the run's `config.json`. Read back (and given) as
/// [`PretrainSettings`], so a field a file leaves out takes its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PretrainSettings")]
pub struct PretrainConfig {
    /// Dataset folder or file (the split file's source, or where that data moved to).
    pub dataset: PathBuf,
    /// Split file (only its train partition is used).
    pub split: PathBuf,
    /// Leave unreadable images out (listing each) instead of stopping.
    pub skip_bad: bool,
    /// How positive pairs are formed (for the contrastive and SimSiam objectives).
    pub method: Method,
    /// Weights of the objectives summed into the loss.
    pub objectives: Objectives,
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
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Weight decay (decoupled for AdamW; L2 on weights, not biases or BatchNorm, for LARS).
    pub weight_decay: f32,
    /// Momentum (LARS and SGD).
    pub momentum: f64,
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
    /// Save a resumable checkpoint every this many steps (0: never).
    pub checkpoint_every: usize,
    /// Measure kNN accuracy and embedding spread every this many epochs (0: never).
    pub health_every: usize,
    /// At most this many training images form the kNN bank, and validation images the queries.
    pub health_images: usize,
    /// torchvision ImageNet weights (safetensors or PyTorch state dict) to start the backbone
    /// from instead of random weights; needs the ImageNet stem.
    pub init: Option<PathBuf>,
    /// Micro-batches per optimiser step: gradients of `batch_size / accumulation_steps` images
    /// at a time are summed, so memory follows the micro-batch. NT-Xent's negatives and
    /// BatchNorm's statistics come from each micro-batch, as in any accumulated contrastive
    /// run; what grows with `batch_size` is the averaging of gradients.
    pub accumulation_steps: usize,
}

impl PretrainConfig {
    /// The config with each path mapped by `f` (see [`crate::runlog::recorded_path`]).
    pub fn map_paths(&self, f: &impl Fn(&Path) -> PathBuf) -> Self {
        Self {
            dataset: f(&self.dataset),
            split: f(&self.split),
            init: self.init.as_deref().map(f),
            ..self.clone()
        }
    }

    /// The defaults, for a dataset and split: the one place each default is written.
    pub fn new(dataset: PathBuf, split: PathBuf) -> Self {
        let (optimizer, batch_size) = (OptimizerKind::Adamw, 128);
        Self {
            dataset,
            split,
            skip_bad: false,
            method: Method::Simclr,
            objectives: Objectives::default(),
            model: ResNetConfig::default(),
            image_size: 32,
            preprocess: None,
            augment: AugmentConfig::derm_ssl(),
            epochs: 10,
            batch_size,
            optimizer,
            learning_rate: Self::default_learning_rate(optimizer, batch_size),
            weight_decay: Self::default_weight_decay(optimizer),
            momentum: 0.9,
            warmup_fraction: 0.1,
            temperature: 0.2,
            projection_dim: 128,
            seed: 0,
            max_steps: None,
            checkpoint_every: 200,
            health_every: 1,
            health_images: 2000,
            init: None,
            accumulation_steps: 1,
        }
    }

    /// The peak learning rate when none is given: AdamW 1e-3; LARS and SGD scale with the
    /// batch as in SimCLR, 0.3·batch/256 and 0.1·batch/256.
    pub fn default_learning_rate(optimizer: OptimizerKind, batch_size: usize) -> f64 {
        let scaled = batch_size as f64 / 256.0;
        match optimizer {
            OptimizerKind::Adamw => 1e-3,
            OptimizerKind::Lars => 0.3 * scaled,
            OptimizerKind::Sgd => 0.1 * scaled,
        }
    }

    /// The weight decay when none is given: 1e-6 for LARS (SimCLR's), 1e-4 for AdamW and SGD.
    pub fn default_weight_decay(optimizer: OptimizerKind) -> f32 {
        match optimizer {
            OptimizerKind::Lars => 1e-6,
            OptimizerKind::Adamw | OptimizerKind::Sgd => 1e-4,
        }
    }

    /// Checks what can be checked without data or devices.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate()?;
        self.objectives.validate()?;
        if self.objectives.rotation > 0.0 && self.image_size == 0 {
            return Err("rotation prediction needs a square, non-empty input".into());
        }
        if self.batch_size < 2 || self.epochs == 0 {
            return Err("pretraining needs batch_size ≥ 2 and epochs ≥ 1".into());
        }
        Ok(())
    }

    /// Micro-batches per step on `devices` devices (`accumulation_steps × devices`), which
    /// must cut the batch into equal runs of at least 2 images.
    pub fn micro_batches(&self, devices: usize) -> std::result::Result<usize, String> {
        let micro_batches = self.accumulation_steps * devices;
        if self.accumulation_steps == 0
            || !self.batch_size.is_multiple_of(micro_batches)
            || self.batch_size / micro_batches < 2
        {
            return Err(format!(
                "accumulation_steps {} × {} device(s) must divide batch_size {} into micro-batches \
                 of at least 2 images",
                self.accumulation_steps, devices, self.batch_size
            ));
        }
        Ok(micro_batches)
    }
}

/// Pretraining settings as given — a config file, flags, or both — with every field optional
/// (see [`PretrainConfig`] for what each means); [`PretrainSettings::build`] fills the rest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSettings {
    /// Default: the dataset the split file names.
    pub dataset: Option<PathBuf>,
    /// Required.
    pub split: Option<PathBuf>,
    /// Leave unreadable images out.
    pub skip_bad: Option<bool>,
    /// Pair formation.
    pub method: Option<Method>,
    /// Objective weights.
    pub objectives: Option<Objectives>,
    /// Backbone, field by field.
    #[serde(default)]
    pub model: ResNetSettings,
    /// Input size in pixels.
    pub image_size: Option<u32>,
    /// Preprocessing (default: resolved from the training images).
    pub preprocess: Option<PreprocessConfig>,
    /// View augmentations.
    pub augment: Option<AugmentConfig>,
    /// Passes over the training images.
    pub epochs: Option<usize>,
    /// Images per step.
    pub batch_size: Option<usize>,
    /// Optimiser.
    pub optimizer: Option<OptimizerKind>,
    /// Default: [`PretrainConfig::default_learning_rate`] of the optimiser and batch size.
    pub learning_rate: Option<f64>,
    /// Default: [`PretrainConfig::default_weight_decay`] of the optimiser.
    pub weight_decay: Option<f32>,
    /// Momentum (LARS and SGD).
    pub momentum: Option<f64>,
    /// Warm-up fraction.
    pub warmup_fraction: Option<f64>,
    /// NT-Xent temperature.
    pub temperature: Option<f32>,
    /// Projection head output size.
    pub projection_dim: Option<usize>,
    /// Seed.
    pub seed: Option<u64>,
    /// Step cap.
    pub max_steps: Option<usize>,
    /// Checkpoint interval in steps.
    pub checkpoint_every: Option<usize>,
    /// Health interval in epochs.
    pub health_every: Option<usize>,
    /// Health bank and query size.
    pub health_images: Option<usize>,
    /// torchvision weights to start from.
    pub init: Option<PathBuf>,
    /// Micro-batches per step.
    pub accumulation_steps: Option<usize>,
    /// The file these settings were read from, for error messages.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

impl PretrainSettings {
    /// Reads settings from a TOML or JSON file (a finished run's `config.json` is one).
    pub fn read(path: &Path) -> Result<Self> {
        let settings: Self = super::read_settings_file(path)?;
        Ok(Self {
            origin: Some(path.to_path_buf()),
            ..settings
        })
    }

    /// These settings with every field `flags` sets replaced by the flag's value.
    pub fn overridden_by(self, flags: Self) -> Self {
        Self {
            dataset: flags.dataset.or(self.dataset),
            split: flags.split.or(self.split),
            skip_bad: flags.skip_bad.or(self.skip_bad),
            method: flags.method.or(self.method),
            objectives: flags.objectives.or(self.objectives),
            model: self.model.overridden_by(flags.model),
            image_size: flags.image_size.or(self.image_size),
            preprocess: flags.preprocess.or(self.preprocess),
            augment: flags.augment.or(self.augment),
            epochs: flags.epochs.or(self.epochs),
            batch_size: flags.batch_size.or(self.batch_size),
            optimizer: flags.optimizer.or(self.optimizer),
            learning_rate: flags.learning_rate.or(self.learning_rate),
            weight_decay: flags.weight_decay.or(self.weight_decay),
            momentum: flags.momentum.or(self.momentum),
            warmup_fraction: flags.warmup_fraction.or(self.warmup_fraction),
            temperature: flags.temperature.or(self.temperature),
            projection_dim: flags.projection_dim.or(self.projection_dim),
            seed: flags.seed.or(self.seed),
            max_steps: flags.max_steps.or(self.max_steps),
            checkpoint_every: flags.checkpoint_every.or(self.checkpoint_every),
            health_every: flags.health_every.or(self.health_every),
            health_images: flags.health_images.or(self.health_images),
            init: flags.init.or(self.init),
            accumulation_steps: flags.accumulation_steps.or(self.accumulation_steps),
            origin: self.origin.or(flags.origin),
        }
    }

    /// The complete, validated config: the dataset defaults to the one the split file names,
    /// every other field left out to its default.
    pub fn build(mut self) -> Result<PretrainConfig> {
        let origin = self.origin.clone();
        if let (None, Some(split)) = (&self.dataset, &self.split) {
            self.dataset = Some(SplitFile::read(split)?.source.path().to_path_buf());
        }
        let config = self
            .resolve()
            .map_err(|reason| settings_error(origin.as_deref(), reason))?;
        config
            .validate()
            .map_err(|reason| settings_error(origin.as_deref(), reason))?;
        Ok(config)
    }

    /// Fills every field left out with its default; the optimiser's defaults follow the
    /// optimiser and batch size actually chosen.
    fn resolve(self) -> std::result::Result<PretrainConfig, String> {
        let (Some(dataset), Some(split)) = (self.dataset, self.split) else {
            return Err("pretraining settings need `dataset` and `split` (--split)".into());
        };
        let d = PretrainConfig::new(dataset, split);
        let optimizer = self.optimizer.unwrap_or(d.optimizer);
        let batch_size = self.batch_size.unwrap_or(d.batch_size);
        Ok(PretrainConfig {
            skip_bad: self.skip_bad.unwrap_or(d.skip_bad),
            method: self.method.unwrap_or(d.method),
            objectives: self.objectives.unwrap_or(d.objectives),
            model: self.model.over(d.model),
            image_size: self.image_size.unwrap_or(d.image_size),
            preprocess: self.preprocess.or(d.preprocess),
            augment: self.augment.unwrap_or(d.augment),
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size,
            optimizer,
            learning_rate: self
                .learning_rate
                .unwrap_or_else(|| PretrainConfig::default_learning_rate(optimizer, batch_size)),
            weight_decay: self
                .weight_decay
                .unwrap_or_else(|| PretrainConfig::default_weight_decay(optimizer)),
            momentum: self.momentum.unwrap_or(d.momentum),
            warmup_fraction: self.warmup_fraction.unwrap_or(d.warmup_fraction),
            temperature: self.temperature.unwrap_or(d.temperature),
            projection_dim: self.projection_dim.unwrap_or(d.projection_dim),
            seed: self.seed.unwrap_or(d.seed),
            max_steps: self.max_steps.or(d.max_steps),
            checkpoint_every: self.checkpoint_every.unwrap_or(d.checkpoint_every),
            health_every: self.health_every.unwrap_or(d.health_every),
            health_images: self.health_images.unwrap_or(d.health_images),
            init: self.init.or(d.init),
            accumulation_steps: self.accumulation_steps.unwrap_or(d.accumulation_steps),
            ..d
        })
    }
}

impl TryFrom<PretrainSettings> for PretrainConfig {
    type Error = String;

    fn try_from(settings: PretrainSettings) -> std::result::Result<Self, String> {
        settings.resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_validate_and_name_their_heads() {
        let o = Objectives::parse(&["contrastive=1".into(), "rotation=0.5".into()]).unwrap();
        assert_eq!((o.contrastive, o.rotation, o.simsiam), (1.0, 0.5, 0.0));
        assert!(o.heads().rotation && !o.heads().predictor);
        assert!(Objectives::parse(&["contrastive=0".into()]).is_err());
        assert!(Objectives::parse(&["jigsaw=1".into()]).is_err());
        assert!(Objectives::parse(&["rotation=-1".into()]).is_err());
    }

    #[test]
    fn a_saved_config_reads_back_unchanged_and_a_sparse_one_takes_the_defaults() {
        let mut config = PretrainConfig::new("data".into(), "split.json".into());
        config.optimizer = OptimizerKind::Lars;
        config.max_steps = Some(7);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<PretrainConfig>(&json).unwrap(),
            config
        );
        let sparse: PretrainConfig =
            serde_json::from_str(r#"{"dataset": "data", "split": "split.json"}"#).unwrap();
        assert_eq!(
            sparse,
            PretrainConfig::new("data".into(), "split.json".into())
        );
        assert!(serde_json::from_str::<PretrainConfig>(r#"{"split": "s"}"#).is_err());
        assert!(serde_json::from_str::<PretrainConfig>(
            r#"{"dataset": "d", "split": "s", "lr": 1}"#
        )
        .is_err());
    }

    #[test]
    fn the_optimiser_sets_the_default_learning_rate_and_weight_decay_from_a_file_or_flags() {
        let given = |optimizer, batch_size, learning_rate| PretrainSettings {
            dataset: Some("d".into()),
            split: Some("s".into()),
            optimizer: Some(optimizer),
            batch_size,
            learning_rate,
            ..PretrainSettings::default()
        };
        let lars = given(OptimizerKind::Lars, Some(512), None).build().unwrap();
        assert_eq!((lars.learning_rate, lars.weight_decay), (0.3 * 2.0, 1e-6));
        let sgd = given(OptimizerKind::Sgd, None, None).build().unwrap();
        assert_eq!((sgd.learning_rate, sgd.weight_decay), (0.1 * 0.5, 1e-4));
        let adamw = given(OptimizerKind::Adamw, Some(64), None).build().unwrap();
        assert_eq!((adamw.learning_rate, adamw.weight_decay), (1e-3, 1e-4));
        // Flags over a file: the file's optimiser, the flag's batch size, the default rate of
        // both together.
        let file = given(OptimizerKind::Lars, Some(256), None);
        let flags = PretrainSettings {
            batch_size: Some(128),
            ..PretrainSettings::default()
        };
        let merged = file.overridden_by(flags).build().unwrap();
        assert_eq!((merged.batch_size, merged.learning_rate), (128, 0.15));
        let explicit = given(OptimizerKind::Lars, None, Some(0.01))
            .build()
            .unwrap();
        assert_eq!(explicit.learning_rate, 0.01);
        let bad = PretrainSettings {
            batch_size: Some(1),
            ..given(OptimizerKind::Adamw, None, None)
        };
        assert!(bad
            .build()
            .unwrap_err()
            .to_string()
            .contains("batch_size ≥ 2"));
    }
}
