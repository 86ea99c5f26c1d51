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
use scanside_int8::engine::quantize as quantize_value;
use scanside_int8::kernels::add::ADD_LEFT_SHIFT;
use scanside_runtime::infer::Int8Classifier;
use scanside_runtime::preprocess::{normalize_in_place, PreprocessConfig};
use serde::{Deserialize, Serialize};

use crate::config::QuantizeConfig;
use crate::data::{Finding, ImageSet, Target};
use crate::graph::{
    evaluate, Activation, FloatGraph, FloatLayer, FloatOp, FloatTensor, FoldedConv, Window,
};
use crate::int8_calibration::{
    calibrate, calibrate_graph, quantize_bias, quantize_per_channel, tensor_quantization,
    CalibrationMethod, TensorStats,
};
use crate::metrics::{argmax, predict_logits, roc_auc};
use crate::model::{input_tensor, to_vec, Classifier};
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

/// The int8 clamp of an activation on the output grid `(scale, zero point)`.
fn activation_clamp(activation: Activation, (scale, zero_point): (f32, i8)) -> (i8, i8) {
    let (lo, hi) = activation.bounds();
    let q = |x: f32, outside: i8| {
        if x.is_finite() {
            quantize_value(x, scale, zero_point)
        } else {
            outside
        }
    };
    (q(lo, -128), q(hi, 127))
}

fn weighted_layer(
    op: Op,
    weights: &[f32],
    bias: &[f32],
    out_channels: usize,
    input_scale: f32,
    output: (f32, i8),
    activation: Activation,
) -> LayerSpec {
    let (q, scales) = quantize_per_channel(weights, out_channels);
    let bias = quantize_bias(bias, input_scale, &scales);
    let (multipliers, shifts) = scales
        .iter()
        .map(|s| quantize_multiplier(f64::from(input_scale) * f64::from(*s) / f64::from(output.0)))
        .unzip();
    let (activation_min, activation_max) = activation_clamp(activation, output);
    LayerSpec {
        activation_min,
        activation_max,
        weights: q,
        bias,
        multipliers,
        shifts,
        ..plain(op, [0; 6])
    }
}

/// The kernel geometry of a layer the int8 core runs (square, symmetric, undilated).
fn with_window(mut spec: LayerSpec, window: &Window) -> Result<LayerSpec> {
    let (kernel, stride, padding) = window.as_square().ok_or_else(|| {
        Error::Quantize(format!(
            "the int8 core has no kernel for the window {window:?}"
        ))
    })?;
    spec.kernel = kernel;
    spec.stride = stride;
    spec.padding = padding;
    Ok(spec)
}

/// A convolution's layer: depthwise ones quantised per channel in `[C][k·k]` order, then laid
/// out `[k][k][C]` as the engine reads them; standard ones in OHWI.
fn conv_layer(
    conv: &FoldedConv,
    activation: Activation,
    s_in: f32,
    out: (f32, i8),
) -> Result<LayerSpec> {
    if conv.is_depthwise() {
        let mut spec = weighted_layer(
            Op::DepthwiseConv2d,
            &conv.weight,
            &conv.bias,
            conv.shape[0],
            s_in,
            out,
            activation,
        );
        let (channels, taps) = (conv.shape[0], conv.shape[2] * conv.shape[3]);
        let per_channel = std::mem::take(&mut spec.weights);
        spec.weights = (0..taps * channels)
            .map(|i| per_channel[(i % channels) * taps + i / channels])
            .collect();
        with_window(spec, &conv.window)
    } else {
        let spec = weighted_layer(
            Op::Conv2d,
            &ohwi(&conv.weight, conv.shape),
            &conv.bias,
            conv.shape[0],
            s_in,
            out,
            activation,
        );
        with_window(spec, &conv.window)
    }
}

/// `[out][C·H·W]` weights (ONNX's flattening order) → `[out][H·W·C]` (the engine's).
fn chw_rows_to_hwc(weight: &[f32], input: &FloatTensor) -> Vec<f32> {
    let (c, hw) = (input.channels, input.height * input.width);
    if hw == 1 {
        return weight.to_vec();
    }
    let per_row = c * hw;
    let mut out = vec![0.0; weight.len()];
    for (row_in, row_out) in weight
        .chunks_exact(per_row)
        .zip(out.chunks_exact_mut(per_row))
    {
        for ch in 0..c {
            for p in 0..hw {
                row_out[p * c + ch] = row_in[ch * hw + p];
            }
        }
    }
    out
}

/// The requantisation constants of an add: both inputs onto twice the larger scale, then to
/// the output's.
fn add_layer(s1: f32, s2: f32, out: (f32, i8), activation: Activation) -> LayerSpec {
    let twice = 2.0 * f64::from(s1.max(s2));
    let m1 = quantize_multiplier(f64::from(s1) / twice);
    let m2 = quantize_multiplier(f64::from(s2) / twice);
    let mo = quantize_multiplier(twice / (f64::from(1_u32 << ADD_LEFT_SHIFT) * f64::from(out.0)));
    let mut spec = plain(Op::Add, [m1.0, m1.1, m2.0, m2.1, mo.0, mo.1]);
    (spec.activation_min, spec.activation_max) = activation_clamp(activation, out);
    spec
}

/// One layer of the int8 model.
fn layer_spec(graph: &FloatGraph, layer: &FloatLayer, quant: &[(f32, i8)]) -> Result<LayerSpec> {
    let s_in = quant[layer.inputs[0]].0;
    let out = quant[layer.output];
    let mut spec = match &layer.op {
        FloatOp::Conv { conv, activation } => conv_layer(conv, *activation, s_in, out)?,
        FloatOp::FullyConnected {
            weight,
            bias,
            activation,
        } => weighted_layer(
            Op::FullyConnected,
            &chw_rows_to_hwc(weight, &graph.tensors[layer.inputs[0]]),
            bias,
            bias.len(),
            s_in,
            out,
            *activation,
        ),
        FloatOp::MaxPool { window } => with_window(plain(Op::MaxPool, [0; 6]), window)?,
        FloatOp::Add { activation } => add_layer(s_in, quant[layer.inputs[1]].0, out, *activation),
        FloatOp::GlobalAvgPool => {
            let t = &graph.tensors[layer.inputs[0]];
            let pixels = (t.height * t.width) as f64;
            let m = quantize_multiplier(f64::from(s_in) / (f64::from(out.0) * pixels));
            plain(Op::GlobalAvgPool, [m.0, m.1, 0, 0, 0, 0])
        }
        FloatOp::AvgPool { .. } | FloatOp::Mul | FloatOp::Concat | FloatOp::Unary(_) => {
            return Err(unsupported(&graph.int8_gaps()))
        }
    };
    spec.inputs = layer.inputs.clone();
    spec.output = layer.output;
    Ok(spec)
}

/// The one error for a graph with operators the int8 core lacks, naming all of them.
pub(crate) fn unsupported(gaps: &[String]) -> Error {
    Error::Quantize(format!(
        "the int8 core has no kernel for: {} (the fp32 and QDQ ONNX models export; the int8 \
         blob needs a model without these operators)",
        gaps.join("; ")
    ))
}

/// The int8 model of a float graph with the given per-tensor `(scale, zero point)`.
fn model_spec(graph: &FloatGraph, quant: &[(f32, i8)]) -> Result<ModelSpec> {
    let gaps = graph.int8_gaps();
    if !gaps.is_empty() {
        return Err(unsupported(&gaps));
    }
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
        .map(|layer| layer_spec(graph, layer, quant))
        .collect::<Result<_>>()?;
    Ok(ModelSpec {
        tensors,
        layers,
        input: 0,
        output: graph.tensors.len() - 1,
    })
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

fn check_inputs(
    calibration: &ImageSet,
    validation: &ImageSet,
    config: &QuantizeConfig,
) -> Result<()> {
    if calibration.is_empty() || validation.is_empty() || config.methods.is_empty() {
        return Err(Error::Quantize(
            "quantisation needs calibration and validation images and at least one method".into(),
        ));
    }
    Ok(())
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
    check_inputs(calibration, validation, config)?;
    let (graph, stats) = calibrate(model, calibration, preprocess, device);
    let fp32 = predict_logits(model, validation, preprocess, device);
    quantize_calibrated(&graph, &stats, &fp32, validation, preprocess, config)
}

/// [`quantize`] for a float graph imported from ONNX: its activations and fp32 logits are
/// computed by evaluating the graph in burn.
pub(crate) fn quantize_graph<B: Backend>(
    graph: &FloatGraph,
    calibration: &ImageSet,
    validation: &ImageSet,
    preprocess: &PreprocessConfig,
    config: &QuantizeConfig,
    device: &B::Device,
) -> Result<Quantized> {
    check_inputs(calibration, validation, config)?;
    let stats = calibrate_graph::<B>(graph, calibration, preprocess, device);
    let fp32 = graph_logits::<B>(graph, validation, preprocess, device);
    quantize_calibrated(graph, &stats, &fp32, validation, preprocess, config)
}

/// The QDQ ONNX model alone, for a graph the int8 core cannot run (no engine to compare the
/// methods on): calibrated with the first configured method.
pub(crate) fn qdq_only<B: Backend>(
    graph: &FloatGraph,
    calibration: &ImageSet,
    preprocess: &PreprocessConfig,
    config: &QuantizeConfig,
    device: &B::Device,
) -> Result<(Vec<u8>, String)> {
    let method = *config.methods.first().ok_or_else(|| {
        Error::Quantize("quantisation needs at least one calibration method".into())
    })?;
    if calibration.is_empty() {
        return Err(Error::Quantize(
            "calibration needs at least one image".into(),
        ));
    }
    let stats = calibrate_graph::<B>(graph, calibration, preprocess, device);
    let quant = tensor_quantization(graph, &stats, method, config.profile);
    Ok((qdq_onnx_bytes(graph, &quant, config.profile), method.name()))
}

/// Logits of a float graph on images, one row per image.
pub(crate) fn graph_logits<B: Backend>(
    graph: &FloatGraph,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    const BATCH: usize = 16;
    let classes = graph.classes();
    let mut out = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(BATCH) {
        let end = (start + BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let values = evaluate(graph, input_tensor::<B>(pixels, preprocess, device));
        let logits = to_vec(values.into_iter().last().expect("a graph has an output"));
        out.extend(logits.chunks_exact(classes).map(<[f32]>::to_vec));
    }
    out
}

/// One calibration method's int8 model and its comparison with fp32.
struct Candidate {
    report: MethodReport,
    blob: Vec<u8>,
    plan: MemoryPlan,
    macs: u64,
    quant: Vec<(f32, i8)>,
}

/// Builds the int8 model of one method's grids and runs it on the validation images.
fn candidate(
    graph: &FloatGraph,
    quant: Vec<(f32, i8)>,
    method: CalibrationMethod,
    fp32: &[Vec<f32>],
    validation: &ImageSet,
    preprocess: &PreprocessConfig,
) -> Result<Candidate> {
    let name = method.name();
    let (blob, plan) = encode(&model_spec(graph, &quant)?)
        .map_err(|e| Error::Quantize(format!("int8 model ({name}): {e}")))?;
    let classes = graph.classes();
    let engine = Int8Classifier::from_bytes(
        &blob,
        std::path::Path::new("<int8 blob>"),
        graph.input_chw(),
        classes,
    )?;
    let int8: Vec<Vec<f32>> = (0..validation.len())
        .into_par_iter()
        .map(|i| {
            let mut x = validation.image(i).to_vec();
            normalize_in_place(&mut x, preprocess);
            engine.logits(&x)
        })
        .collect::<std::result::Result<_, _>>()?;
    let macs = Model::parse(AlignedBlob::new(&blob).bytes())
        .map_err(|e| Error::Quantize(format!("int8 model ({name}): {e}")))?
        .macs();
    let mut report = compare(fp32, &int8, validation, classes);
    report.method = name;
    report.arena_bytes = plan.arena_bytes;
    report.blob_bytes = blob.len();
    Ok(Candidate {
        report,
        blob,
        plan,
        macs,
        quant,
    })
}

/// int8 against fp32 logits on the validation images (method and sizes left blank).
fn compare(
    fp32: &[Vec<f32>],
    int8: &[Vec<f32>],
    validation: &ImageSet,
    classes: usize,
) -> MethodReport {
    let labels = validation.class_labels();
    let positives: Vec<Vec<bool>> = validation
        .targets
        .iter()
        .map(|t| (0..classes).map(|c| is_positive(t, c)).collect())
        .collect();
    let (mut max_diff, mut sum_diff, mut agree) = (0.0_f32, 0.0_f64, 0_usize);
    for (a, b) in fp32.iter().zip(int8) {
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
    MethodReport {
        method: String::new(),
        images: validation.len(),
        fp32_top1: top1(fp32),
        int8_top1: top1(int8),
        top1_agreement: agree as f64 / n,
        fp32_macro_auc: macro_auc(fp32, &positives),
        int8_macro_auc: macro_auc(int8, &positives),
        max_abs_logit_diff: max_diff,
        mean_abs_logit_diff: (sum_diff / (n * classes as f64)) as f32,
        arena_bytes: 0,
        blob_bytes: 0,
    }
}

/// Every configured method's int8 model compared with `fp32` on `validation`; the best kept.
fn quantize_calibrated(
    graph: &FloatGraph,
    stats: &[TensorStats],
    fp32: &[Vec<f32>],
    validation: &ImageSet,
    preprocess: &PreprocessConfig,
    config: &QuantizeConfig,
) -> Result<Quantized> {
    let mut candidates = config
        .methods
        .iter()
        .map(|&method| {
            let quant = tensor_quantization(graph, stats, method, config.profile);
            candidate(graph, quant, method, fp32, validation, preprocess)
        })
        .collect::<Result<Vec<_>>>()?;
    // Best score; ties go to the smaller logit error.
    candidates.sort_by(|a, b| {
        b.report.score().total_cmp(&a.report.score()).then(
            a.report
                .mean_abs_logit_diff
                .total_cmp(&b.report.mean_abs_logit_diff),
        )
    });
    let mut it = candidates.into_iter();
    let best = it.next().expect("at least one method");
    let mut reports = vec![best.report.clone()];
    reports.extend(it.map(|c| c.report));
    Ok(Quantized {
        qdq_onnx: qdq_onnx_bytes(graph, &best.quant, config.profile),
        blob: best.blob,
        plan: best.plan,
        method: best.report.method,
        reports,
        macs: best.macs,
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
            "the int8 model does not fit the device: {} (a smaller model: fine-tune with a smaller --width or --image-size, or export a smaller network)",
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
        // The shipped blob, run again in the runtime's engine, reproduces the chosen report (the
        // old check compared the engine's logits with themselves).
        let engine =
            Int8Classifier::from_bytes(&out.blob, std::path::Path::new("t"), [3, side, side], 3)
                .unwrap();
        let int8: Vec<Vec<f32>> = (0..validation.len())
            .map(|i| {
                let mut x = validation.image(i).to_vec();
                normalize_in_place(&mut x, &pre);
                engine.logits(&x).unwrap()
            })
            .collect();
        let again = compare(&fp32, &int8, &validation, 3);
        assert_eq!(again.top1_agreement, best.top1_agreement, "{best:?}");
        assert!(
            (again.max_abs_logit_diff - best.max_abs_logit_diff).abs() <= 1e-6
                && (again.mean_abs_logit_diff - best.mean_abs_logit_diff).abs() <= 1e-6,
            "{again:?} vs {best:?}"
        );
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
