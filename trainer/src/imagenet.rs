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
//!
//! [`save_torchvision`] is the inverse: a backbone (a scanside pretraining run's) written as
//! safetensors under torchvision's names, for PyTorch users to load into
//! `torchvision.models.resnetNN` (the classifier `fc` left to them).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
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

/// The name correspondence for the given block layout, one place for both directions:
/// (torchvision's part, [`ResNet`]'s part, whether it starts the name).
fn name_pairs(config: &ResNetConfig) -> std::result::Result<Vec<(String, String, bool)>, String> {
    let blocks = config.blocks_per_stage().ok_or("unsupported depth")?;
    let mut pairs = vec![
        ("conv1.".into(), "stem_conv.".into(), true),
        ("bn1.".into(), "stem_bn.".into(), true),
        (".downsample.0.".into(), ".downsample.conv.".into(), false),
        (".downsample.1.".into(), ".downsample.bn.".into(), false),
    ];
    let mut flat = 0;
    for (stage, &count) in blocks.iter().enumerate() {
        for i in 0..count {
            pairs.push((
                format!("layer{}.{i}.", stage + 1),
                format!("blocks.{flat}."),
                true,
            ));
            flat += 1;
        }
    }
    Ok(pairs)
}

/// A remapper from one side of [`name_pairs`] to the other (`to_torchvision`: ours → theirs).
fn remapper_towards(
    config: &ResNetConfig,
    to_torchvision: bool,
) -> std::result::Result<KeyRemapper, String> {
    let pattern = |part: &str, anchored: bool| {
        format!(
            "{}{}",
            if anchored { "^" } else { "" },
            part.replace('.', r"\.")
        )
    };
    let patterns: Vec<(String, String)> = name_pairs(config)?
        .into_iter()
        .map(|(theirs, ours, anchored)| {
            if to_torchvision {
                (pattern(&ours, anchored), theirs)
            } else {
                (pattern(&theirs, anchored), ours)
            }
        })
        .collect();
    KeyRemapper::from_patterns(patterns).map_err(|e| e.to_string())
}

/// torchvision's names → [`ResNet`]'s.
fn remapper(config: &ResNetConfig) -> std::result::Result<KeyRemapper, String> {
    remapper_towards(config, false)
}

/// [`ResNet`]'s names → torchvision's: the inverse of [`remapper`].
fn reverse_remapper(config: &ResNetConfig) -> std::result::Result<KeyRemapper, String> {
    remapper_towards(config, true)
}

/// What [`save_torchvision`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavedBackbone {
    /// The safetensors file.
    pub file: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// The torchvision constructor whose `state_dict` the names follow.
    pub torchvision_model: String,
    /// What a PyTorch user must change for the weights to load, when anything.
    pub note: Option<String>,
}

/// Writes `backbone` (of `config`'s architecture) to `path` as safetensors under torchvision's
/// names (`conv1`, `bn1`, `layerS.I.…`, BatchNorm `weight`/`bias`/`running_*`), atomically.
pub fn save_torchvision<B: Backend>(
    backbone: &ResNet<B>,
    config: &ResNetConfig,
    path: &Path,
) -> Result<SavedBackbone> {
    let refuse = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    if config.separable {
        return Err(refuse(
            "depthwise-separable blocks (--arch micro) have no torchvision counterpart".into(),
        ));
    }
    let remap = reverse_remapper(config).map_err(refuse)?;
    let partial = path.with_extension("safetensors.part");
    let mut store = SafetensorsStore::from_file(&partial)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remap);
    backbone
        .save_into(&mut store)
        .map_err(|e| refuse(e.to_string()))?;
    std::fs::rename(&partial, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut notes = Vec::new();
    if config.small_input_stem {
        notes.push("the small-input stem: replace conv1 with a 3×3 stride-1 convolution and maxpool with nn.Identity()");
    }
    if config.width_multiplier != 1.0 {
        notes
            .push("a width multiplier other than 1: build the ResNet with the same channel counts");
    }
    if config.in_channels != 3 {
        notes.push("one input channel: replace conv1 with a one-channel convolution");
    }
    Ok(SavedBackbone {
        file: path.to_path_buf(),
        tensors: backbone.collect(None, None, false).len(),
        torchvision_model: format!("resnet{}", config.depth),
        note: (!notes.is_empty()).then(|| format!("before load_state_dict: {}", notes.join("; "))),
    })
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

    #[test]
    fn a_saved_backbone_loads_back_through_init_tensor_for_tensor() {
        type B = burn::backend::Flex;
        let config = ResNetConfig {
            depth: 18,
            width_multiplier: 0.25,
            small_input_stem: false,
            ..ResNetConfig::default()
        };
        let device = Default::default();
        let backbone = config.init::<B>(&device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backbone.safetensors");
        let saved = save_torchvision(&backbone, &config, &path).unwrap();
        assert_eq!(saved.torchvision_model, "resnet18");
        assert!(saved.note.unwrap().contains("width multiplier"));
        let mut store = SafetensorsStore::from_file(&path);
        let names: Vec<String> = burn_store::ModuleStore::get_all_snapshots(&mut store)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for name in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer4.1.bn2.bias",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
        assert!(names.iter().any(|n| n == "layer2.0.downsample.1.weight"));
        // `--init` reads it back (every tensor present, shapes checked) into equal weights.
        let (loaded, report) = load_torchvision::<B>(&config, &path, &device).unwrap();
        assert!(report.ignored.is_empty(), "{:?}", report.ignored);
        let tensors = |m: &ResNet<B>| -> Vec<(String, Vec<f32>)> {
            let mut all: Vec<(String, Vec<f32>)> = m
                .collect(None, None, false)
                .into_iter()
                .map(|t| {
                    let data = t
                        .to_data()
                        .unwrap()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .unwrap();
                    (t.full_path(), data)
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        assert_eq!(tensors(&backbone), tensors(&loaded));
    }

    /// Where PyTorch and torchvision are installed (`PYTHON_TORCH=/path/to/python`, as the
    /// `--init` pickle test takes it; else `python3` when it has them), torchvision's own
    /// `resnet18` takes the file: nothing unexpected, only the classifier missing.
    #[test]
    fn torchvision_loads_a_saved_resnet18_where_torch_is_installed() {
        let python = std::env::var("PYTHON_TORCH").unwrap_or_else(|_| "python3".into());
        let has_torch = std::process::Command::new(&python)
            .args(["-c", "import torch, torchvision, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_torch {
            eprintln!(
                "SKIPPED torchvision_loads_a_saved_resnet18: {python} lacks torch/torchvision \
                 (set PYTHON_TORCH)"
            );
            return;
        }
        type B = burn::backend::Flex;
        let config = ResNetConfig {
            depth: 18,
            width_multiplier: 1.0,
            small_input_stem: false,
            ..ResNetConfig::default()
        };
        let backbone = config.init::<B>(&Default::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rn18.safetensors");
        save_torchvision(&backbone, &config, &path).unwrap();
        let script = "import sys, torchvision, safetensors.torch as st\n\
                      m = torchvision.models.resnet18()\n\
                      r = m.load_state_dict(st.load_file(sys.argv[1]), strict=False)\n\
                      assert not r.unexpected_keys, r.unexpected_keys\n\
                      assert sorted(r.missing_keys) == ['fc.bias', 'fc.weight'], r.missing_keys\n";
        let out = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
