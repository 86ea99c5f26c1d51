//! Label-efficiency study settings: the grid of pretraining runs × label fractions × seeds and
//! the fine-tuning and evaluation settings every cell shares. Nothing here runs a cell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ClassWeights, EvalSettings, FinetuneConfig, FinetuneMode};
use crate::augment::Preset;
use crate::data::SourceSpec;
use crate::model::ResNetConfig;
use crate::Result;

/// The row name of fine-tuning from random weights.
pub const SCRATCH: &str = "scratch";

/// The grid and the fine-tuning settings shared by every cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Split file (its train partition's nested label fractions are used).
    pub split: PathBuf,
    /// The dataset, when it moved since the split was made.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Pretraining runs by row name (e.g. `simclr = "runs/pre-simclr"`).
    #[serde(default)]
    pub pretrained: BTreeMap<String, PathBuf>,
    /// Include the random-init row (default). `false` adds rows to a study whose scratch row
    /// was already run with the same settings elsewhere.
    #[serde(default = "default_true")]
    pub scratch: bool,
    /// Label fractions, e.g. `[0.01, 0.1, 0.25, 1.0]`.
    pub fractions: Vec<f64>,
    /// Seeds (fine-tuning initialisation, order and augmentation).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// At least this many optimiser steps per cell: small label fractions get more epochs (a
    /// 1 % subset is one batch per epoch), validated ten times over the run.
    #[serde(default)]
    pub min_steps: Option<usize>,
    /// Images per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Peak learning rate (default: fine-tuning's).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Backbone and input size of the scratch row (default: those of the first pretraining
    /// run, so every row has the same network).
    #[serde(default)]
    pub scratch_model: Option<ResNetConfig>,
    /// Input size of the scratch row (default as above, else 32).
    #[serde(default)]
    pub scratch_image_size: Option<u32>,
    /// Full fine-tuning or linear probe.
    #[serde(default)]
    pub mode: FinetuneMode,
    /// Class weights.
    #[serde(default)]
    pub class_weights: ClassWeights,
    /// Fine-tuning augmentation preset.
    #[serde(default)]
    pub preset: Preset,
    /// Early stopping patience in epochs.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Bootstrap resamples per evaluation.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// Another site's labelled dataset every cell is also evaluated on, as by `evaluate
    /// --data` (e.g. `[other_data]` with `layout = "folder"` and `path = "site-b"`).
    #[serde(default)]
    pub other_data: Option<SourceSpec>,
}

fn default_true() -> bool {
    true
}
fn default_seeds() -> Vec<u64> {
    vec![FinetuneConfig::new(PathBuf::new(), PathBuf::new(), None).seed]
}
fn default_batch() -> usize {
    FinetuneConfig::new(PathBuf::new(), PathBuf::new(), None).batch_size
}
fn default_bootstrap() -> usize {
    EvalSettings::default().bootstrap
}

impl StudyConfig {
    /// Reads a study configuration (TOML or JSON).
    pub fn read(path: &Path) -> Result<Self> {
        super::read_settings_file(path)
    }

    /// Checks the grid: at least one fraction, seed and row, fractions in (0, 1], no
    /// pretraining run named like the random-init row.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.fractions.is_empty() || self.seeds.is_empty() {
            return Err("a study needs at least one fraction and one seed".into());
        }
        if let Some(f) = self.fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
            return Err(format!("label fraction {f} must be in (0, 1]"));
        }
        if !self.scratch && self.pretrained.is_empty() {
            return Err("no rows: `scratch = false` and no [pretrained] runs".to_string());
        }
        if self.pretrained.contains_key(SCRATCH) {
            return Err(format!(
                "'{SCRATCH}' is the random-init row; rename that run"
            ));
        }
        Ok(())
    }
}
