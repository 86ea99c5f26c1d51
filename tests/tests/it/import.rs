//! Models trained elsewhere: the ONNX classifiers a user brings (torchvision's ResNet-18/50 and
//! MobileNetV2/V3, written by `tools/onnx_models.py` — by `torch.onnx.export` where torch is
//! installed, node for node with the onnx helper API otherwise), exported by
//! `scanside-train export --onnx`'s library call, screened by the runtime's screening chain
//! (what `scanside screen` runs) on every engine, and checked by onnxruntime
//! (`tools/check_onnx.py`): the fp32 model against tract, the QDQ model against the int8
//! engine within a stated number of output steps, TensorRT's profile by its zero points.
//! Skipped, saying so, where python3 lacks onnx (tools/setup.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use scanside_runtime::bundle::{signing, Bundle, ModelFile, SigningKey, Trust};
use scanside_runtime::infer::{Engine, EngineKind};
use scanside_runtime::pipeline::Screener;
use scanside_runtime::preprocess::{normalize_in_place, to_model_pixels};
use scanside_trainer::config::{ExportOptions, ImportSettings, QuantizeConfig};
use scanside_trainer::export::imported::{export_onnx, ImportReport, OnnxExport};
use scanside_trainer::int8_calibration::QdqProfile;

/// The class folders' names, in the order the folder reader lists them (sorted).
const CLASSES: [&str; 3] = ["disc", "plain", "ring"];
const SIDE: usize = 32;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A folder of class sub-folders: bright discs, plain backgrounds and faint rings.
fn write_class_folders(dir: &Path, per_class: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(40, 30, |x, y| {
                let (dx, dy) = (x as f32 - 20.0 - (i % 5) as f32, y as f32 - 15.0);
                let r = (dx * dx + dy * dy).sqrt();
                let texture = ((x * 7 + y * 13 + i * 5) % 23) as u8;
                let lesion = match c {
                    0 => r < 8.0,
                    2 => (6.0..8.0).contains(&r),
                    _ => false,
                };
                if lesion {
                    image::Rgb([60 + texture, 30, 20 + i as u8])
                } else {
                    image::Rgb([200 + texture / 2, 160, 140])
                }
            });
            let path = dir.join(class).join(format!("{class}_{i:03}.png"));
            img.save(&path).unwrap();
            files.push(path);
        }
    }
    files
}

/// Writes the named models (3 classes, `SIDE`-pixel inputs) into `dir`.
fn generate_models(dir: &Path, names: &str) {
    let out = Command::new("python3")
        .arg(repo().join("tools/onnx_models.py"))
        .args(["--out".as_ref(), dir.as_os_str()])
        .args([
            "--size",
            &SIDE.to_string(),
            "--classes",
            "3",
            "--models",
            names,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tools/onnx_models.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn export(
    model: &Path,
    data: &Path,
    bundle: &Path,
    profile: QdqProfile,
    key: &SigningKey,
) -> scanside_trainer::Result<ImportReport> {
    let options = ExportOptions {
        check_images: 4,
        int8: true,
        quantize: QuantizeConfig {
            calibration_images: 24,
            validation_images: 12,
            profile,
            ..QuantizeConfig::default()
        },
        ..ExportOptions::default()
    };
    let export = OnnxExport {
        model: model.to_path_buf(),
        settings: ImportSettings {
            classes: Some(CLASSES.iter().map(|c| c.to_string()).collect()),
            ..ImportSettings::default()
        },
        calibration_data: Some(data.to_path_buf()),
        validation_data: None,
        options,
    };
    export_onnx::<Flex>(&export, bundle, Some(key), &Default::default())
}

/// `tools/check_onnx.py`'s input: normalised images, tract's fp32 logits of the bundle's
/// model and, when the bundle has a blob, the int8 engine's.
fn write_check_json(bundle: &Bundle, images: &[PathBuf]) -> PathBuf {
    let p = &bundle.manifest.preprocess;
    let inputs: Vec<Vec<f32>> = images
        .iter()
        .map(|path| {
            let decoded = scanside_runtime::decode::decode_file(path).unwrap();
            let mut x = to_model_pixels(&decoded, p, path).unwrap();
            normalize_in_place(&mut x, p);
            x
        })
        .collect();
    let logits_of = |kind: EngineKind| -> Vec<Vec<f32>> {
        let engine = Engine::load(bundle, kind).unwrap();
        inputs.iter().map(|x| engine.logits(x).unwrap()).collect()
    };
    let mut check = serde_json::json!({
        "inputs": inputs,
        "logits": logits_of(EngineKind::Tract),
    });
    if bundle.manifest.int8.is_some() {
        check["int8_logits"] = serde_json::json!(logits_of(EngineKind::Int8));
    }
    let path = bundle.dir.join("check.json");
    std::fs::write(&path, serde_json::to_vec(&check).unwrap()).unwrap();
    path
}

/// onnxruntime's verdict on the bundle: whether `tools/check_onnx.py` passed, and what it
/// printed (`None`: onnxruntime is not installed).
fn check_with_onnxruntime(
    bundle: &Bundle,
    images: &[PathBuf],
    args: &[&str],
) -> Option<(bool, String)> {
    if !python_has("onnx, onnxruntime") {
        eprintln!("SKIPPED the onnxruntime check: python3 lacks onnxruntime (tools/setup.sh)");
        return None;
    }
    let check = write_check_json(bundle, images);
    let out = Command::new("python3")
        .arg(repo().join("tools/check_onnx.py"))
        .arg(&bundle.dir)
        .arg(&check)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    Some((out.status.success(), text))
}

/// Screens one image on each engine through the runtime's screening chain.
fn screen_on_every_engine(bundle: &Bundle, image: &Path, engines: &[EngineKind]) {
    let fp32 = Screener::with_engine(bundle, EngineKind::Fp32)
        .unwrap()
        .screen_file(image)
        .unwrap();
    assert!(fp32.model_verified);
    for &kind in engines {
        let result = Screener::with_engine(bundle, kind)
            .unwrap()
            .screen_file(image)
            .unwrap();
        assert_eq!(result.engine, kind);
        assert_eq!(result.probabilities.len(), CLASSES.len());
        if kind == EngineKind::Tract {
            for ((_, a), (_, b)) in result.probabilities.iter().zip(&fp32.probabilities) {
                assert!((a - b).abs() <= 1e-4, "{result:?} vs {fp32:?}");
            }
        }
    }
}

fn signing_key(dir: &Path) -> (SigningKey, Trust) {
    let key = signing::generate_key().unwrap();
    signing::write_key_pair(&dir.join("site"), &key).unwrap();
    let trust = Trust::Keys(vec![key.verifying_key()]);
    (key, trust)
}

/// Int8 agreement limits with onnxruntime's run of the same QDQ model, in output steps (of the
/// 255 the logits' range spans): the blob requantises in fixed point, onnxruntime in float, so
/// an intermediate value can land one step apart, and each later layer passes such differences
/// on — more of them the deeper the network (measured 2, 5 and 16 steps: docs/import.md). The
/// calibration method is chosen on 12 images by AUC, so float rounding that differs between
/// hosts (AVX-512 or AVX2 kernels) can pick another: ResNet-50 with entropy ranges, chosen on
/// an AVX2 host, measured 28 steps.
const MAX_STEPS: [(&str, QdqProfile, &str); 3] = [
    ("resnet18", QdqProfile::Tensorrt, "8"),
    ("resnet50", QdqProfile::Onnxruntime, "32"),
    ("mobilenet_v2", QdqProfile::Tensorrt, "8"),
];

#[test]
fn torchvision_classifiers_quantise_to_the_int8_engine_and_screen() {
    if !python_has("onnx, numpy") {
        eprintln!(
            "SKIPPED: python3 with onnx and numpy is needed to write the models (tools/setup.sh)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let images = write_class_folders(&data, 12);
    generate_models(tmp.path(), "resnet18,resnet50,mobilenet_v2");
    let (key, trust) = signing_key(tmp.path());
    let mut failures = Vec::new();
    for (name, profile, max_steps) in MAX_STEPS {
        let bundle_dir = tmp.path().join(format!("{name}-bundle"));
        let model = tmp.path().join(format!("{name}.onnx"));
        let report = export(&model, &data, &bundle_dir, profile, &key).unwrap();
        eprintln!("{name}: {}", serde_json::to_string(&report).unwrap());
        assert!(report.import_max_abs_logit_diff.is_some() && report.int8_gaps.is_empty());
        let int8 = report.int8.as_ref().expect("int8 blob");
        assert_eq!(int8.qdq_profile, profile.name());
        assert_eq!(
            int8.methods.len(),
            3,
            "minmax, percentile, entropy compared"
        );
        let best = &int8.methods[0];
        assert!(
            best.fp32_top1.is_some() && best.int8_macro_auc.is_some(),
            "{best:?}"
        );
        assert!(report.labels.as_deref().unwrap().starts_with("labelled"));
        // The bundle holds the file as given, signed.
        let bundle = Bundle::load(&bundle_dir, &trust).unwrap();
        assert_eq!(
            bundle.read_model(ModelFile::Fp32).unwrap(),
            std::fs::read(&model).unwrap()
        );
        screen_on_every_engine(
            &bundle,
            &images[0],
            &[EngineKind::Tract, EngineKind::Int8, EngineKind::Qdq],
        );
        let mut args = vec!["--max-steps", max_steps];
        if profile == QdqProfile::Tensorrt {
            args.extend(["--qdq-profile", "tensorrt"]);
        }
        if let Some((passed, text)) = check_with_onnxruntime(&bundle, &images[..6], &args) {
            assert!(text.contains("vs the scanside int8 engine"), "{text}");
            if profile == QdqProfile::Tensorrt {
                assert!(text.contains("all 0 (int8)"), "{text}");
            }
            // Every model is checked before any failure is reported, so one run measures all.
            if !passed {
                failures.push(format!("{name}: {text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn operators_the_int8_core_lacks_are_named_and_fp32_and_qdq_still_export() {
    if !python_has("onnx, numpy") {
        eprintln!(
            "SKIPPED: python3 with onnx and numpy is needed to write the models (tools/setup.sh)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let images = write_class_folders(&data, 8);
    generate_models(tmp.path(), "mobilenet_v3_small,mixed");
    let (key, trust) = signing_key(tmp.path());
    for (name, gaps) in [
        (
            "mobilenet_v3_small",
            &["HardSwish", "HardSigmoid", "Mul"][..],
        ),
        (
            "mixed",
            &["grouped Conv", "AveragePool", "Concat", "Sigmoid"][..],
        ),
    ] {
        let bundle_dir = tmp.path().join(format!("{name}-bundle"));
        let model = tmp.path().join(format!("{name}.onnx"));
        let e = export(&model, &data, &bundle_dir, QdqProfile::Tensorrt, &key)
            .unwrap_err()
            .to_string();
        for gap in gaps {
            assert!(e.contains(gap), "{name}: {e}");
        }
        assert!(e.contains("fp32 and QDQ ONNX models export"), "{e}");
        let bundle = Bundle::load(&bundle_dir, &trust).unwrap();
        assert!(bundle.manifest.int8.is_none());
        let record = &bundle.manifest.provenance.training_config["qdq_without_blob"];
        assert_eq!(record["file"], "model.qdq.onnx");
        screen_on_every_engine(&bundle, &images[0], &[EngineKind::Tract]);
        assert!(Engine::load(&bundle, EngineKind::Int8).is_err());
        if let Some((passed, text)) =
            check_with_onnxruntime(&bundle, &images[..4], &["--qdq-profile", "tensorrt"])
        {
            assert!(passed && text.contains("onnxruntime runs it"), "{text}");
        }
    }
}
