//! Run directories as later stages find them: the file names a pretraining or fine-tuning run
//! leaves behind, and loading a finished run back — its config, its backbone, its classifier,
//! its evaluation. The contract between the stage that writes a run and the stages that read
//! it; nothing here trains or evaluates. Paths in a run's config are recorded relative to the
//! run directory and resolved against it on reading, so a run works from any working
//! directory.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::{FinetuneConfig, PretrainConfig};
use crate::model::{Classifier, ResNet};
use crate::runlog::{load_json, load_weights, recorded_path, resolved_path, save_json};
use crate::{Error, Result};

/// The run's resolved config, as JSON.
pub const CONFIG_FILE: &str = "config.json";
/// A pretraining run's backbone weights.
pub const BACKBONE_FILE: &str = "backbone.mpk";
/// A fine-tuning run's classifier weights (the best validation epoch).
pub const MODEL_FILE: &str = "model.mpk";
/// The evaluations a bundle's calibration and a report are taken from, in order of preference.
pub const EVALUATION_FILES: [&str; 2] = ["eval-test.json", "eval-val.json"];

/// A pretraining run's resolved config, its paths resolved against the run directory.
pub fn load_pretrain_config(run: &Path) -> Result<PretrainConfig> {
    let config: PretrainConfig = load_json(&run.join(CONFIG_FILE))?;
    Ok(config.map_paths(&|p| resolved_path(p, run)))
}

/// Saves a pretraining run's config, its paths recorded relative to the run directory.
pub fn save_pretrain_config(run: &Path, config: &PretrainConfig) -> Result<()> {
    save_json(
        &run.join(CONFIG_FILE),
        &config.map_paths(&|p| recorded_path(p, run)),
    )
}

/// Saves a fine-tuning run's config, its paths recorded relative to the run directory.
pub fn save_finetune_config(run: &Path, config: &FinetuneConfig) -> Result<()> {
    save_json(
        &run.join(CONFIG_FILE),
        &config.map_paths(&|p| recorded_path(p, run)),
    )
}

/// A pretraining run's backbone: its architecture, initialised on `device` and then (unless
/// `random_init`) loaded with the run's weights.
pub fn load_pretrained_backbone<B: Backend>(
    run: &Path,
    config: &PretrainConfig,
    random_init: bool,
    device: &B::Device,
) -> Result<ResNet<B>> {
    let backbone = config.model.init::<B>(device);
    if random_init {
        return Ok(backbone);
    }
    load_weights(backbone, &run.join(BACKBONE_FILE), device)
}

/// A fine-tuning run's resolved config, its paths resolved against the run directory.
pub fn load_finetune_config(run: &Path) -> Result<FinetuneConfig> {
    let config: FinetuneConfig = load_json(&run.join(CONFIG_FILE))?;
    Ok(config.map_paths(&|p| resolved_path(p, run)))
}

/// A fine-tuned run loaded back: its resolved config and its model.
pub fn load_finetuned<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(FinetuneConfig, Classifier<B>)> {
    let config = load_finetune_config(run)?;
    config.model.validate().map_err(|reason| Error::Config {
        path: run.join(CONFIG_FILE),
        reason,
    })?;
    if config.preprocess.is_none() || config.class_names.is_empty() {
        return Err(Error::Config {
            path: run.join(CONFIG_FILE),
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

/// The run's evaluation a bundle and a report use: the test partition's, else validation's.
pub fn evaluation_file(run: &Path) -> Option<PathBuf> {
    EVALUATION_FILES
        .iter()
        .map(|f| run.join(f))
        .find(|p| p.is_file())
}
