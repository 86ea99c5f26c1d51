//! `--init`: torchvision ResNet weights written by a Python script (numpy + safetensors) load
//! by name into the backbone, which then computes the features the script computed with
//! torchvision's forward in numpy (the script itself is checked against torchvision, see
//! docs/results.md). Wrong files are refused with the file and the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use scanside_trainer::imagenet::load_torchvision;
use scanside_trainer::model::{to_vec, ResNetConfig};
use scanside_trainer::Error;

type B = burn::backend::Flex;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/torchvision_weights.py")
}

/// Runs the script, or says why the test cannot run (CI installs numpy and safetensors).
fn write_weights(dir: &Path, depth: usize, width: f32) -> Option<serde_json::Value> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = Command::new(&python)
        .args(["-c", "import numpy, safetensors"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        eprintln!(
            "skipped: {python} with numpy and safetensors is needed (tools/setup.sh installs them)"
        );
        return None;
    }
    let status = Command::new(&python)
        .arg(script())
        .arg(dir)
        .args(["--depth", &depth.to_string(), "--width", &width.to_string()])
        .args(["--size", "64", "--batch", "2"])
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", script().display());
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn imagenet_config(depth: usize, width: f32, in_channels: usize) -> ResNetConfig {
    ResNetConfig {
        depth,
        width_multiplier: width,
        in_channels,
        small_input_stem: false,
        separable: false,
    }
}

fn assert_features_match(depth: usize, width: f32) {
    let dir = tempfile::tempdir().unwrap();
    let Some(reference) = write_weights(dir.path(), depth, width) else {
        return;
    };
    let device = Default::default();
    let config = imagenet_config(depth, width, 3);
    let (backbone, report) =
        load_torchvision::<B>(&config, &dir.path().join("weights.safetensors"), &device).unwrap();
    // Every conv weight and four BatchNorm tensors per BatchNorm: all of the backbone.
    let bn_count = report
        .ignored
        .iter()
        .filter(|n| n.ends_with("num_batches_tracked"))
        .count();
    assert!(bn_count > 0);
    assert_eq!(report.ignored.len(), bn_count + 2, "{:?}", report.ignored);
    assert!(report.ignored.iter().any(|n| n == "fc.weight"));
    assert_eq!(
        report.loaded,
        bn_count * 5,
        "one conv and four BatchNorm tensors each"
    );

    let shape: Vec<usize> = reference["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let input = Tensor::<B, 4>::from_data(
        TensorData::new(floats(&reference["input"]), shape.clone()),
        &device,
    );
    let expected = floats(&reference["features"]);
    let got = to_vec(backbone.forward(input.clone()));
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        worst <= 1e-4 * scale,
        "ResNet-{depth} ×{width}: max |diff| {worst} (features up to {scale})"
    );

    // A grey backbone gets the stem summed over RGB: a grey image then gives the features the
    // RGB network gives the same image replicated to three channels.
    let (grey_backbone, grey_report) = load_torchvision::<B>(
        &imagenet_config(depth, width, 1),
        &dir.path().join("weights.safetensors"),
        &device,
    )
    .unwrap();
    assert!(grey_report.stem_summed_to_gray);
    let [n, _, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let grey = input.slice([0..n, 0..1, 0..h, 0..w]);
    let replicated = grey.clone().repeat_dim(1, 3);
    let a = to_vec(grey_backbone.forward(grey));
    let b = to_vec(backbone.forward(replicated));
    let scale = b.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1e-4 * scale, "grey stem: max |diff| {worst}");
}

#[test]
fn resnet18_loaded_from_torchvision_names_gives_the_reference_features() {
    assert_features_match(18, 0.125);
}

#[test]
fn resnet50_bottlenecks_loaded_from_torchvision_names_give_the_reference_features() {
    assert_features_match(50, 0.125);
}

#[test]
fn weights_of_another_architecture_or_stem_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    if write_weights(dir.path(), 18, 0.125).is_none() {
        return;
    }
    let file = dir.path().join("weights.safetensors");
    let device = Default::default();
    let refused = |config: ResNetConfig, file: &Path| -> String {
        match load_torchvision::<B>(&config, file, &device) {
            Err(e @ Error::Weights { .. }) => e.to_string(),
            Err(e) => panic!("unexpected error kind: {e}"),
            Ok(_) => panic!("{config:?} accepted {}", file.display()),
        }
    };
    // ResNet-34 has blocks the file lacks.
    let message = refused(imagenet_config(34, 0.125, 3), &file);
    assert!(message.contains("weights.safetensors"), "{message}");
    assert!(message.contains("Missing"), "{message}");
    // Another width: shapes differ.
    let message = refused(imagenet_config(18, 0.25, 3), &file);
    assert!(message.to_lowercase().contains("shape"), "{message}");
    // The small-input stem has no ImageNet counterpart.
    let small = ResNetConfig {
        small_input_stem: true,
        ..imagenet_config(18, 0.125, 3)
    };
    let message = refused(small, &file);
    assert!(message.contains("--stem imagenet"), "{message}");
    // Not a weights file.
    let bogus = dir.path().join("reference.safetensors");
    std::fs::write(&bogus, b"not safetensors").unwrap();
    let message = refused(imagenet_config(18, 0.125, 3), &bogus);
    assert!(message.contains("reference.safetensors"), "{message}");
    let message = refused(
        imagenet_config(18, 0.125, 3),
        &dir.path().join("absent.pth"),
    );
    assert!(message.contains("no such file"), "{message}");
}

/// A PyTorch pickle state dict, when torch is at hand (`PYTHON_TORCH=/path/to/python`).
#[test]
fn a_pytorch_state_dict_loads_like_safetensors() {
    let Ok(python) = std::env::var("PYTHON_TORCH") else {
        eprintln!("skipped: set PYTHON_TORCH to a python with torch and torchvision");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(&python)
        .arg(script())
        .arg(dir.path())
        .args(["--depth", "18", "--width", "1", "--size", "32", "--torch"])
        .status()
        .unwrap();
    assert!(status.success());
    let device = Default::default();
    let config = imagenet_config(18, 1.0, 3);
    let (from_pth, _) =
        load_torchvision::<B>(&config, &dir.path().join("weights.pth"), &device).unwrap();
    let (from_safetensors, _) =
        load_torchvision::<B>(&config, &dir.path().join("weights.safetensors"), &device).unwrap();
    let input = Tensor::<B, 4>::ones([1, 3, 32, 32], &device);
    assert_eq!(
        to_vec(from_pth.forward(input.clone())),
        to_vec(from_safetensors.forward(input))
    );
}
