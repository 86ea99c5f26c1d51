//! Fixtures: a tiny ONNX classifier with a valid bundle, and DICOM files.

use std::path::Path;

use prost::Message;
use scanside_runtime::bundle::{
    write_bundle, BundleManifest, ModelEntry, Provenance, FORMAT_VERSION,
};
use scanside_runtime::preprocess::PreprocessConfig;
use tract_onnx::pb;

/// Input side of the fixture model.
pub const SIZE: u32 = 4;

/// Writes a bundle whose model is `logits = W · flatten(x) + b` on 3×4×4 inputs, 2 classes:
/// class "bright" scores `mean(x) - 0.5`, class "dark" `0.5 - mean(x)`.
pub fn write_linear_bundle(dir: &Path) {
    let n = (3 * SIZE * SIZE) as usize;
    let mut weight = Vec::with_capacity(n * 2);
    for _ in 0..n {
        weight.extend([-1.0_f32 / n as f32, 1.0 / n as f32]);
    }
    let float = |name: &str, dims: &[i64], values: &[f32]| pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let info = |name: &str, dims: &[i64]| {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| {
        pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    };
    let axis = pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "fixture".into(),
        node: vec![
            node("Flatten", &["input"], "flat", vec![axis]),
            node("Gemm", &["flat", "w", "b"], "logits", vec![]),
        ],
        initializer: vec![
            float("w", &[n as i64, 2], &weight),
            float("b", &[2], &[0.5, -0.5]),
        ],
        input: vec![info("input", &[1, 3, SIZE as i64, SIZE as i64])],
        output: vec![info("logits", &[1, 2])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let manifest = BundleManifest {
        format_version: FORMAT_VERSION,
        model: ModelEntry {
            file: "model.onnx".into(),
            sha256: String::new(),
            opset: 13,
            input_name: "input".into(),
            output_name: "logits".into(),
        },
        preprocess: PreprocessConfig::new(SIZE, 3, vec![0.0; 3], vec![1.0; 3]),
        class_names: vec!["dark".into(), "bright".into()],
        output: Default::default(),
        calibration: None,
        provenance: Provenance {
            created_by: "runtime test fixture".into(),
            created_unix_s: 0,
            training_config: serde_json::json!({}),
            evaluation: None,
        },
        int8: None,
        input_rules: None,
        ood: None,
    };
    let key = test_key();
    write_bundle(dir, manifest, &model.encode_to_vec(), Some(&key)).unwrap();
    std::fs::write(
        dir.with_extension("pub"),
        format!(
            "ed25519-public {}\n",
            key.verifying_key()
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    )
    .unwrap();
}

/// [`write_linear_bundle`] with its manifest changed by `edit`, then written and signed again.
pub fn write_linear_bundle_edited(dir: &Path, edit: impl FnOnce(&mut BundleManifest)) {
    write_linear_bundle(dir);
    let manifest_path = dir.join(scanside_runtime::bundle::MANIFEST_FILE);
    let mut manifest: BundleManifest =
        serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    edit(&mut manifest);
    let model = std::fs::read(dir.join(&manifest.model.file)).unwrap();
    write_bundle(dir, manifest, &model, Some(&test_key())).unwrap();
}

/// [`write_linear_bundle`] plus the same classifier as an int8 blob: global average pool of
/// the 4×4×3 input, then a 3 → 2 fully connected layer with weights ∓1/3 and biases ±0.5.
pub fn write_linear_bundle_with_int8(dir: &Path) {
    use scanside_int8::arith::quantize_multiplier;
    use scanside_int8::blob::write::{encode, LayerSpec, ModelSpec, TensorSpec};
    use scanside_int8::blob::Op;
    write_linear_bundle(dir);
    let unit = 1.0_f32 / 255.0;
    let side = SIZE as usize;
    let tensor = |h, w, c, zero_point, scale| TensorSpec {
        height: h,
        width: w,
        channels: c,
        zero_point,
        scale,
    };
    let weight_scale = (1.0_f32 / 3.0) / 127.0;
    let (m, s) = quantize_multiplier(f64::from(unit) * f64::from(weight_scale) / f64::from(unit));
    let bias = (0.5 / (f64::from(unit) * f64::from(weight_scale))).round() as i32;
    let gap = quantize_multiplier(1.0 / (side * side) as f64);
    let layer =
        |op, inputs, output, params, weights: Vec<i8>, bias: Vec<i32>, rq: Vec<(i32, i32)>| {
            LayerSpec {
                op,
                kernel: 0,
                stride: 1,
                padding: 0,
                inputs,
                output,
                activation_min: -128,
                activation_max: 127,
                params,
                weights,
                bias,
                multipliers: rq.iter().map(|r| r.0).collect(),
                shifts: rq.iter().map(|r| r.1).collect(),
            }
        };
    let spec = ModelSpec {
        tensors: vec![
            tensor(side, side, 3, -128, unit),
            tensor(1, 1, 3, -128, unit),
            tensor(1, 1, 2, 0, unit),
        ],
        layers: vec![
            layer(
                Op::GlobalAvgPool,
                vec![0],
                1,
                [gap.0, gap.1, 0, 0, 0, 0],
                vec![],
                vec![],
                vec![],
            ),
            layer(
                Op::FullyConnected,
                vec![1],
                2,
                [0; 6],
                vec![-127, -127, -127, 127, 127, 127],
                vec![bias, -bias],
                vec![(m, s), (m, s)],
            ),
        ],
        input: 0,
        output: 2,
    };
    let (blob, plan) = encode(&spec).unwrap();
    let bundle = scanside_runtime::bundle::Bundle::load(
        dir,
        &scanside_runtime::bundle::Trust::AllowUnsigned,
    )
    .unwrap();
    let mut manifest = bundle.manifest.clone();
    manifest.int8 = Some(scanside_runtime::bundle::Int8Entry {
        file: "model.i8".into(),
        sha256: String::new(),
        calibration_method: "fixed".into(),
        arena_bytes: plan.arena_bytes,
        blob_bytes: blob.len(),
        report: None,
        qdq_onnx: None,
    });
    scanside_runtime::bundle::write_bundle_with_int8(
        dir,
        manifest,
        &bundle
            .read_model(scanside_runtime::bundle::ModelFile::Fp32)
            .unwrap(),
        Some(&blob),
        None,
        Some(&test_key()),
    )
    .unwrap();
}

/// The fixtures' signing key; its public key is written beside each bundle as `<bundle>.pub`.
pub fn test_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

/// Writes a 16-bit MONOCHROME DICOM file (explicit VR little endian) with optional window.
pub fn write_dicom(
    path: &Path,
    photometric: &str,
    pixels: &[u16],
    rows: u16,
    cols: u16,
    window: Option<(f64, f64)>,
) {
    scanside_runtime::fixtures::write_dicom(
        path,
        &scanside_runtime::fixtures::DicomFixture {
            photometric,
            pixels,
            rows,
            cols,
            window,
            patient_id: None,
            sop_instance_uid: None,
            study_uid: None,
        },
    );
}

/// Writes an RGB PNG filled with one gray level.
pub fn write_png(path: &Path, level: u8) {
    image::RgbImage::from_pixel(9, 7, image::Rgb([level, level, level]))
        .save(path)
        .unwrap();
}

/// A `Command` for the `scanside` binary under test. With `SCANSIDE_TEST_RUNNER` set (e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`, as `tools/test.sh` does for the cross-compiled
/// test run), the binary is started through that runner, so the CLI tests also run the
/// aarch64 binary.
pub fn scanside_command() -> std::process::Command {
    let binary = env!("CARGO_BIN_EXE_scanside");
    match std::env::var("SCANSIDE_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut command = std::process::Command::new(words.next().unwrap_or_default());
            command.args(words).arg(binary);
            command
        }
        _ => std::process::Command::new(binary),
    }
}

/// `scanside screen` of a fixture bundle with its own public key and `extra` arguments before
/// the files; the output and its JSON lines.
pub fn screen_signed(
    bundle: &Path,
    extra: &[&str],
    files: &[&Path],
) -> (std::process::Output, Vec<serde_json::Value>) {
    let out = scanside_command()
        .arg("screen")
        .arg("--bundle")
        .arg(bundle)
        .arg("--public-key")
        .arg(bundle.with_extension("pub"))
        .args(extra)
        .args(files)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, lines)
}
