//! Post-training static quantisation to the int8 model blob (`scanside_int8::blob`).
//!
//! The classifier is traced once in burn to get its graph (BatchNorm folded, as in the ONNX
//! export: [`crate::graph`]) and, on a sample of training images, every intermediate
//! activation; each calibration method of [`crate::int8_calibration`] turns those into
//! per-tensor int8 grids. Every requantisation constant (multiplier + shift, add and pool
//! scales) is computed here, on the host, once.
//!
//! Each method's blob runs on the validation split through the runtime's int8 engine (the
//! same core the firmware runs) and is compared with the fp32 model; the best is kept.

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use scanside_int8::arith::quantize_multiplier;
use scanside_int8::blob::write::{
    encode, AlignedBlob, LayerSpec, MemoryPlan, ModelSpec, TensorSpec,
};
use scanside_int8::blob::{Model, Op};
use scanside_int8::kernels::add::ADD_LEFT_SHIFT;
use scanside_runtime::infer::Int8Classifier;
use scanside_runtime::preprocess::{normalize_in_place, PreprocessConfig};
use serde::{Deserialize, Serialize};

use crate::config::QuantizeConfig;
use crate::data::{Finding, ImageSet, Target};
use crate::graph::{FloatGraph, FloatOp};
use crate::int8_calibration::{
    calibrate, quantize_bias, quantize_per_channel, tensor_quantization,
};
use crate::metrics::{argmax, predict_logits, roc_auc};
use crate::model::Classifier;
use crate::onnx::qdq_onnx_bytes;
use crate::{Error, Result};

/// OIHW → OHWI (the engine's layout: channels innermost).
fn ohwi(weights: &[f32], [o, i, kh, kw]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; weights.len()];
    for oc in 0..o {
        for ic in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out[((oc * kh + y) * kw + x) * i + ic] =
                        weights[((oc * i + ic) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

fn weighted_layer(
    op: Op,
    weights: &[f32],
    bias: &[f32],
    out_channels: usize,
    input_scale: f32,
    output: (f32, i8),
    with_relu: bool,
) -> LayerSpec {
    let (q, scales) = quantize_per_channel(weights, out_channels);
    let bias = quantize_bias(bias, input_scale, &scales);
    let (multipliers, shifts) = scales
        .iter()
        .map(|s| quantize_multiplier(f64::from(input_scale) * f64::from(*s) / f64::from(output.0)))
        .unzip();
    LayerSpec {
        activation_min: if with_relu { output.1 } else { -128 },
        weights: q,
        bias,
        multipliers,
        shifts,
        ..plain(op, [0; 6])
    }
}

/// The int8 model of a traced graph with the given per-tensor `(scale, zero point)`.
fn model_spec(graph: &FloatGraph, quant: &[(f32, i8)]) -> ModelSpec {
    let tensors = graph
        .tensors
        .iter()
        .zip(quant)
        .map(|(t, &(scale, zero_point))| TensorSpec {
            height: t.height,
            width: t.width,
            channels: t.channels,
            zero_point,
            scale,
        })
        .collect();
    let layers = graph
        .layers
        .iter()
        .map(|layer| {
            let s_in = quant[layer.inputs[0]].0;
            let out = quant[layer.output];
            let mut spec = match &layer.op {
                FloatOp::Conv { conv, relu } if conv.groups > 1 => {
                    // Depthwise: quantised per channel in `[C][k·k]` order, then laid out
                    // `[k][k][C]` as the engine reads it.
                    let mut spec = weighted_layer(
                        Op::DepthwiseConv2d,
                        &conv.weight,
                        &conv.bias,
                        conv.shape[0],
                        s_in,
                        out,
                        *relu,
                    );
                    let (channels, taps) = (conv.shape[0], conv.shape[2] * conv.shape[3]);
                    let per_channel = std::mem::take(&mut spec.weights);
                    spec.weights = (0..taps * channels)
                        .map(|i| per_channel[(i % channels) * taps + i / channels])
                        .collect();
                    spec.kernel = conv.shape[2];
                    spec.stride = conv.stride;
                    spec.padding = conv.padding;
                    spec
                }
                FloatOp::Conv { conv, relu } => {
                    let mut spec = weighted_layer(
                        Op::Conv2d,
                        &ohwi(&conv.weight, conv.shape),
                        &conv.bias,
                        conv.shape[0],
                        s_in,
                        out,
                        *relu,
                    );
                    spec.kernel = conv.shape[2];
                    spec.stride = conv.stride;
                    spec.padding = conv.padding;
                    spec
                }
                FloatOp::FullyConnected { weight, bias } => weighted_layer(
                    Op::FullyConnected,
                    weight,
                    bias,
                    bias.len(),
                    s_in,
                    out,
                    false,
                ),
                FloatOp::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => LayerSpec {
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                    ..plain(Op::MaxPool, [0; 6])
                },
                FloatOp::Add { relu } => {
                    let (s1, s2) = (quant[layer.inputs[0]].0, quant[layer.inputs[1]].0);
                    let twice = 2.0 * f64::from(s1.max(s2));
                    let m1 = quantize_multiplier(f64::from(s1) / twice);
                    let m2 = quantize_multiplier(f64::from(s2) / twice);
                    let mo = quantize_multiplier(
                        twice / (f64::from(1_u32 << ADD_LEFT_SHIFT) * f64::from(out.0)),
                    );
                    let mut spec = plain(Op::Add, [m1.0, m1.1, m2.0, m2.1, mo.0, mo.1]);
                    if *relu {
                        spec.activation_min = out.1;
                    }
                    spec
                }
                FloatOp::GlobalAvgPool => {
                    let t = &graph.tensors[layer.inputs[0]];
                    let pixels = (t.height * t.width) as f64;
                    let m = quantize_multiplier(f64::from(s_in) / (f64::from(out.0) * pixels));
                    plain(Op::GlobalAvgPool, [m.0, m.1, 0, 0, 0, 0])
                }
            };
            spec.inputs = layer.inputs.clone();
            spec.output = layer.output;
            spec
        })
        .collect();
    ModelSpec {
        tensors,
        layers,
        input: 0,
        output: graph.tensors.len() - 1,
    }
}

fn plain(op: Op, params: [i32; 6]) -> LayerSpec {
    LayerSpec {
        op,
        kernel: 0,
        stride: 1,
        padding: 0,
        inputs: vec![],
        output: 0,
        activation_min: -128,
        activation_max: 127,
        params,
        weights: vec![],
        bias: vec![],
        multipliers: vec![],
        shifts: vec![],
    }
}

/// int8 against fp32 for one calibration method on validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    /// Calibration method.
    pub method: String,
    /// Validation images compared.
    pub images: usize,
    /// Top-1 accuracy of the fp32 model (multi-class; `None` for multi-label data).
    pub fp32_top1: Option<f64>,
    /// Top-1 accuracy of the int8 model.
    pub int8_top1: Option<f64>,
    /// Share of images where both models pick the same class.
    pub top1_agreement: f64,
    /// Mean over classes of the fp32 one-vs-rest ROC AUC.
    pub fp32_macro_auc: Option<f64>,
    /// The same for int8.
    pub int8_macro_auc: Option<f64>,
    /// Largest absolute logit difference.
    pub max_abs_logit_diff: f32,
    /// Mean absolute logit difference.
    pub mean_abs_logit_diff: f32,
    /// Arena bytes (peak RAM of activations).
    pub arena_bytes: usize,
    /// Blob bytes (flash).
    pub blob_bytes: usize,
}

impl MethodReport {
    /// The score methods are ranked by: int8 top-1 (multi-class) or int8 macro AUC.
    fn score(&self) -> f64 {
        self.int8_top1.or(self.int8_macro_auc).unwrap_or(0.0)
    }

    /// The fp32 − int8 drop in points of the ranking score.
    pub fn drop_points(&self) -> f64 {
        let fp32 = self.fp32_top1.or(self.fp32_macro_auc).unwrap_or(0.0);
        (fp32 - self.score()) * 100.0
    }
}

/// The chosen int8 model and the evidence for the choice.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The blob.
    pub blob: Vec<u8>,
    /// Its memory plan.
    pub plan: MemoryPlan,
    /// The chosen method's name.
    pub method: String,
    /// Every method's comparison, the chosen one first.
    pub reports: Vec<MethodReport>,
    /// Multiply-accumulates per inference.
    pub macs: u64,
    /// The same quantisation as a standard ONNX QDQ model.
    pub qdq_onnx: Vec<u8>,
}

fn macro_auc(logits: &[Vec<f32>], positive: &[Vec<bool>]) -> Option<f64> {
    let classes = logits.first()?.len();
    let aucs: Vec<f64> = (0..classes)
        .filter_map(|c| {
            let scores: Vec<f32> = logits.iter().map(|l| l[c]).collect();
            let pos: Vec<bool> = positive.iter().map(|p| p[c]).collect();
            roc_auc(&scores, &pos)
        })
        .collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

fn is_positive(target: &Target, class: usize) -> bool {
    match target {
        Target::Class(c) => *c == class,
        Target::Findings(f) => matches!(f.get(class), Some(Finding::Positive)),
    }
}

/// Quantises `model` with every configured method, calibrating on `calibration` and comparing
/// with fp32 on `validation`; returns the best.
pub fn quantize<B: Backend>(
    model: &Classifier<B>,
    calibration: &ImageSet,
    validation: &ImageSet,
    preprocess: &PreprocessConfig,
    config: &QuantizeConfig,
    device: &B::Device,
) -> Result<Quantized> {
    if calibration.is_empty() || validation.is_empty() || config.methods.is_empty() {
        return Err(Error::Quantize(
            "quantisation needs calibration and validation images and at least one method".into(),
        ));
    }
    let (graph, stats) = calibrate(model, calibration, preprocess, device);
    let fp32 = predict_logits(model, validation, preprocess, device);
    let classes = fp32[0].len();
    let labels = validation.class_labels();
    let positives: Vec<Vec<bool>> = validation
        .targets
        .iter()
        .map(|t| (0..classes).map(|c| is_positive(t, c)).collect())
        .collect();
    let chw = [
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    ];
    let mut candidates = Vec::new();
    for &method in &config.methods {
        let spec = model_spec(&graph, &tensor_quantization(&graph, &stats, method));
        let (blob, plan) = encode(&spec)
            .map_err(|e| Error::Quantize(format!("int8 model ({}): {e}", method.name())))?;
        let engine =
            Int8Classifier::from_bytes(&blob, std::path::Path::new("<int8 blob>"), chw, classes)?;
        let int8: Vec<Vec<f32>> = (0..validation.len())
            .into_par_iter()
            .map(|i| {
                let mut x = validation.image(i).to_vec();
                normalize_in_place(&mut x, preprocess);
                engine.logits(&x)
            })
            .collect::<std::result::Result<_, _>>()?;
        let (mut max_diff, mut sum_diff, mut agree) = (0.0_f32, 0.0_f64, 0_usize);
        for (a, b) in fp32.iter().zip(&int8) {
            for (x, y) in a.iter().zip(b) {
                max_diff = max_diff.max((x - y).abs());
                sum_diff += f64::from((x - y).abs());
            }
            agree += usize::from(argmax(a) == argmax(b));
        }
        let n = validation.len() as f64;
        let top1 = |logits: &[Vec<f32>]| {
            labels.as_ref().map(|l| {
                logits
                    .iter()
                    .zip(l)
                    .filter(|(p, &y)| argmax(p) == y)
                    .count() as f64
                    / n
            })
        };
        let report = MethodReport {
            method: method.name(),
            images: validation.len(),
            fp32_top1: top1(&fp32),
            int8_top1: top1(&int8),
            top1_agreement: agree as f64 / n,
            fp32_macro_auc: macro_auc(&fp32, &positives),
            int8_macro_auc: macro_auc(&int8, &positives),
            max_abs_logit_diff: max_diff,
            mean_abs_logit_diff: (sum_diff / (n * classes as f64)) as f32,
            arena_bytes: plan.arena_bytes,
            blob_bytes: blob.len(),
        };
        let quant = tensor_quantization(&graph, &stats, method);
        let macs = Model::parse(AlignedBlob::new(&blob).bytes())
            .map_err(|e| Error::Quantize(format!("int8 model ({}): {e}", method.name())))?
            .macs();
        candidates.push((report, blob, plan, macs, quant));
    }
    // Best score; ties go to the smaller logit error.
    candidates.sort_by(|a, b| {
        b.0.score()
            .total_cmp(&a.0.score())
            .then(a.0.mean_abs_logit_diff.total_cmp(&b.0.mean_abs_logit_diff))
    });
    let mut it = candidates.into_iter();
    let (best, blob, plan, macs, quant) = it.next().expect("at least one method");
    let mut reports = vec![best.clone()];
    reports.extend(it.map(|c| c.0));
    Ok(Quantized {
        blob,
        plan,
        method: best.method,
        reports,
        macs,
        qdq_onnx: qdq_onnx_bytes(&graph, &quant, chw),
    })
}

/// Refuses a model that does not fit a device: `flash` for the blob, `ram` for the arena.
pub fn check_budget(quantized: &Quantized, flash: Option<usize>, ram: Option<usize>) -> Result<()> {
    let mut problems = Vec::new();
    if let Some(flash) = flash.filter(|&f| quantized.blob.len() > f) {
        problems.push(format!(
            "the blob needs {} bytes of flash, the budget is {flash}",
            quantized.blob.len()
        ));
    }
    if let Some(ram) = ram.filter(|&r| quantized.plan.arena_bytes > r) {
        problems.push(format!(
            "the activations need an arena of {} bytes of RAM, the budget is {ram}",
            quantized.plan.arena_bytes
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Quantize(format!(
            "the int8 model does not fit the device: {} (fine-tune a smaller model: --width or --image-size)",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_bytes;
    use crate::graph::tests::{images, preprocess, resnet18_eighth};
    use crate::int8_calibration::CalibrationMethod;
    use crate::model::ResNetConfig;
    use burn::backend::Flex;

    fn check_int8_tracks_fp32(config: ResNetConfig, side: usize) {
        let device = Default::default();
        let model = Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 3, &device);
        let pre = preprocess(side as u32);
        let (calibration, validation) = (images(24, side, 2), images(12, side, 3));
        let q = QuantizeConfig {
            methods: vec![
                CalibrationMethod::MinMax,
                CalibrationMethod::Percentile(99.99),
            ],
            ..QuantizeConfig::default()
        };
        let out = quantize(&model, &calibration, &validation, &pre, &q, &device).unwrap();
        let best = &out.reports[0];
        assert_eq!(out.reports.len(), 2);
        let fp32 = predict_logits(&model, &validation, &pre, &device);
        let spread = fp32.iter().flatten().fold(0.0_f32, |m, v| m.max(v.abs()));
        // Within a few percent of the logits' magnitude on average.
        assert!(
            best.mean_abs_logit_diff < 0.05 * spread.max(1e-3),
            "{best:?} (logit spread {spread})"
        );
        assert!(best.top1_agreement >= 0.75, "{best:?}");
        assert!(out.plan.arena_bytes < out.plan.unplanned_bytes);
        // The blob runs in the runtime's engine and reproduces the report's logits.
        let engine =
            Int8Classifier::from_bytes(&out.blob, std::path::Path::new("t"), [3, side, side], 3)
                .unwrap();
        let mut x = validation.image(0).to_vec();
        normalize_in_place(&mut x, &pre);
        assert_eq!(engine.logits(&x).unwrap(), engine.logits(&x).unwrap());
    }

    #[test]
    fn int8_resnet18_tracks_fp32_on_the_same_images() {
        check_int8_tracks_fp32(resnet18_eighth(false), 16);
    }

    #[test]
    fn int8_separable_micro_net_tracks_fp32() {
        check_int8_tracks_fp32(resnet18_eighth(true), 16);
    }

    #[test]
    fn int8_resnet50_with_max_pool_stem_tracks_fp32() {
        check_int8_tracks_fp32(
            ResNetConfig {
                depth: 50,
                width_multiplier: 0.125,
                in_channels: 3,
                small_input_stem: false,
                separable: false,
            },
            32,
        );
    }

    #[test]
    fn budgets_parse_and_refuse_models_that_do_not_fit() {
        assert_eq!(parse_bytes("256K"), Ok(256 * 1024));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12Q").is_err() && parse_bytes("").is_err());
        let q = Quantized {
            blob: vec![0; 2000],
            plan: MemoryPlan {
                offsets: vec![],
                arena_bytes: 5000,
                unplanned_bytes: 9000,
            },
            method: "minmax".into(),
            reports: vec![],
            macs: 0,
            qdq_onnx: vec![],
        };
        assert!(check_budget(&q, Some(2000), Some(5000)).is_ok());
        let e = check_budget(&q, Some(1024), Some(4096))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2000 bytes of flash") && e.contains("5000 bytes of RAM"),
            "{e}"
        );
    }
}
