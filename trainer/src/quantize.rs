//! Post-training static quantisation to the int8 model blob (`scanside_int8::blob`).
//!
//! The classifier is traced once in burn to get its graph (BatchNorm folded, as in the ONNX
//! export) and, on a sample of training images, every intermediate activation. Weights are
//! quantised symmetric per output channel; activations asymmetric per tensor, their ranges
//! chosen by a calibration method — MinMax, a percentile of the values, or entropy (the
//! threshold minimising the KL divergence between the clipped and the quantised distribution,
//! TensorRT's method). ReLU outputs use `[0, max]` with zero point −128, so the fused ReLU is
//! just the clamp at the zero point. Every requantisation constant (multiplier + shift, add
//! and pool scales) is computed here, on the host, once.
//!
//! Each method's blob runs on the validation split through the runtime's int8 engine (the
//! same core the firmware runs) and is compared with the fp32 model; the best is kept.

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use rayon::prelude::*;
use scanside_int8::arith::quantize_multiplier;
use scanside_int8::blob::write::{
    encode, AlignedBlob, LayerSpec, MemoryPlan, ModelSpec, TensorSpec,
};
use scanside_int8::blob::{Model, Op};
use scanside_int8::kernels::pool_add::ADD_LEFT_SHIFT;
use scanside_runtime::infer::Int8Classifier;
use scanside_runtime::preprocess::{normalize_in_place, PreprocessConfig};
use serde::{Deserialize, Serialize};

use crate::data::{Finding, ImageSet, Target};
use crate::export::{fold, FoldedConv};
use crate::metrics::{argmax, predict_logits, roc_auc};
use crate::model::{batch_norm, input_tensor, to_vec, Classifier};
use crate::{Error, Result};

/// How activation ranges are chosen from calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// The observed minimum and maximum.
    MinMax,
    /// The given percentile of the values (and its mirror for the minimum).
    Percentile(f64),
    /// The clipping threshold of least KL divergence (2048-bin histogram of |x|).
    Entropy,
}

impl CalibrationMethod {
    /// Name used in reports and the manifest.
    pub fn name(&self) -> String {
        match self {
            CalibrationMethod::MinMax => "minmax".into(),
            CalibrationMethod::Percentile(p) => format!("percentile-{p}"),
            CalibrationMethod::Entropy => "entropy".into(),
        }
    }

    /// The inverse of [`CalibrationMethod::name`]: `minmax`, `percentile-P` (0 < P ≤ 100),
    /// `entropy`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "minmax" => Ok(CalibrationMethod::MinMax),
            "entropy" => Ok(CalibrationMethod::Entropy),
            other => other
                .strip_prefix("percentile-")
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .map(CalibrationMethod::Percentile)
                .ok_or_else(|| {
                    format!(
                        "calibration method {other:?}: expected minmax, percentile-P (e.g. \
                         percentile-99.99) or entropy"
                    )
                }),
        }
    }
}

/// Quantisation settings (saved in the bundle's report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizeConfig {
    /// Training images whose activations set the ranges.
    pub calibration_images: usize,
    /// Methods tried; the best on validation is kept.
    pub methods: Vec<CalibrationMethod>,
    /// Validation images the methods are compared on (0: all).
    pub validation_images: usize,
    /// Accuracy drop (fp32 − int8, in points) above which the export warns.
    pub warn_drop_points: f64,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            calibration_images: 256,
            methods: vec![
                CalibrationMethod::MinMax,
                CalibrationMethod::Percentile(99.99),
                CalibrationMethod::Entropy,
            ],
            validation_images: 0,
            warn_drop_points: 0.5,
        }
    }
}

/// A tensor of the traced float graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FloatTensor {
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
    /// Never negative (a ReLU output or an average of one): quantised over `[0, max]`.
    non_negative: bool,
}

/// A layer of the traced float graph.
pub(crate) enum FloatOp {
    Conv {
        conv: FoldedConv,
        relu: bool,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    Add {
        relu: bool,
    },
    GlobalAvgPool,
    /// Weights `[out][in]`.
    FullyConnected {
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
}

pub(crate) struct FloatLayer {
    pub(crate) op: FloatOp,
    pub(crate) inputs: Vec<usize>,
    pub(crate) output: usize,
}

/// The classifier as the int8 engine sees it: tensors (the input first) and layers in order.
pub(crate) struct FloatGraph {
    pub(crate) tensors: Vec<FloatTensor>,
    pub(crate) layers: Vec<FloatLayer>,
}

/// One pass over a classifier in the int8 graph's order — each convolution with its
/// BatchNorm (and ReLU when one follows), the stem's max-pool, residual adds with their ReLU,
/// global average pooling, the head — mirroring `ResNet::forward` and `Block::forward` op for
/// op. [`trace`] records the graph and its values with it; quantisation-aware training's
/// [`fake_quant_forward`] computes the same ops with int8 rounding inserted. Values are made in
/// the graph's tensor order (the input first).
trait GraphWalk<B: Backend> {
    type Value: Clone;
    fn input(&mut self, x: Tensor<B, 4>) -> Self::Value;
    fn conv(
        &mut self,
        x: &Self::Value,
        conv: &Conv2d<B>,
        bn: &BatchNorm<B>,
        with_relu: bool,
    ) -> Self::Value;
    fn max_pool(&mut self, x: &Self::Value, pool: &MaxPool2d) -> Self::Value;
    /// `relu(a + b)`.
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Self::Value;
    fn global_avg_pool(&mut self, x: &Self::Value) -> Self::Value;
    /// Logits as `N×classes×1×1`.
    fn head(&mut self, pooled: &Self::Value, head: &Linear<B>) -> Self::Value;
}

fn walk<B: Backend, W: GraphWalk<B>>(
    model: &Classifier<B>,
    x: Tensor<B, 4>,
    w: &mut W,
) -> W::Value {
    let backbone = &model.backbone;
    let input = w.input(x);
    let mut y = w.conv(&input, &backbone.stem_conv, &backbone.stem_bn, true);
    if let Some(pool) = &backbone.stem_pool {
        y = w.max_pool(&y, pool);
    }
    for block in &backbone.blocks {
        let shortcut = match &block.downsample {
            Some(d) => w.conv(&y, &d.conv, &d.bn, false),
            None => y.clone(),
        };
        let mut z = w.conv(&y, &block.conv1, &block.bn1, true);
        let bottleneck = block.conv3.is_some();
        z = w.conv(&z, &block.conv2, &block.bn2, bottleneck);
        if let (Some(conv3), Some(bn3)) = (&block.conv3, &block.bn3) {
            z = w.conv(&z, conv3, bn3, false);
        }
        y = w.add(&z, &shortcut);
    }
    let pooled = w.global_avg_pool(&y);
    w.head(&pooled, &model.head)
}

/// `N×C×H×W` → `N×C×1×1` means.
fn spatial_mean<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c, 1, 1])
}

/// The stem max-pool's padding (torchvision's 3×3, stride 2, padding 1).
const STEM_POOL_PADDING: usize = 1;

/// Records the graph and every tensor's values (`N×C×H×W`, in the graph's tensor order).
struct Tracer<B: Backend> {
    graph: FloatGraph,
    values: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Tracer<B> {
    fn tensor(&mut self, value: Tensor<B, 4>, non_negative: bool) -> usize {
        let [_, c, h, w] = value.dims();
        self.graph.tensors.push(FloatTensor {
            height: h,
            width: w,
            channels: c,
            non_negative,
        });
        self.values.push(value);
        self.graph.tensors.len() - 1
    }

    fn layer(
        &mut self,
        op: FloatOp,
        inputs: Vec<usize>,
        value: Tensor<B, 4>,
        non_negative: bool,
    ) -> usize {
        let output = self.tensor(value, non_negative);
        self.graph.layers.push(FloatLayer { op, inputs, output });
        output
    }
}

impl<B: Backend> GraphWalk<B> for Tracer<B> {
    type Value = usize;

    fn input(&mut self, x: Tensor<B, 4>) -> usize {
        self.tensor(x, false)
    }

    fn conv(&mut self, x: &usize, conv: &Conv2d<B>, bn: &BatchNorm<B>, with_relu: bool) -> usize {
        let mut y = batch_norm(bn, conv.forward(self.values[*x].clone()));
        if with_relu {
            y = relu(y);
        }
        let op = FloatOp::Conv {
            conv: fold(conv, bn),
            relu: with_relu,
        };
        self.layer(op, vec![*x], y, with_relu)
    }

    fn max_pool(&mut self, x: &usize, pool: &MaxPool2d) -> usize {
        let value = pool.forward(self.values[*x].clone());
        let op = FloatOp::MaxPool {
            kernel: pool.kernel_size[0],
            stride: pool.stride[0],
            padding: STEM_POOL_PADDING,
        };
        self.layer(op, vec![*x], value, true)
    }

    fn add(&mut self, a: &usize, b: &usize) -> usize {
        let y = relu(self.values[*a].clone() + self.values[*b].clone());
        self.layer(FloatOp::Add { relu: true }, vec![*a, *b], y, true)
    }

    fn global_avg_pool(&mut self, x: &usize) -> usize {
        let pooled = spatial_mean(self.values[*x].clone());
        self.layer(FloatOp::GlobalAvgPool, vec![*x], pooled, true)
    }

    fn head(&mut self, pooled: &usize, head: &Linear<B>) -> usize {
        let [n, c, _, _] = self.values[*pooled].dims();
        let logits = head.forward(self.values[*pooled].clone().reshape([n, c]));
        let classes = logits.dims()[1];
        let [fin, fout] = head.weight.val().dims();
        let w_in_out = to_vec(head.weight.val());
        let mut weight = vec![0.0; fin * fout];
        for i in 0..fin {
            for o in 0..fout {
                weight[o * fin + i] = w_in_out[i * fout + o];
            }
        }
        let bias = head
            .bias
            .as_ref()
            .map_or(vec![0.0; fout], |b| to_vec(b.val()));
        self.layer(
            FloatOp::FullyConnected { weight, bias },
            vec![*pooled],
            logits.reshape([n, classes, 1, 1]),
            false,
        )
    }
}

/// Traces a classifier on a batch: its graph and every tensor's values (`N×C×H×W`, in the
/// graph's tensor order).
pub(crate) fn trace<B: Backend>(
    model: &Classifier<B>,
    x: Tensor<B, 4>,
) -> (FloatGraph, Vec<Tensor<B, 4>>) {
    let mut t = Tracer {
        graph: FloatGraph {
            tensors: Vec::new(),
            layers: Vec::new(),
        },
        values: Vec::new(),
    };
    walk(model, x, &mut t);
    (t.graph, t.values)
}

/// `x` rounded to the int8 grid of `(scale, zero point)` in the forward pass, with the
/// straight-through gradient inside the representable range and none outside it (the
/// clipped values cannot move the rounded output). Because the zero point is an integer,
/// `(round(x / s + z) − z) · s = round(x / s) · s`.
pub(crate) fn fake_quantize<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    (scale, zero_point): (f32, i8),
) -> Tensor<B, D> {
    let z = f32::from(zero_point);
    let clipped = x.clamp((-128.0 - z) * scale, (127.0 - z) * scale);
    let rounded = clipped.clone().div_scalar(scale).round().mul_scalar(scale);
    clipped.clone() + (rounded - clipped).detach()
}

/// Rows of `w` (one per output channel) rounded to the symmetric int8 grid the export uses
/// ([`quantize_per_channel`]: scale `max |w| / 127`), straight-through gradient. Rounding the
/// unfolded convolution weights is exact for the exported, BatchNorm-folded ones: folding
/// multiplies each output channel by one factor, which scales that channel's grid with it.
fn fake_quantize_rows<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let scale = w
        .clone()
        .abs()
        .max_dim(1)
        .div_scalar(127.0)
        .clamp_min(f32::MIN_POSITIVE);
    let rounded = (w.clone() / scale.clone())
        .round()
        .clamp(-127.0, 127.0)
        .mul(scale);
    w.clone() + (rounded - w).detach()
}

/// The classifier's forward pass with int8 rounding where the int8 model has it: every
/// weight tensor per output channel, every activation tensor with its calibrated
/// `(scale, zero point)` (`ranges`, in the graph's tensor order).
struct FakeQuant<'a> {
    ranges: &'a [(f32, i8)],
    next: usize,
}

impl FakeQuant<'_> {
    fn point<B: Backend>(&mut self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let range = self.ranges.get(self.next).copied();
        self.next += 1;
        match range {
            Some(range) => fake_quantize(x, range),
            None => x,
        }
    }
}

impl<B: Backend> GraphWalk<B> for FakeQuant<'_> {
    type Value = Tensor<B, 4>;

    fn input(&mut self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.point(x)
    }

    fn conv(
        &mut self,
        x: &Tensor<B, 4>,
        conv: &Conv2d<B>,
        bn: &BatchNorm<B>,
        with_relu: bool,
    ) -> Tensor<B, 4> {
        let weight = conv.weight.val();
        let [o, i, kh, kw] = weight.dims();
        let weight = fake_quantize_rows(weight.reshape([o, i * kh * kw])).reshape([o, i, kh, kw]);
        let options = ConvOptions::new(conv.stride, [kh / 2, kw / 2], conv.dilation, conv.groups);
        let y = conv2d(
            x.clone(),
            weight,
            conv.bias.as_ref().map(|b| b.val()),
            options,
        );
        let mut y = batch_norm(bn, y);
        if with_relu {
            y = relu(y);
        }
        self.point(y)
    }

    fn max_pool(&mut self, x: &Tensor<B, 4>, pool: &MaxPool2d) -> Tensor<B, 4> {
        self.point(pool.forward(x.clone()))
    }

    fn add(&mut self, a: &Tensor<B, 4>, b: &Tensor<B, 4>) -> Tensor<B, 4> {
        self.point(relu(a.clone() + b.clone()))
    }

    fn global_avg_pool(&mut self, x: &Tensor<B, 4>) -> Tensor<B, 4> {
        self.point(spatial_mean(x.clone()))
    }

    fn head(&mut self, pooled: &Tensor<B, 4>, head: &Linear<B>) -> Tensor<B, 4> {
        let [n, c, _, _] = pooled.dims();
        // burn's Linear stores `[in, out]`: output channels are columns.
        let weight = fake_quantize_rows(head.weight.val().transpose()).transpose();
        let mut logits = pooled.clone().reshape([n, c]).matmul(weight);
        if let Some(bias) = &head.bias {
            logits = logits + bias.val().unsqueeze();
        }
        let classes = logits.dims()[1];
        self.point(logits.reshape([n, classes, 1, 1]))
    }
}

/// Activation `(scale, zero point)` per tensor of `model`'s int8 graph, calibrated on
/// `images` with `method` — what quantisation-aware training holds fixed while it trains.
pub fn activation_ranges<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    method: CalibrationMethod,
    device: &B::Device,
) -> Vec<(f32, i8)> {
    let (graph, stats) = calibrate(model, images, preprocess, device);
    tensor_quantization(&graph, &stats, method)
}

/// `N×classes` logits of `model` with int8 rounding of weights and activations in the
/// forward pass and straight-through gradients (quantisation-aware training).
pub fn fake_quant_forward<B: Backend>(
    model: &Classifier<B>,
    x: Tensor<B, 4>,
    ranges: &[(f32, i8)],
) -> Tensor<B, 2> {
    let logits = walk(model, x, &mut FakeQuant { ranges, next: 0 });
    let [n, classes, _, _] = logits.dims();
    logits.reshape([n, classes])
}

/// What calibration saw of one tensor.
#[derive(Debug, Clone, Default)]
struct TensorStats {
    min: f32,
    max: f32,
    /// A strided subsample of the values (for percentiles and the entropy histogram).
    sample: Vec<f32>,
}

/// Values kept per tensor for percentiles and histograms.
const SAMPLE_PER_TENSOR: usize = 1 << 18;
const CALIBRATION_BATCH: usize = 32;

fn calibrate<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> (FloatGraph, Vec<TensorStats>) {
    let mut graph = None;
    let mut stats: Vec<TensorStats> = Vec::new();
    for start in (0..images.len()).step_by(CALIBRATION_BATCH) {
        let end = (start + CALIBRATION_BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let (g, values) = trace(model, input_tensor::<B>(pixels, preprocess, device));
        if stats.is_empty() {
            stats = vec![
                TensorStats {
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    sample: Vec::new()
                };
                values.len()
            ];
        }
        for (s, v) in stats.iter_mut().zip(values) {
            let v = to_vec(v);
            let per_image = v.len() / (end - start);
            let stride = (per_image * images.len())
                .div_ceil(SAMPLE_PER_TENSOR)
                .max(1);
            for (i, &x) in v.iter().enumerate() {
                s.min = s.min.min(x);
                s.max = s.max.max(x);
                if i % stride == 0 {
                    s.sample.push(x);
                }
            }
        }
        graph = Some(g);
    }
    (graph.expect("at least one calibration image"), stats)
}

/// Quantile `q` in `[0, 1]` of sorted values.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// The clipping threshold on |x| of least KL divergence between the clipped distribution and
/// its `levels`-level quantisation (TensorRT's entropy calibration).
fn entropy_threshold(sample: &[f32], max_abs: f32, levels: usize) -> f32 {
    const BINS: usize = 2048;
    if max_abs <= 0.0 || sample.is_empty() {
        return max_abs;
    }
    let width = max_abs / BINS as f32;
    let mut hist = vec![0.0_f64; BINS];
    for &x in sample {
        let bin = ((x.abs() / width) as usize).min(BINS - 1);
        hist[bin] += 1.0;
    }
    let mut best = (f64::INFINITY, BINS);
    for kept in (levels..=BINS).step_by(8) {
        // Reference: the first `kept` bins, outliers folded into the last one.
        let mut reference: Vec<f64> = hist[..kept].to_vec();
        reference[kept - 1] += hist[kept..].iter().sum::<f64>();
        // Candidate: the same bins merged into `levels` groups, each group's mass spread over
        // its non-empty bins.
        let mut candidate = vec![0.0_f64; kept];
        for level in 0..levels {
            let (a, b) = (
                level * kept / levels,
                ((level + 1) * kept / levels).max(level * kept / levels + 1),
            );
            let mass: f64 = hist[a..b].iter().sum();
            let nonzero = hist[a..b].iter().filter(|&&h| h > 0.0).count();
            if nonzero > 0 {
                for i in a..b {
                    if hist[i] > 0.0 {
                        candidate[i] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (reference.iter().sum(), candidate.iter().sum());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for (p, q) in reference.iter().zip(&candidate) {
            if *p > 0.0 {
                let (p, q) = (p / ps, (q / qs).max(1e-12));
                kl += p * (p / q).ln();
            }
        }
        if kl < best.0 {
            best = (kl, kept);
        }
    }
    (best.1 as f32) * width
}

/// The real range a tensor is quantised over, by method; always contains 0.
fn tensor_range(stats: &TensorStats, non_negative: bool, method: CalibrationMethod) -> (f32, f32) {
    let (lo, hi) = match method {
        CalibrationMethod::MinMax => (stats.min, stats.max),
        CalibrationMethod::Percentile(p) => {
            let mut sorted = stats.sample.clone();
            sorted.sort_by(f32::total_cmp);
            let q = p / 100.0;
            (
                quantile(&sorted, 1.0 - q).max(stats.min),
                quantile(&sorted, q).min(stats.max),
            )
        }
        CalibrationMethod::Entropy => {
            let max_abs = stats.min.abs().max(stats.max.abs());
            let t = entropy_threshold(&stats.sample, max_abs, if non_negative { 255 } else { 127 });
            (stats.min.max(-t), stats.max.min(t))
        }
    };
    let lo = if non_negative { 0.0 } else { lo.min(0.0) };
    (lo, hi.max(0.0))
}

/// Scale and zero point covering `[lo, hi]` with 256 steps (0 exactly representable).
fn affine(lo: f32, hi: f32) -> (f32, i8) {
    let scale = ((hi - lo) / 255.0).max(1e-8);
    let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i8;
    (scale, zero_point)
}

/// Per-output-channel symmetric int8 weights of `[out][rest]` floats, with the scales.
pub(crate) fn quantize_per_channel(weights: &[f32], out_channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = weights.len() / out_channels;
    let mut q = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(out_channels);
    for row in weights.chunks_exact(per) {
        let max_abs = row.iter().fold(0.0_f32, |m, w| m.max(w.abs()));
        let scale = if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

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

/// int32 biases in accumulator scale (`s_in · s_w` per channel).
pub(crate) fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> Vec<i32> {
    bias.iter()
        .zip(weight_scales)
        .map(|(b, s)| {
            (f64::from(*b) / (f64::from(input_scale) * f64::from(*s)))
                .round()
                .clamp(-2.0e9, 2.0e9) as i32
        })
        .collect()
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

/// Per-tensor quantisation for a method; max-pool outputs inherit their input's (the kernel
/// does not requantise).
fn tensor_quantization(
    graph: &FloatGraph,
    stats: &[TensorStats],
    method: CalibrationMethod,
) -> Vec<(f32, i8)> {
    let mut quant: Vec<(f32, i8)> = graph
        .tensors
        .iter()
        .zip(stats)
        .enumerate()
        .map(|(i, (t, s))| {
            // Clipping the logits would reorder the top classes: the output keeps its full
            // observed range whatever the method.
            let method = if i + 1 == graph.tensors.len() {
                CalibrationMethod::MinMax
            } else {
                method
            };
            let (lo, hi) = tensor_range(s, t.non_negative, method);
            affine(lo, hi)
        })
        .collect();
    for layer in &graph.layers {
        if matches!(layer.op, FloatOp::MaxPool { .. }) {
            quant[layer.output] = quant[layer.inputs[0]];
        }
    }
    quant
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
        qdq_onnx: crate::export::qdq_onnx_bytes(&graph, &quant, chw),
    })
}

/// A memory budget from `--flash` / `--ram` (`1M`, `256K`, `65536`).
pub fn parse_bytes(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "{text:?}: expected a byte count such as 65536, 256K or 1M"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|d| d.checked_mul(factor))
        .ok_or_else(|| format!("{text:?}: expected a byte count such as 65536, 256K or 1M"))
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
    use crate::model::ResNetConfig;
    use burn::backend::Flex;

    fn images(n: usize, side: usize, seed: u32) -> ImageSet {
        let mut state = seed;
        let len = 3 * side * side;
        let pixels = (0..n * len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32
            })
            .collect();
        ImageSet {
            pixels,
            targets: (0..n).map(|i| Target::Class(i % 3)).collect(),
            ids: (0..n).map(|i| i.to_string()).collect(),
            groups: (0..n).map(|i| i.to_string()).collect(),
            sources: vec![String::new(); n],
            sample_len: len,
            skipped: vec![],
        }
    }

    /// ResNet-18 at width 0.125 with the small-input stem (basic or separable blocks).
    fn resnet18_eighth(separable: bool) -> ResNetConfig {
        ResNetConfig {
            depth: 18,
            width_multiplier: 0.125,
            in_channels: 3,
            small_input_stem: true,
            separable,
        }
    }

    fn preprocess(side: u32) -> PreprocessConfig {
        PreprocessConfig::new(side, 3, vec![0.5; 3], vec![0.25; 3])
    }

    #[test]
    fn per_channel_scales_keep_a_small_channel_beside_a_large_one() {
        // Channel 0's weights are 1000× smaller than channel 1's: one scale per tensor would
        // round channel 0 to zero; per channel, both use the full int8 range.
        let weights = [0.001_f32, -0.0005, 0.0002, 1.0, -0.5, 0.2];
        let (q, scales) = quantize_per_channel(&weights, 2);
        assert_eq!(q[..3].iter().map(|v| v.abs()).max(), Some(127));
        assert_eq!(q[3..].iter().map(|v| v.abs()).max(), Some(127));
        for (i, w) in weights.iter().enumerate() {
            let back = f32::from(q[i]) * scales[i / 3];
            assert!(
                (back - w).abs() <= scales[i / 3] / 2.0 + 1e-9,
                "{i}: {back} vs {w}"
            );
        }
        // An all-zero channel quantises to zeros without dividing by zero.
        let (q, scales) = quantize_per_channel(&[0.0, 0.0], 1);
        assert_eq!((q, scales[0].is_finite()), (vec![0, 0], true));
    }

    #[test]
    fn the_traced_graph_ends_in_the_models_logits() {
        let device = Default::default();
        let config = resnet18_eighth(false);
        let model = Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 3, &device);
        let x = input_tensor::<Flex>(images(2, 16, 1).pixels, &preprocess(16), &device);
        let (graph, values) = trace(&model, x.clone());
        let want = to_vec(model.forward(x));
        let got = to_vec(values.last().unwrap().clone());
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // Stem, 8 blocks (3 downsampling convs), pool, head.
        let convs = graph
            .layers
            .iter()
            .filter(|l| matches!(l.op, FloatOp::Conv { .. }))
            .count();
        assert_eq!(convs, 1 + 8 * 2 + 3);
    }

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
    fn fake_quantisation_rounds_to_the_grid_and_passes_gradients_inside_the_range_only() {
        use burn::backend::Autodiff;
        type Ad = Autodiff<Flex>;
        let device = Default::default();
        // scale 0.01, zero point 0: representable range [-1.28, 1.27].
        let x =
            Tensor::<Ad, 1>::from_floats([-2.0, -0.256, 0.1, 0.374, 2.0], &device).require_grad();
        let y = fake_quantize(x.clone(), (0.01, 0));
        let got = to_vec(y.clone().inner());
        for (g, want) in got.iter().zip([-1.28, -0.26, 0.1, 0.37, 1.27]) {
            assert!((g - want).abs() < 1e-6, "{got:?}");
        }
        let grads = y.sum().backward();
        let dx = to_vec(x.grad(&grads).unwrap());
        assert_eq!(dx, vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        // A ReLU tensor's range [0, 2.55] (zero point −128): negatives clip to 0.
        let r = fake_quantize(
            Tensor::<Flex, 1>::from_floats([-0.5, 0.004, 3.0], &device),
            (0.01, -128),
        );
        assert_eq!(to_vec(r), vec![0.0, 0.0, 2.55]);
    }

    #[test]
    fn fake_quantised_weights_are_the_exported_int8_weights_even_after_batch_norm_folding() {
        let device = Default::default();
        let weights: Vec<f32> = (0..24)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let rows = Tensor::<Flex, 1>::from_floats(weights.as_slice(), &device).reshape([3, 8]);
        let fake = to_vec(fake_quantize_rows(rows.clone()));
        let (q, scales) = quantize_per_channel(&weights, 3);
        for (i, (f, q)) in fake.iter().zip(&q).enumerate() {
            assert!((f - f32::from(*q) * scales[i / 8]).abs() < 1e-6, "{i}");
        }
        // Folding BatchNorm scales each output channel by one factor (any sign): the
        // exported grid of the folded weights is the fake-quantised grid, scaled.
        let factors = [0.37_f32, -2.5, 11.0];
        let folded: Vec<f32> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| w * factors[i / 8])
            .collect();
        let (q_folded, scales_folded) = quantize_per_channel(&folded, 3);
        for i in 0..24 {
            let exported = f32::from(q_folded[i]) * scales_folded[i / 8];
            let want = fake[i] * factors[i / 8];
            assert!(
                (exported - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{i}: {exported} vs {want}"
            );
        }
    }

    #[test]
    fn the_fake_quantised_forward_rounds_every_activation_onto_its_int8_grid() {
        let device = Default::default();
        <Flex as Backend>::seed(&device, 7);
        let config = resnet18_eighth(false);
        let model = Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 3, &device);
        let pre = preprocess(16);
        let calibration = images(24, 16, 2);
        let ranges = activation_ranges(
            &model,
            &calibration,
            &pre,
            CalibrationMethod::MinMax,
            &device,
        );
        let (graph, _) = trace(
            &model,
            input_tensor::<Flex>(calibration.image(0).to_vec(), &pre, &device),
        );
        assert_eq!(
            ranges.len(),
            graph.tensors.len(),
            "one range per tensor of the int8 graph"
        );
        let x = input_tensor::<Flex>(images(4, 16, 3).pixels, &pre, &device);
        let fake = to_vec(fake_quant_forward(&model, x.clone(), &ranges));
        let fp32 = to_vec(model.forward(x));
        // The logits sit on the output tensor's grid, within its int8 range…
        let (scale, zero_point) = *ranges.last().unwrap();
        for v in &fake {
            let steps = v / scale;
            assert!(
                (steps - steps.round()).abs() < 1e-3,
                "{v} is off the grid of {scale}"
            );
            let q = steps.round() + f32::from(zero_point);
            assert!((-128.0..=127.0).contains(&q), "{v}");
        }
        // …and the rounding on the way moved them, but not far.
        let moved: f32 = fake.iter().zip(&fp32).map(|(a, b)| (a - b).abs()).sum();
        let spread = fp32.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
        assert!(
            moved > 0.0 && moved / (fake.len() as f32) < 0.1 * spread,
            "{fake:?} vs {fp32:?}"
        );
    }

    #[test]
    fn calibration_method_names_parse_back() {
        for m in [
            CalibrationMethod::MinMax,
            CalibrationMethod::Percentile(99.99),
            CalibrationMethod::Entropy,
        ] {
            assert_eq!(CalibrationMethod::parse(&m.name()), Ok(m));
        }
        assert!(CalibrationMethod::parse("percentile-101").is_err());
        assert!(CalibrationMethod::parse("kl")
            .unwrap_err()
            .contains("entropy"));
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
    fn entropy_clips_rare_outliers_but_not_a_uniform_range() {
        let mut sample: Vec<f32> = (0..100_000)
            .map(|i| ((i % 1000) as f32 / 1000.0) * 0.1)
            .collect();
        let uniform = entropy_threshold(&sample, 0.1, 127);
        assert!(uniform > 0.09, "{uniform}");
        sample.extend([50.0_f32; 3]);
        let clipped = entropy_threshold(&sample, 50.0, 127);
        assert!(clipped < 5.0, "{clipped}");
    }

    #[test]
    fn affine_ranges_represent_zero_exactly() {
        for (lo, hi) in [(-1.0_f32, 3.0_f32), (0.0, 6.0), (-0.2, 0.0)] {
            let (s, z) = affine(lo, hi);
            assert_eq!(scanside_int8::engine::quantize(0.0, s, z), z);
            assert!(scanside_int8::engine::dequantize(z, s, z).abs() < 1e-12);
        }
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
