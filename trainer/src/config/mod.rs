//! Every stage's settings, in one place: their defaults (each written once), their validation,
//! and how they are given.
//!
//! The settings of a stage that trains come in two forms. `XSettings` is what a person writes —
//! a TOML or JSON file, command-line flags, or both — with every field optional;
//! [`PretrainSettings::overridden_by`] lays flags over a file and
//! [`PretrainSettings::build`] fills what is still missing with the defaults and validates,
//! giving the complete `XConfig` a stage runs with and saves as its run's `config.json`. A saved
//! `config.json` reads back through the same path, so a finished run's config is also a valid
//! settings file. Settings only describe work: nothing here trains, loads images or writes files.

mod demo;
mod evaluate;
mod export;
mod finetune;
mod import;
mod pretrain;
mod study;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub use demo::{DemoConfig, DemoSettings};
pub use evaluate::EvalSettings;
pub use export::{
    parse_bytes, parse_targets, AcceptSetting, ExportOptions, OodOptions, QuantizeConfig, Targets,
};
pub use finetune::{
    ClassWeights, FinetuneConfig, FinetuneMode, FinetuneSettings, QatConfig, QatSettings,
};
pub use import::{
    parse_preprocess, ImportConfig, ImportSettings, PreprocessSettings, IMAGENET_MEAN, IMAGENET_STD,
};
pub use pretrain::{Method, Objectives, PretrainConfig, PretrainSettings};
pub use study::{StudyConfig, SCRATCH};

use crate::model::ResNetConfig;
use crate::{Error, Result};

/// Reads settings from a file: TOML for `.toml`, JSON for `.json`, and for any other name JSON
/// when the text starts with `{`, TOML otherwise.
pub fn read_settings_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(crate::io_error(path))?;
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let is_json = match extension.as_deref() {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(|e| format!("malformed JSON: {e}"))
    } else {
        toml::from_str(&text).map_err(|e| format!("malformed TOML: {e}"))
    };
    parsed.map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })
}

/// The error of settings that do not make a valid config, naming where they came from.
fn settings_error(origin: Option<&Path>, reason: String) -> Error {
    Error::Config {
        path: origin.map_or_else(|| PathBuf::from("command line"), Path::to_path_buf),
        reason,
    }
}

/// The backbone as given: every field optional, the rest from [`ResNetConfig::default`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetSettings {
    /// [`ResNetConfig::depth`].
    pub depth: Option<usize>,
    /// [`ResNetConfig::width_multiplier`].
    pub width_multiplier: Option<f32>,
    /// [`ResNetConfig::in_channels`].
    pub in_channels: Option<usize>,
    /// [`ResNetConfig::small_input_stem`].
    pub small_input_stem: Option<bool>,
    /// [`ResNetConfig::separable`].
    pub separable: Option<bool>,
}

impl ResNetSettings {
    /// These settings with every field `flags` sets replaced by the flag's value.
    pub fn overridden_by(self, flags: Self) -> Self {
        Self {
            depth: flags.depth.or(self.depth),
            width_multiplier: flags.width_multiplier.or(self.width_multiplier),
            in_channels: flags.in_channels.or(self.in_channels),
            small_input_stem: flags.small_input_stem.or(self.small_input_stem),
            separable: flags.separable.or(self.separable),
        }
    }

    /// The backbone: these settings over `base`.
    pub fn over(self, base: ResNetConfig) -> ResNetConfig {
        ResNetConfig {
            depth: self.depth.unwrap_or(base.depth),
            width_multiplier: self.width_multiplier.unwrap_or(base.width_multiplier),
            in_channels: self.in_channels.unwrap_or(base.in_channels),
            small_input_stem: self.small_input_stem.unwrap_or(base.small_input_stem),
            separable: self.separable.unwrap_or(base.separable),
        }
    }
}

/// A field that may be absent (`None`), or present and `null` (`Some(None)`): for settings
/// whose default is not "none", so that a file or a flag can still say "none".
fn present_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_files_are_read_as_toml_or_json_by_name_or_content() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let toml = write("a.toml", "depth = 34\n");
        let json = write("a.json", "{\"depth\": 50}");
        let untyped_json = write("a.cfg", "  {\"depth\": 18}");
        let untyped_toml = write("b.cfg", "width_multiplier = 0.5\n");
        let read = |p: &Path| read_settings_file::<ResNetSettings>(p).unwrap();
        assert_eq!(read(&toml).depth, Some(34));
        assert_eq!(read(&json).depth, Some(50));
        assert_eq!(read(&untyped_json).depth, Some(18));
        assert_eq!(read(&untyped_toml).width_multiplier, Some(0.5));
        let bad = write("bad.toml", "depth = \n");
        let e = read_settings_file::<ResNetSettings>(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.toml") && e.contains("malformed TOML"),
            "{e}"
        );
    }
}
