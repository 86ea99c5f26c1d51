//! Initialising a backbone from torchvision ImageNet weights: the first stage of the paper's
//! best recipe (ImageNet, then self-supervision on medical images).
//!
//! The file is a torchvision ResNet `state_dict`, as safetensors (`*.safetensors`) or as a
//! PyTorch pickle (`*.pth`, `*.pt`, `*.bin`; a `state_dict`/`model` entry of a checkpoint is
//! found too). burn-store reads both and applies burn's PyTorch adapter (BatchNorm
//! `weight`/`bias` → `gamma`/`beta`); here torchvision's names are mapped onto [`ResNet`]'s
//! (`layerS.I.` → `blocks.K.`, `conv1`/`bn1` → stem, `downsample.0/1` → `downsample.conv/bn`),
//! and every parameter and running statistic of the backbone must be present with the same
//! shape: a ResNet-18 file does not silently half-fill a ResNet-50. The classifier (`fc.*`) and
//! BatchNorm's `num_batches_tracked` are not part of a backbone and are ignored (and counted).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::{
    KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use serde::{Deserialize, Serialize};

use crate::model::{ResNet, ResNetConfig};
use crate::{Error, Result};

/// What was loaded, recorded in the pretraining run's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitReport {
    /// The weights file.
    pub file: PathBuf,
    /// Tensors copied into the backbone.
    pub loaded: usize,
    /// Tensors in the file that a backbone has no place for (classifier, batch counters).
    pub ignored: Vec<String>,
    /// The RGB stem was summed over its input channels for a one-channel backbone.
    pub stem_summed_to_gray: bool,
}

/// torchvision's names → [`ResNet`]'s, for the given block layout.
fn remapper(config: &ResNetConfig) -> std::result::Result<KeyRemapper, String> {
    let blocks = config.blocks_per_stage().ok_or("unsupported depth")?;
    let mut patterns: Vec<(String, String)> = vec![
        (r"^conv1\.".into(), "stem_conv.".into()),
        (r"^bn1\.".into(), "stem_bn.".into()),
        (r"\.downsample\.0\.".into(), ".downsample.conv.".into()),
        (r"\.downsample\.1\.".into(), ".downsample.bn.".into()),
    ];
    let mut flat = 0;
    for (stage, &count) in blocks.iter().enumerate() {
        for i in 0..count {
            patterns.push((
                format!(r"^layer{}\.{i}\.", stage + 1),
                format!("blocks.{flat}."),
            ));
            flat += 1;
        }
    }
    KeyRemapper::from_patterns(patterns).map_err(|e| e.to_string())
}

/// Loads torchvision ImageNet weights into a fresh backbone of `config`'s architecture.
///
/// The ImageNet stem (7×7 stride 2 + max-pool) is required: the small-input 3×3 stem has no
/// counterpart in the file. A one-channel backbone gets the RGB stem summed over its input
/// channels (what a grey image replicated to RGB would see).
pub fn load_torchvision<B: Backend>(
    config: &ResNetConfig,
    path: &Path,
    device: &B::Device,
) -> Result<(ResNet<B>, InitReport)> {
    let refuse = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    config.validate().map_err(refuse)?;
    if config.small_input_stem {
        return Err(refuse(
            "ImageNet weights need the ImageNet stem (7×7 stride-2 convolution + max-pool); \
             pretrain with --stem imagenet"
                .into(),
        ));
    }
    if !path.is_file() {
        return Err(refuse("no such file".into()));
    }
    let rgb = ResNetConfig {
        in_channels: 3,
        ..config.clone()
    };
    let mut backbone = rgb.init::<B>(device);
    let remap = remapper(config).map_err(refuse)?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let result = match extension.as_str() {
        "safetensors" => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remap)
                .validate(true)
                .allow_partial(false);
            backbone
                .load_from(&mut store)
                .map_err(|e| refuse(e.to_string()))?
        }
        "pth" | "pt" | "bin" => load_pickle(&mut backbone, path, remap).map_err(refuse)?,
        other => {
            return Err(refuse(format!(
                "unknown weights format '.{other}': .safetensors, or a PyTorch .pth/.pt state dict"
            )))
        }
    };
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(refuse(result.to_string()));
    }
    let stem_summed_to_gray = config.in_channels == 1;
    if stem_summed_to_gray {
        // A fresh leaf: the summed tensor is trained, not the RGB one it came from.
        backbone.stem_conv.weight = backbone.stem_conv.weight.map(|w| {
            let trainable = w.is_require_grad();
            w.sum_dim(1).detach().set_require_grad(trainable)
        });
    }
    // burn-store lists a BatchNorm's `weight`/`bias` as unused even after the adapter loaded
    // them as `gamma`/`beta`; only what really has no place in a backbone is reported.
    let adapted = |name: &str| {
        let renamed = match name.rsplit_once('.') {
            Some((stem, "weight")) => format!("{stem}.gamma"),
            Some((stem, "bias")) => format!("{stem}.beta"),
            _ => return false,
        };
        result.applied.contains(&renamed)
    };
    let ignored = result
        .unused
        .iter()
        .filter(|name| !adapted(name))
        .cloned()
        .collect();
    let report = InitReport {
        file: path.to_path_buf(),
        loaded: result.applied.len(),
        ignored,
        stem_summed_to_gray,
    };
    Ok((backbone, report))
}

/// A PyTorch pickle: the state dict itself, or a checkpoint holding one under a common key.
fn load_pickle<B: Backend>(
    backbone: &mut ResNet<B>,
    path: &Path,
    remap: KeyRemapper,
) -> std::result::Result<burn_store::ApplyResult, String> {
    let mut first_error = None;
    for key in [None, Some("state_dict"), Some("model")] {
        let mut store = PytorchStore::from_file(path)
            .remap(remap.clone())
            .validate(true)
            .allow_partial(false);
        if let Some(key) = key {
            store = store.with_top_level_key(key);
        }
        match backbone.load_from(&mut store) {
            Ok(result) => return Ok(result),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_names_map_onto_the_flat_block_list() {
        let config = ResNetConfig {
            depth: 34,
            small_input_stem: false,
            ..ResNetConfig::default()
        };
        let remap = remapper(&config).unwrap();
        let rename = |name: &str| {
            let mut out = name.to_string();
            for (pattern, to) in remap.to_regex_pairs() {
                out = pattern.replace_all(&out, to.as_str()).to_string();
            }
            out
        };
        assert_eq!(rename("conv1.weight"), "stem_conv.weight");
        assert_eq!(rename("bn1.running_var"), "stem_bn.running_var");
        assert_eq!(rename("layer1.2.conv1.weight"), "blocks.2.conv1.weight");
        // ResNet-34: stages of 3, 4, 6, 3 blocks, so layer3.0 is the eighth block.
        assert_eq!(
            rename("layer3.0.downsample.1.running_mean"),
            "blocks.7.downsample.bn.running_mean"
        );
        assert_eq!(rename("layer4.2.bn2.weight"), "blocks.15.bn2.weight");
        assert_eq!(rename("fc.weight"), "fc.weight");
    }
}
