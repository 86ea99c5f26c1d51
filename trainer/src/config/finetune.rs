//! Fine-tuning settings: where it starts (a pretraining run, random weights, or — for
//! quantisation-aware training — a fine-tuned run), what it trains, on which labels, and the
//! schedule — with their defaults, their validation, and the optional form they are given in.
//! Nothing here reads data or trains.

use std::path::{Path, PathBuf};

use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use super::{present_or_null, settings_error, PretrainConfig, ResNetSettings};
use crate::augment::AugmentConfig;
use crate::data::{SampleFilter, SplitFile};
use crate::int8_calibration::CalibrationMethod;
use crate::model::ResNetConfig;
use crate::Result;

/// Fine-tuning settings, complete; saved as the run's `config.json`. Read back (and given) as
/// [`FinetuneSettings`], so a field a file leaves out takes its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FinetuneSettings")]
pub struct FinetuneConfig {
    /// Dataset folder or file (the split file's source, or where that data moved to).
    pub dataset: PathBuf,
    /// Split file.
    pub split: PathBuf,
    /// Fraction of the training partition's labels used (its nested, stratified subset).
    pub label_fraction: f64,
    /// Leave unreadable images out (listing each) instead of stopping.
    pub skip_bad: bool,
    /// Pretraining run directory to start from; `None` trains from scratch.
    pub pretrained: Option<PathBuf>,
    /// The pretraining run's resolved config (filled in when `pretrained` is set).
    pub pretrain_config: Option<PretrainConfig>,
    /// Backbone (taken from the pretraining run when there is one).
    pub model: ResNetConfig,
    /// Input size in pixels (taken from the pretraining run when there is one).
    pub image_size: u32,
    /// Preprocessing (taken from the pretraining run, or resolved from the training images).
    pub preprocess: Option<PreprocessConfig>,
    /// Class names in label order (filled in from the dataset).
    pub class_names: Vec<String>,
    /// Training augmentations.
    pub augment: AugmentConfig,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Warm-up fraction of the cosine schedule.
    pub warmup_fraction: f64,
    /// Seed.
    pub seed: u64,
    /// Stop after this many steps; all epochs when absent.
    pub max_steps: Option<usize>,
    /// What is trained.
    pub mode: FinetuneMode,
    /// Loss weights against class imbalance.
    pub class_weights: ClassWeights,
    /// Stop after this many epochs without a better validation macro AUC (`None`: never).
    pub patience: Option<usize>,
    /// Fine-tune (and select on validation) only this sub-population.
    pub train_where: Option<SampleFilter>,
    /// Validate (and keep the best checkpoint) every this many epochs, and after the last.
    pub validate_every: usize,
    /// Quantisation-aware training: continue a fine-tuned run with int8 rounding in the
    /// forward pass.
    pub qat: Option<QatConfig>,
}

/// Quantisation-aware fine-tuning (`finetune --qat RUN`), for when post-training quantisation
/// loses too much: the fine-tuned run continues with every weight tensor rounded to its int8
/// grid (per output channel, as exported) and every activation to its int8 range in the
/// forward pass, gradients passing straight through the rounding. The activation ranges are
/// calibrated once, on the float model, and held fixed; the export then quantises the result
/// as usual (trying every calibration method).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "QatSettings")]
pub struct QatConfig {
    /// The fine-tuned run continued (its weights, model, input size, preprocessing, classes).
    pub from: PathBuf,
    /// How the activation ranges are calibrated.
    pub calibration: CalibrationMethod,
    /// Training images they are calibrated on, spread over the training partition.
    pub calibration_images: usize,
}

impl QatConfig {
    /// The defaults, continuing the run `from`.
    pub fn new(from: PathBuf) -> Self {
        Self {
            from,
            calibration: CalibrationMethod::Percentile(99.99),
            calibration_images: 256,
        }
    }
}

/// What fine-tuning trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FinetuneMode {
    /// Backbone and head, end to end, on augmented images.
    #[default]
    Full,
    /// The head only, on the frozen backbone's features of the unaugmented images (computed
    /// once; BatchNorm uses its running statistics): the standard linear evaluation of
    /// self-supervised features.
    LinearProbe,
}

/// Cross-entropy class weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeights {
    /// Every image counts the same.
    #[default]
    None,
    /// Each class weighs `N / (K · n_class)` over the labelled training images, so every
    /// class contributes equally (HAM10000: 67 % of images are naevi).
    Balanced,
}

impl FinetuneConfig {
    /// The config with each path mapped by `f`, the pretraining run's config included (see
    /// [`crate::runlog::recorded_path`]).
    pub fn map_paths(&self, f: &impl Fn(&Path) -> PathBuf) -> Self {
        Self {
            dataset: f(&self.dataset),
            split: f(&self.split),
            pretrained: self.pretrained.as_deref().map(f),
            pretrain_config: self.pretrain_config.as_ref().map(|c| c.map_paths(f)),
            ..self.clone()
        }
    }

    /// The defaults, for a dataset and split, starting from a pretraining run or (`None`) from
    /// scratch: the one place each default is written.
    pub fn new(dataset: PathBuf, split: PathBuf, pretrained: Option<PathBuf>) -> Self {
        Self {
            dataset,
            split,
            label_fraction: 1.0,
            skip_bad: false,
            pretrained,
            pretrain_config: None,
            model: ResNetConfig::default(),
            image_size: 32,
            preprocess: None,
            class_names: Vec::new(),
            augment: AugmentConfig::finetune(),
            epochs: 5,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            warmup_fraction: 0.05,
            seed: 0,
            max_steps: None,
            mode: FinetuneMode::Full,
            class_weights: ClassWeights::None,
            patience: None,
            train_where: None,
            validate_every: 1,
            qat: None,
        }
    }

    /// Checks what can be checked without data.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.qat.is_some()
            && (self.pretrained.is_some() || self.mode == FinetuneMode::LinearProbe)
        {
            return Err(
                "quantisation-aware training continues a fully fine-tuned run: no pretrained \
                 run, no linear probe"
                    .into(),
            );
        }
        self.model.validate()?;
        if self.batch_size < 2 || self.epochs == 0 {
            return Err("fine-tuning needs batch_size ≥ 2 and epochs ≥ 1".into());
        }
        if !(self.label_fraction > 0.0 && self.label_fraction <= 1.0) {
            return Err(format!(
                "label fraction {} must be in (0, 1]",
                self.label_fraction
            ));
        }
        Ok(())
    }
}

/// Quantisation-aware training as given; it runs when `from` is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatSettings {
    /// The fine-tuned run to continue.
    pub from: Option<PathBuf>,
    /// Calibration method of the activation ranges.
    pub calibration: Option<CalibrationMethod>,
    /// Training images calibrated on.
    pub calibration_images: Option<usize>,
}

impl QatSettings {
    /// These settings with every field `flags` sets replaced by the flag's value.
    pub fn overridden_by(self, flags: Self) -> Self {
        Self {
            from: flags.from.or(self.from),
            calibration: flags.calibration.or(self.calibration),
            calibration_images: flags.calibration_images.or(self.calibration_images),
        }
    }

    /// The config, when `from` is set.
    fn resolve(self) -> Option<QatConfig> {
        let d = QatConfig::new(self.from?);
        Some(QatConfig {
            calibration: self.calibration.unwrap_or(d.calibration),
            calibration_images: self.calibration_images.unwrap_or(d.calibration_images),
            ..d
        })
    }
}

impl TryFrom<QatSettings> for QatConfig {
    type Error = String;

    fn try_from(settings: QatSettings) -> std::result::Result<Self, String> {
        settings
            .resolve()
            .ok_or_else(|| "quantisation-aware training needs `from`".into())
    }
}

/// Fine-tuning settings as given — a config file, flags, or both — with every field optional
/// (see [`FinetuneConfig`] for what each means); [`FinetuneSettings::build`] fills the rest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSettings {
    /// Default: the dataset the split file names.
    pub dataset: Option<PathBuf>,
    /// Required.
    pub split: Option<PathBuf>,
    /// Label fraction.
    pub label_fraction: Option<f64>,
    /// Leave unreadable images out.
    pub skip_bad: Option<bool>,
    /// The pretraining run; `Some(None)` (`null`, `--from-scratch`) says random weights.
    #[serde(default, deserialize_with = "present_or_null")]
    pub pretrained: Option<Option<PathBuf>>,
    /// The pretraining run's config (filled in by fine-tuning itself).
    pub pretrain_config: Option<PretrainConfig>,
    /// Backbone, field by field (from scratch; a pretraining run brings its own).
    #[serde(default)]
    pub model: ResNetSettings,
    /// Input size in pixels (from scratch).
    pub image_size: Option<u32>,
    /// Preprocessing.
    pub preprocess: Option<PreprocessConfig>,
    /// Class names (filled in from the dataset).
    pub class_names: Option<Vec<String>>,
    /// Training augmentations.
    pub augment: Option<AugmentConfig>,
    /// Passes over the training images.
    pub epochs: Option<usize>,
    /// Images per step.
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    pub learning_rate: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f32>,
    /// Warm-up fraction.
    pub warmup_fraction: Option<f64>,
    /// Seed.
    pub seed: Option<u64>,
    /// Step cap.
    pub max_steps: Option<usize>,
    /// What is trained.
    pub mode: Option<FinetuneMode>,
    /// Class weights.
    pub class_weights: Option<ClassWeights>,
    /// Early-stopping patience in epochs.
    pub patience: Option<usize>,
    /// Sub-population trained on.
    pub train_where: Option<SampleFilter>,
    /// Validation interval in epochs.
    pub validate_every: Option<usize>,
    /// Quantisation-aware training.
    pub qat: Option<QatSettings>,
    /// The file these settings were read from, for error messages.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

impl FinetuneSettings {
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
            label_fraction: flags.label_fraction.or(self.label_fraction),
            skip_bad: flags.skip_bad.or(self.skip_bad),
            pretrained: flags.pretrained.or(self.pretrained),
            pretrain_config: flags.pretrain_config.or(self.pretrain_config),
            model: self.model.overridden_by(flags.model),
            image_size: flags.image_size.or(self.image_size),
            preprocess: flags.preprocess.or(self.preprocess),
            class_names: flags.class_names.or(self.class_names),
            augment: flags.augment.or(self.augment),
            epochs: flags.epochs.or(self.epochs),
            batch_size: flags.batch_size.or(self.batch_size),
            learning_rate: flags.learning_rate.or(self.learning_rate),
            weight_decay: flags.weight_decay.or(self.weight_decay),
            warmup_fraction: flags.warmup_fraction.or(self.warmup_fraction),
            seed: flags.seed.or(self.seed),
            max_steps: flags.max_steps.or(self.max_steps),
            mode: flags.mode.or(self.mode),
            class_weights: flags.class_weights.or(self.class_weights),
            patience: flags.patience.or(self.patience),
            train_where: flags.train_where.or(self.train_where),
            validate_every: flags.validate_every.or(self.validate_every),
            qat: match (self.qat, flags.qat) {
                (Some(file), Some(flags)) => Some(file.overridden_by(flags)),
                (file, flags) => flags.or(file),
            },
            origin: self.origin.or(flags.origin),
        }
    }

    /// The complete, validated config: the dataset defaults to the one the split file names,
    /// every other field left out to its default.
    pub fn build(mut self) -> Result<FinetuneConfig> {
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

    /// Fills every field left out with its default.
    fn resolve(self) -> std::result::Result<FinetuneConfig, String> {
        let (Some(dataset), Some(split)) = (self.dataset, self.split) else {
            return Err("fine-tuning settings need `dataset` and `split` (--split)".into());
        };
        let d = FinetuneConfig::new(dataset, split, self.pretrained.flatten());
        Ok(FinetuneConfig {
            label_fraction: self.label_fraction.unwrap_or(d.label_fraction),
            skip_bad: self.skip_bad.unwrap_or(d.skip_bad),
            pretrain_config: self.pretrain_config.or(d.pretrain_config),
            model: self.model.over(d.model),
            image_size: self.image_size.unwrap_or(d.image_size),
            preprocess: self.preprocess.or(d.preprocess),
            class_names: self.class_names.unwrap_or(d.class_names),
            augment: self.augment.unwrap_or(d.augment),
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            warmup_fraction: self.warmup_fraction.unwrap_or(d.warmup_fraction),
            seed: self.seed.unwrap_or(d.seed),
            max_steps: self.max_steps.or(d.max_steps),
            mode: self.mode.unwrap_or(d.mode),
            class_weights: self.class_weights.unwrap_or(d.class_weights),
            patience: self.patience.or(d.patience),
            train_where: self.train_where.or(d.train_where),
            validate_every: self.validate_every.unwrap_or(d.validate_every),
            qat: self.qat.and_then(QatSettings::resolve).or(d.qat),
            ..d
        })
    }
}

impl TryFrom<FinetuneSettings> for FinetuneConfig {
    type Error = String;

    fn try_from(settings: FinetuneSettings) -> std::result::Result<Self, String> {
        settings.resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_config_reads_back_unchanged_and_flags_override_a_file() {
        let mut config = FinetuneConfig::new("d".into(), "s".into(), Some("pre".into()));
        config.qat = Some(QatConfig::new("ft".into()));
        config.class_names = vec!["a".into(), "b".into()];
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<FinetuneConfig>(&json).unwrap(),
            config
        );

        let file: FinetuneSettings = toml::from_str(
            "dataset = \"d\"\nsplit = \"s\"\npretrained = \"pre\"\nepochs = 9\n\
             [qat]\nfrom = \"ft\"\n",
        )
        .unwrap();
        let flags = FinetuneSettings {
            pretrained: Some(None),
            epochs: Some(2),
            qat: Some(QatSettings {
                calibration: Some(CalibrationMethod::Entropy),
                ..QatSettings::default()
            }),
            ..FinetuneSettings::default()
        };
        let merged = file.overridden_by(flags).resolve().unwrap();
        assert_eq!((merged.pretrained, merged.epochs), (None, 2));
        let qat = merged.qat.unwrap();
        assert_eq!(
            (qat.from, qat.calibration),
            ("ft".into(), CalibrationMethod::Entropy)
        );
        assert_eq!(qat.calibration_images, 256);
    }
}
