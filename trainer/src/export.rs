//! Export: writes a fine-tuned classifier as an ONNX fp32 model (opset 13, BatchNorm folded
//! into the convolutions) inside a bundle directory with its manifest, then proves the export:
//! the runtime loads the bundle and reproduces the burn model's logits on real images.
//!
//! burn has no ONNX export, so the graph is built here from the model's weights with the ONNX
//! protobuf types that tract-onnx already compiles (`tract_onnx::pb`), encoded with prost.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use prost::Message;
use scanside_runtime::bundle::signing::key_id;
use scanside_runtime::bundle::{
    write_bundle_with_int8, Bundle, BundleManifest, Calibration, FileEntry, Int8Entry, ModelEntry,
    OutputActivation, Provenance, FORMAT_VERSION,
};
use scanside_runtime::bundle::{SigningKey, Trust};
use scanside_runtime::infer::Classifier as RuntimeClassifier;
use scanside_runtime::preprocess::normalize_in_place;
use serde::Serialize;
use tract_onnx::pb;

use crate::data::{load_images_with, open_split, Partition, Task};
use crate::evaluate::load_finetuned;
use crate::model::{input_tensor, to_vec, Block, Classifier};
use crate::quantize::{
    check_budget, quantize, quantize_bias, quantize_per_channel, FloatGraph, FloatOp, MethodReport,
    QuantizeConfig,
};
use crate::runlog::load_json;
use crate::{Error, Result};

/// ONNX opset written.
pub const OPSET: i64 = 13;
/// Largest logit difference accepted between burn and the exported model.
pub const LOGIT_TOLERANCE: f32 = 1e-4;
const MODEL_FILE: &str = "model.onnx";
const INPUT_NAME: &str = "input";
const OUTPUT_NAME: &str = "logits";

/// What an export wrote and how closely the runtime reproduced the model.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The model's sha256.
    pub model_sha256: String,
    /// Size of the ONNX file.
    pub model_bytes: usize,
    /// Images compared between burn and the runtime.
    pub checked_images: usize,
    /// Largest absolute logit difference seen.
    pub max_abs_logit_diff: f32,
    /// Id of the key that signed the manifest (`None`: unsigned).
    pub signed_by: Option<String>,
    /// The int8 model, when the `mcu` target was exported.
    pub int8: Option<Int8Report>,
}

/// What the int8 export chose and measured.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Report {
    /// The blob's file in the bundle.
    pub file: String,
    /// The calibration method kept.
    pub method: String,
    /// Blob bytes (flash).
    pub blob_bytes: usize,
    /// Arena bytes (activation RAM, the memory plan's peak).
    pub arena_bytes: usize,
    /// What one buffer per tensor would take (without the memory plan).
    pub unplanned_arena_bytes: usize,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Every method against fp32 on validation, the kept one first.
    pub methods: Vec<MethodReport>,
    /// Set when the int8 model loses more than the configured points against fp32.
    pub warning: Option<String>,
}

/// What to export besides the fp32 ONNX model.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Validation images compared between burn and the runtime (at least one).
    pub check_images: usize,
    /// Also write the int8 blob (the `mcu` target), run on the host by the int8 core.
    pub int8: bool,
    /// Quantisation settings.
    pub quantize: QuantizeConfig,
    /// Refuse an int8 model whose blob exceeds this many bytes.
    pub flash_budget: Option<usize>,
    /// Refuse an int8 model whose arena exceeds this many bytes.
    pub ram_budget: Option<usize>,
    /// Which frames of multi-frame DICOM files the runtime screens (a deployment choice: the
    /// model sees one frame at a time either way).
    pub dicom_frames: scanside_runtime::decode::DicomFrames,
}

/// Export targets named on the command line (`onnx`, `onnx,onnx-int8,mcu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// The int8 models (`mcu` and/or `onnx-int8`: the blob and its QDQ ONNX twin).
    pub mcu: bool,
}

/// Parses `--targets`.
pub fn parse_targets(text: &str) -> std::result::Result<Targets, String> {
    let mut int8 = false;
    let mut onnx = false;
    for t in text.split(',').map(str::trim) {
        match t {
            "onnx" => onnx = true,
            // One quantisation serves both int8 targets, and both are written: the blob
            // (the firmware's, and the runtime's --engine int8) and its QDQ ONNX twin.
            "mcu" | "onnx-int8" => int8 = true,
            other => {
                return Err(format!(
                    "unknown export target {other:?}: expected onnx, onnx-int8 or mcu"
                ))
            }
        }
    }
    if !onnx {
        return Err("the onnx target is required (the bundle's reference model)".into());
    }
    Ok(Targets { mcu: int8 })
}

const INT8_FILE: &str = "model.i8";
const QDQ_FILE: &str = "model.qdq.onnx";

/// A convolution with BatchNorm folded in: `W' = W·γ/σ`, `b' = β − μ·γ/σ`.
pub(crate) struct FoldedConv {
    /// OIHW weights.
    pub(crate) weight: Vec<f32>,
    pub(crate) shape: [usize; 4],
    pub(crate) bias: Vec<f32>,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    /// 1, or the channel count for a depthwise convolution (weights `[C][1][k][k]`).
    pub(crate) groups: usize,
}

pub(crate) fn fold<B: Backend>(conv: &Conv2d<B>, bn: &BatchNorm<B>) -> FoldedConv {
    let shape = conv.weight.val().dims();
    let mut weight = to_vec(conv.weight.val());
    let gamma = to_vec(bn.gamma.val());
    let beta = to_vec(bn.beta.val());
    let mean = to_vec(bn.running_mean.value());
    let var = to_vec(bn.running_var.value());
    let conv_bias = conv.bias.as_ref().map(|b: &Param<_>| to_vec(b.val()));
    let per_out = shape[1] * shape[2] * shape[3];
    let mut bias = Vec::with_capacity(shape[0]);
    for o in 0..shape[0] {
        let scale = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
        weight[o * per_out..(o + 1) * per_out]
            .iter_mut()
            .for_each(|w| *w *= scale);
        let b0 = conv_bias.as_ref().map_or(0.0, |b| b[o]);
        bias.push(beta[o] + (b0 - mean[o]) * scale);
    }
    FoldedConv {
        weight,
        shape,
        bias,
        stride: conv.stride[0],
        padding: shape[2] / 2,
        groups: conv.groups,
    }
}

/// Accumulates nodes and initialisers of the ONNX graph.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    fn constant(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    fn constant_of(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: pb::tensor_proto::DataType,
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// `DequantizeLinear` of an integer initializer (per channel along axis 0 when `scales`
    /// has several entries).
    fn dequantized(
        &mut self,
        name: &str,
        dims: &[usize],
        q: QuantizedConstant<'_>,
        scales: &[f32],
    ) -> String {
        use pb::tensor_proto::DataType;
        let (data, zero) = match q {
            QuantizedConstant::I8(v) => (
                self.constant_of(
                    name,
                    dims,
                    DataType::Int8,
                    v.iter().map(|&x| x as u8).collect(),
                ),
                self.constant_of(
                    &format!("{name}.zero_point"),
                    &[scales.len()],
                    DataType::Int8,
                    vec![0; scales.len()],
                ),
            ),
            QuantizedConstant::I32(v) => (
                self.constant_of(
                    name,
                    dims,
                    DataType::Int32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                self.constant_of(
                    &format!("{name}.zero_point"),
                    &[scales.len()],
                    DataType::Int32,
                    vec![0; 4 * scales.len()],
                ),
            ),
        };
        let scale = self.constant(&format!("{name}.scale"), &[scales.len()], scales.to_vec());
        self.node(
            "DequantizeLinear",
            vec![data, scale, zero],
            vec![int("axis", 0)],
        )
    }

    /// `DequantizeLinear(QuantizeLinear(x))` with a per-tensor int8 scale and zero point.
    fn fake_quant(&mut self, x: String, (scale, zero_point): (f32, i8)) -> String {
        let s = self.fresh("act_scale");
        let s = self.constant(&s, &[], vec![scale]);
        let z = self.fresh("act_zero_point");
        let z = self.constant_of(
            &z,
            &[],
            pb::tensor_proto::DataType::Int8,
            vec![zero_point as u8],
        );
        let q = self.node("QuantizeLinear", vec![x, s.clone(), z.clone()], vec![]);
        self.node("DequantizeLinear", vec![q, s, z], vec![])
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.nodes.push(pb::NodeProto {
            name: output.clone(),
            op_type: op.to_string(),
            input: inputs,
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    fn conv(&mut self, input: String, c: &FoldedConv, name: &str) -> String {
        let w = self.constant(&format!("{name}.weight"), &c.shape, c.weight.clone());
        let b = self.constant(&format!("{name}.bias"), &[c.shape[0]], c.bias.clone());
        let attrs = conv_attributes(c);
        self.node("Conv", vec![input, w, b], attrs)
    }

    fn relu(&mut self, input: String) -> String {
        self.node("Relu", vec![input], vec![])
    }

    fn block<B: Backend>(&mut self, input: String, block: &Block<B>, name: &str) -> String {
        let shortcut = match &block.downsample {
            Some(d) => self.conv(
                input.clone(),
                &fold(&d.conv, &d.bn),
                &format!("{name}.downsample"),
            ),
            None => input.clone(),
        };
        let y = self.conv(
            input,
            &fold(&block.conv1, &block.bn1),
            &format!("{name}.conv1"),
        );
        let y = self.relu(y);
        let mut y = self.conv(y, &fold(&block.conv2, &block.bn2), &format!("{name}.conv2"));
        if let (Some(conv3), Some(bn3)) = (&block.conv3, &block.bn3) {
            let x = self.relu(y);
            y = self.conv(x, &fold(conv3, bn3), &format!("{name}.conv3"));
        }
        let sum = self.node("Add", vec![y, shortcut], vec![]);
        self.relu(sum)
    }
}

/// Integer data behind a `DequantizeLinear`.
enum QuantizedConstant<'a> {
    I8(&'a [i8]),
    I32(&'a [i32]),
}

/// Kernel, strides, pads and (for a depthwise convolution) group of an ONNX `Conv`.
fn conv_attributes(c: &FoldedConv) -> Vec<pb::AttributeProto> {
    let (p, k, s) = (c.padding as i64, c.shape[2] as i64, c.stride as i64);
    let mut attrs = vec![
        ints("kernel_shape", &[k, k]),
        ints("strides", &[s, s]),
        ints("pads", &[p, p, p, p]),
    ];
    if c.groups > 1 {
        attrs.push(int("group", c.groups as i64));
    }
    attrs
}

fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn tensor_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Serialises a classifier as an ONNX model taking `N×C×H×W` normalised images and returning
/// `N×classes` logits.
pub fn onnx_bytes<B: Backend>(model: &Classifier<B>, input_chw: [usize; 3]) -> Vec<u8> {
    let mut g = GraphBuilder::default();
    let backbone = &model.backbone;
    let y = g.conv(
        INPUT_NAME.to_string(),
        &fold(&backbone.stem_conv, &backbone.stem_bn),
        "stem",
    );
    let mut y = g.relu(y);
    if let Some(pool) = &backbone.stem_pool {
        let attrs = vec![
            ints(
                "kernel_shape",
                &[pool.kernel_size[0] as i64, pool.kernel_size[1] as i64],
            ),
            ints("strides", &[pool.stride[0] as i64, pool.stride[1] as i64]),
            ints("pads", &[1, 1, 1, 1]),
        ];
        y = g.node("MaxPool", vec![y], attrs);
    }
    for (i, block) in backbone.blocks.iter().enumerate() {
        y = g.block(y, block, &format!("block{i}"));
    }
    let pooled = g.node("GlobalAveragePool", vec![y], vec![]);
    let flat = g.node("Flatten", vec![pooled], vec![int("axis", 1)]);
    // burn's Linear stores its weight as [in, out], which is Gemm's B without transposition.
    let [fin, fout] = model.head.weight.val().dims();
    let w = g.constant("head.weight", &[fin, fout], to_vec(model.head.weight.val()));
    let b = g.constant(
        "head.bias",
        &[fout],
        model
            .head
            .bias
            .as_ref()
            .map_or(vec![0.0; fout], |b| to_vec(b.val())),
    );
    let logits = g.node("Gemm", vec![flat, w, b], vec![]);
    // Rename the last output to the public output name.
    if let Some(last) = g.nodes.last_mut() {
        last.output = vec![OUTPUT_NAME.to_string()];
    }
    let _ = logits;
    let [c, h, w] = input_chw;
    let graph = pb::GraphProto {
        name: "scanside_classifier".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
        output: vec![tensor_info(OUTPUT_NAME, &[None, Some(fout)])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        producer_name: "scanside-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// The int8 model as a standard ONNX QDQ graph (opset 13): every activation passes through
/// `QuantizeLinear → DequantizeLinear` with the blob's scale and zero point, weights are int8
/// per output channel and biases int32 in accumulator scale, each behind a `DequantizeLinear`
/// — the form onnxruntime and TensorRT fuse into integer kernels. Same quantisation as the blob,
/// so the two agree up to the rounding of the requantisation (fixed point in the blob).
pub(crate) fn qdq_onnx_bytes(
    graph: &FloatGraph,
    quant: &[(f32, i8)],
    input_chw: [usize; 3],
) -> Vec<u8> {
    let mut g = GraphBuilder::default();
    let mut names: Vec<String> = vec![String::new(); graph.tensors.len()];
    names[0] = g.fake_quant(INPUT_NAME.to_string(), quant[0]);
    let mut classes = 0;
    for (i, layer) in graph.layers.iter().enumerate() {
        let x = names[layer.inputs[0]].clone();
        let y = match &layer.op {
            FloatOp::Conv { conv, relu } => {
                let o = conv.shape[0];
                let (w, scales) = quantize_per_channel(&conv.weight, o);
                let b = quantize_bias(&conv.bias, quant[layer.inputs[0]].0, &scales);
                let bias_scales: Vec<f32> = scales
                    .iter()
                    .map(|s| s * quant[layer.inputs[0]].0)
                    .collect();
                let w = g.dequantized(
                    &format!("layer{i}.weight"),
                    &conv.shape,
                    QuantizedConstant::I8(&w),
                    &scales,
                );
                let b = g.dequantized(
                    &format!("layer{i}.bias"),
                    &[o],
                    QuantizedConstant::I32(&b),
                    &bias_scales,
                );
                let y = g.node("Conv", vec![x, w, b], conv_attributes(conv));
                if *relu {
                    g.relu(y)
                } else {
                    y
                }
            }
            FloatOp::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let p = *padding as i64;
                let attrs = vec![
                    ints("kernel_shape", &[*kernel as i64, *kernel as i64]),
                    ints("strides", &[*stride as i64, *stride as i64]),
                    ints("pads", &[p, p, p, p]),
                ];
                g.node("MaxPool", vec![x], attrs)
            }
            FloatOp::Add { relu } => {
                let sum = g.node("Add", vec![x, names[layer.inputs[1]].clone()], vec![]);
                if *relu {
                    g.relu(sum)
                } else {
                    sum
                }
            }
            FloatOp::GlobalAvgPool => g.node("GlobalAveragePool", vec![x], vec![]),
            FloatOp::FullyConnected { weight, bias } => {
                let out = bias.len();
                let fin = weight.len() / out;
                let (w, scales) = quantize_per_channel(weight, out);
                let b = quantize_bias(bias, quant[layer.inputs[0]].0, &scales);
                let bias_scales: Vec<f32> = scales
                    .iter()
                    .map(|s| s * quant[layer.inputs[0]].0)
                    .collect();
                let w = g.dequantized(
                    &format!("layer{i}.weight"),
                    &[out, fin],
                    QuantizedConstant::I8(&w),
                    &scales,
                );
                let b = g.dequantized(
                    &format!("layer{i}.bias"),
                    &[out],
                    QuantizedConstant::I32(&b),
                    &bias_scales,
                );
                let flat = g.node("Flatten", vec![x], vec![int("axis", 1)]);
                classes = out;
                g.node("Gemm", vec![flat, w, b], vec![int("transB", 1)])
            }
        };
        names[layer.output] = g.fake_quant(y, quant[layer.output]);
    }
    if let Some(last) = g.nodes.last_mut() {
        last.output = vec![OUTPUT_NAME.to_string()];
    }
    let [c, h, w] = input_chw;
    let graph = pb::GraphProto {
        name: "scanside_classifier_qdq".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
        output: vec![tensor_info(OUTPUT_NAME, &[None, Some(classes)])],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 7,
        producer_name: "scanside-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The temperature and thresholds of an evaluation report (fitted on validation), for the
/// bundle; `None` when the report has no operating points.
fn calibration_of(evaluation: &serde_json::Value) -> Option<Calibration> {
    let points = evaluation.get("operating_points")?.as_array()?;
    if points.is_empty() {
        return None;
    }
    Some(Calibration {
        temperature: evaluation
            .pointer("/calibration/temperature")
            .and_then(|t| t.as_f64())
            .unwrap_or(1.0) as f32,
        target_sensitivity: evaluation.get("target_sensitivity")?.as_f64()? as f32,
        thresholds: points
            .iter()
            .map(|p| {
                p.get("threshold")
                    .and_then(|t| t.as_f64())
                    .map(|t| t as f32)
            })
            .collect(),
    })
}

/// Exports a fine-tuned run to a bundle directory, signed with `sign_key` when given, and
/// checks it (signature included) on `check_images` validation images (at least one).
pub fn export_run<B: Backend>(
    run: &Path,
    bundle_dir: &Path,
    options: &ExportOptions,
    sign_key: Option<&SigningKey>,
    device: &B::Device,
) -> Result<ExportReport> {
    let (config, model) = load_finetuned::<B>(run, device)?;
    let preprocess = config
        .preprocess
        .clone()
        .expect("checked by load_finetuned");
    let chw = [
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    ];
    let onnx = onnx_bytes(&model, chw);
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let evaluation: Option<serde_json::Value> = ["eval-test.json", "eval-val.json"]
        .iter()
        .map(|f| run.join(f))
        .find(|p| p.is_file())
        .map(|p| load_json(&p))
        .transpose()?;
    let manifest = BundleManifest {
        format_version: FORMAT_VERSION,
        model: ModelEntry {
            file: MODEL_FILE.into(),
            sha256: String::new(),
            opset: OPSET,
            input_name: INPUT_NAME.into(),
            output_name: OUTPUT_NAME.into(),
        },
        preprocess: scanside_runtime::preprocess::PreprocessConfig {
            dicom_frames: options.dicom_frames,
            ..preprocess.clone()
        },
        class_names: config.class_names.clone(),
        calibration: evaluation.as_ref().and_then(calibration_of),
        output: if index.task == Task::MultiLabel {
            OutputActivation::Sigmoid
        } else {
            OutputActivation::Softmax
        },
        provenance: Provenance {
            created_by: format!("scanside-train {}", env!("CARGO_PKG_VERSION")),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            training_config: serde_json::to_value(&config).expect("config serialises"),
            evaluation,
        },
        int8: None,
    };
    let (int8, int8_report) = if options.int8 {
        let (blob, qdq, report) = export_int8(
            &model,
            &index,
            &split,
            &config,
            &preprocess,
            options,
            device,
        )?;
        (Some((blob, qdq)), Some(report))
    } else {
        (None, None)
    };
    let mut manifest = manifest;
    manifest.int8 = int8_report.as_ref().map(|r| Int8Entry {
        file: r.file.clone(),
        sha256: String::new(),
        calibration_method: r.method.clone(),
        arena_bytes: r.arena_bytes,
        blob_bytes: r.blob_bytes,
        report: Some(serde_json::to_value(&r.methods).expect("reports serialise")),
        qdq_onnx: Some(FileEntry {
            file: QDQ_FILE.into(),
            sha256: String::new(),
        }),
    });
    let manifest = write_bundle_with_int8(
        bundle_dir,
        manifest,
        &onnx,
        int8.as_ref().map(|(blob, _)| blob.as_slice()),
        int8.as_ref().map(|(_, qdq)| qdq.as_slice()),
        sign_key,
    )?;

    // Prove it: the runtime loads the bundle and matches burn on real validation images.
    let trust = match sign_key {
        Some(key) => Trust::Keys(vec![key.verifying_key()]),
        None => Trust::AllowUnsigned,
    };
    let bundle = Bundle::load(bundle_dir, &trust)?;
    let runtime = RuntimeClassifier::load(&bundle)?;
    let val = split.indices(&index, Partition::Val);
    let take: Vec<usize> = val
        .iter()
        .copied()
        .take(options.check_images.max(1))
        .collect();
    let images = load_images_with(&index, &take, &preprocess, config.skip_bad)?;
    let burn_logits = to_vec(model.forward(input_tensor::<B>(
        images.pixels.clone(),
        &preprocess,
        device,
    )));
    let classes = config.class_names.len();
    let mut max_diff = 0.0_f32;
    for i in 0..images.len() {
        let mut input = images.image(i).to_vec();
        normalize_in_place(&mut input, &preprocess);
        let logits = runtime.logits(&input)?;
        for (a, b) in logits
            .iter()
            .zip(&burn_logits[i * classes..(i + 1) * classes])
        {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    if max_diff > LOGIT_TOLERANCE {
        return Err(Error::ExportMismatch(format!(
            "{}: tract's logits differ from burn's by {max_diff:e} (> {LOGIT_TOLERANCE:e})",
            bundle_dir.display()
        )));
    }
    Ok(ExportReport {
        bundle: bundle_dir.to_path_buf(),
        model_sha256: manifest.model.sha256,
        model_bytes: onnx.len(),
        checked_images: images.len(),
        max_abs_logit_diff: max_diff,
        signed_by: sign_key.map(|k| key_id(&k.verifying_key())),
        int8: int8_report,
    })
}

/// Every `step`-th of `indices`, at most `n` (spread over the partition, not its head).
pub(crate) fn spread(indices: &[usize], n: usize) -> Vec<usize> {
    if n == 0 || n >= indices.len() {
        return indices.to_vec();
    }
    (0..n).map(|i| indices[i * indices.len() / n]).collect()
}

/// Quantises the model (calibration on training images, methods compared on validation),
/// checks the device budget and returns the chosen blob with its report.
#[allow(clippy::too_many_arguments)]
fn export_int8<B: Backend>(
    model: &Classifier<B>,
    index: &crate::data::DatasetIndex,
    split: &crate::data::SplitFile,
    config: &crate::finetune::FinetuneConfig,
    preprocess: &scanside_runtime::preprocess::PreprocessConfig,
    options: &ExportOptions,
    device: &B::Device,
) -> Result<(Vec<u8>, Vec<u8>, Int8Report)> {
    let q = &options.quantize;
    let train = spread(
        &split.indices(index, Partition::Train),
        q.calibration_images,
    );
    let val = spread(&split.indices(index, Partition::Val), q.validation_images);
    let calibration = load_images_with(index, &train, preprocess, config.skip_bad)?;
    let validation = load_images_with(index, &val, preprocess, config.skip_bad)?;
    let quantized = quantize(model, &calibration, &validation, preprocess, q, device)?;
    check_budget(&quantized, options.flash_budget, options.ram_budget)?;
    let best = &quantized.reports[0];
    let warning = (best.drop_points() > q.warn_drop_points).then(|| {
        format!(
            "int8 ({}) loses {:.2} points against fp32 on validation (more than {}); consider \
             more calibration images, or quantisation-aware training (`scanside-train finetune \
             --qat RUN`) and exporting that run",
            best.method,
            best.drop_points(),
            q.warn_drop_points
        )
    });
    if let Some(w) = &warning {
        eprintln!("scanside-train: WARNING: {w}");
    }
    let report = Int8Report {
        file: INT8_FILE.into(),
        method: quantized.method.clone(),
        blob_bytes: quantized.blob.len(),
        arena_bytes: quantized.plan.arena_bytes,
        unplanned_arena_bytes: quantized.plan.unplanned_bytes,
        macs: quantized.macs,
        methods: quantized.reports.clone(),
        warning,
    };
    Ok((quantized.blob, quantized.qdq_onnx, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResNetConfig;
    use burn::backend::Flex;
    use burn::tensor::Tensor;
    use tract_onnx::prelude::*;

    #[test]
    fn targets_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_targets("onnx"), Ok(Targets { mcu: false }));
        assert_eq!(
            parse_targets("onnx,onnx-int8,mcu"),
            Ok(Targets { mcu: true })
        );
        assert_eq!(parse_targets("onnx, mcu"), Ok(Targets { mcu: true }));
        assert!(parse_targets("mcu")
            .unwrap_err()
            .contains("onnx target is required"));
        assert!(parse_targets("onnx,tflite")
            .unwrap_err()
            .contains("\"tflite\""));
    }

    /// Bottleneck blocks (conv3) and the ImageNet stem (max-pool) export like the basic ones:
    /// tract reproduces burn's logits.
    #[test]
    fn resnet50_with_the_imagenet_stem_exports_to_the_same_logits() {
        exports_to_the_same_logits(ResNetConfig {
            depth: 50,
            width_multiplier: 0.125,
            in_channels: 3,
            small_input_stem: false,
            separable: false,
        });
    }

    /// Depthwise-separable blocks (`--arch micro`) export with ONNX's `group` attribute.
    #[test]
    fn separable_blocks_export_to_the_same_logits() {
        exports_to_the_same_logits(ResNetConfig {
            depth: 18,
            width_multiplier: 0.25,
            in_channels: 3,
            small_input_stem: true,
            separable: true,
        });
    }

    fn exports_to_the_same_logits(config: ResNetConfig) {
        let device = Default::default();
        let model = Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 5, &device);
        let side = 32;
        let input: Vec<f32> = (0..3 * side * side)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let expected = to_vec(model.forward(Tensor::<Flex, 4>::from_data(
            burn::tensor::TensorData::new(input.clone(), [1, 3, side, side]),
            &device,
        )));
        let bytes = onnx_bytes(&model, [3, side, side]);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, side, side]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap();
        let tensor = tract_onnx::prelude::Tensor::from_shape(&[1, 3, side, side], &input).unwrap();
        let out = plan.run(tvec!(tensor.into())).unwrap();
        let got: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(got.len(), 5);
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "tract {got:?} vs burn {expected:?}");
        }
    }
}
