//! Demo settings: where the data and outputs are, the network's size and how long each stage
//! trains — with their defaults, their validation, and the optional form they are given in.
//! Nothing here finds data or trains.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings_error;
use crate::Result;

/// Settings of the demo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoConfig {
    /// Output directory.
    pub out: PathBuf,
    /// Dataset; found as described in [`crate::demo`] when `None`.
    pub data: Option<PathBuf>,
    /// Input size.
    pub image_size: u32,
    /// ResNet-18 width multiplier.
    pub width_multiplier: f32,
    /// Pretraining epochs.
    pub pretrain_epochs: usize,
    /// Fine-tuning epochs.
    pub finetune_epochs: usize,
    /// Cap on steps per stage (quick runs and tests).
    pub max_steps: Option<usize>,
    /// Held-out images screened with the runtime.
    pub screen_images: usize,
    /// The `scanside` binary; next to the running executable when `None`.
    pub runtime_binary: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
}

impl DemoConfig {
    /// The defaults, writing into `out`: the one place each default is written.
    pub fn new(out: PathBuf) -> Self {
        Self {
            out,
            data: None,
            image_size: 28,
            width_multiplier: 0.125,
            pretrain_epochs: 2,
            finetune_epochs: 4,
            max_steps: None,
            screen_images: 8,
            runtime_binary: None,
            seed: 0,
        }
    }

    /// Checks what can be checked before any data is read.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.image_size == 0 {
            return Err("the demo needs an input size above 0".into());
        }
        if self.width_multiplier.is_nan() || self.width_multiplier <= 0.0 {
            return Err(format!(
                "width multiplier {} must be above 0",
                self.width_multiplier
            ));
        }
        if self.pretrain_epochs == 0 || self.finetune_epochs == 0 {
            return Err("the demo trains each stage for at least one epoch".into());
        }
        Ok(())
    }
}

/// Demo settings as given — a config file, flags, or both — with every field optional (see
/// [`DemoConfig`] for what each means); [`DemoSettings::build`] fills the rest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    /// Required.
    pub out: Option<PathBuf>,
    /// Dataset.
    pub data: Option<PathBuf>,
    /// Input size.
    pub image_size: Option<u32>,
    /// Width multiplier.
    pub width_multiplier: Option<f32>,
    /// Pretraining epochs.
    pub pretrain_epochs: Option<usize>,
    /// Fine-tuning epochs.
    pub finetune_epochs: Option<usize>,
    /// Step cap per stage.
    pub max_steps: Option<usize>,
    /// Held-out images screened.
    pub screen_images: Option<usize>,
    /// The `scanside` binary.
    pub runtime_binary: Option<PathBuf>,
    /// Seed.
    pub seed: Option<u64>,
    /// The file these settings were read from, for error messages.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

impl DemoSettings {
    /// Reads settings from a TOML or JSON file.
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
            out: flags.out.or(self.out),
            data: flags.data.or(self.data),
            image_size: flags.image_size.or(self.image_size),
            width_multiplier: flags.width_multiplier.or(self.width_multiplier),
            pretrain_epochs: flags.pretrain_epochs.or(self.pretrain_epochs),
            finetune_epochs: flags.finetune_epochs.or(self.finetune_epochs),
            max_steps: flags.max_steps.or(self.max_steps),
            screen_images: flags.screen_images.or(self.screen_images),
            runtime_binary: flags.runtime_binary.or(self.runtime_binary),
            seed: flags.seed.or(self.seed),
            origin: self.origin.or(flags.origin),
        }
    }

    /// The complete, validated config.
    pub fn build(self) -> Result<DemoConfig> {
        let origin = self.origin.clone();
        let bad = |reason: String| settings_error(origin.as_deref(), reason);
        let out = self
            .out
            .ok_or_else(|| bad("the demo needs an output directory (--out)".into()))?;
        let d = DemoConfig::new(out);
        let config = DemoConfig {
            data: self.data.or(d.data),
            image_size: self.image_size.unwrap_or(d.image_size),
            width_multiplier: self.width_multiplier.unwrap_or(d.width_multiplier),
            pretrain_epochs: self.pretrain_epochs.unwrap_or(d.pretrain_epochs),
            finetune_epochs: self.finetune_epochs.unwrap_or(d.finetune_epochs),
            max_steps: self.max_steps.or(d.max_steps),
            screen_images: self.screen_images.unwrap_or(d.screen_images),
            runtime_binary: self.runtime_binary.or(d.runtime_binary),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_flags_override_a_file_and_the_rest_takes_the_defaults() {
        let file: DemoSettings =
            toml::from_str("out = \"runs/a\"\nimage_size = 32\nseed = 3\n").unwrap();
        let flags = DemoSettings {
            seed: Some(4),
            ..DemoSettings::default()
        };
        let config = file.overridden_by(flags).build().unwrap();
        let mut expected = DemoConfig::new("runs/a".into());
        expected.image_size = 32;
        expected.seed = 4;
        assert_eq!(config, expected);
        assert!(DemoSettings::default().build().is_err());
    }
}
