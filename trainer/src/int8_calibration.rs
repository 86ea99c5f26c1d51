//! Where every tensor's int8 grid comes from: activation ranges calibrated on images (MinMax,
//! a percentile, or entropy — the clipping threshold of least KL divergence, TensorRT's
//! method), symmetric per-channel weight grids and int32 biases, and fake quantisation — the
//! forward pass rounded onto those grids with straight-through gradients, which
//! quantisation-aware fine-tuning trains through. ReLU outputs use `[0, max]` with zero point
//! −128, so the fused ReLU is just the clamp at the zero point. Shared by fine-tuning (QAT) and
//! the int8 export; nothing here writes a blob or a file.

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::graph::{evaluate, spatial_mean, trace, walk, FloatGraph, FloatOp, GraphWalk};
use crate::model::{batch_norm, input_tensor, to_vec, Classifier};

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

/// How activations map onto int8: the grid both the blob and its QDQ ONNX twin use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QdqProfile {
    /// Asymmetric activations: each tensor's calibrated `[lo, hi]` over all 256 steps (ReLU
    /// outputs get zero point −128). What onnxruntime and the int8 core run best.
    #[default]
    Onnxruntime,
    /// Symmetric activations and weights, every zero point 0 (TensorRT accepts nothing
    /// else), weights per output channel (axis 0), biases left in float for TensorRT to
    /// fuse. A ReLU output then uses half the grid: one bit less resolution.
    Tensorrt,
}

impl QdqProfile {
    /// Name used on the command line, in reports and the manifest.
    pub fn name(&self) -> &'static str {
        match self {
            QdqProfile::Onnxruntime => "onnxruntime",
            QdqProfile::Tensorrt => "tensorrt",
        }
    }

    /// The inverse of [`QdqProfile::name`].
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "onnxruntime" => Ok(QdqProfile::Onnxruntime),
            "tensorrt" => Ok(QdqProfile::Tensorrt),
            other => Err(format!(
                "QDQ profile {other:?}: expected onnxruntime (asymmetric activations) or \
                 tensorrt (symmetric, every zero point 0)"
            )),
        }
    }
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
    // Training holds the grid the default export writes.
    tensor_quantization(&graph, &stats, method, QdqProfile::default())
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
pub(crate) struct TensorStats {
    min: f32,
    max: f32,
    /// A strided subsample of the values (for percentiles and the entropy histogram).
    sample: Vec<f32>,
}

/// Values kept per tensor for percentiles and histograms.
const SAMPLE_PER_TENSOR: usize = 1 << 18;
const CALIBRATION_BATCH: usize = 32;

/// The graph of `model` and what calibration saw of each of its tensors on `images`.
pub(crate) fn calibrate<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> (FloatGraph, Vec<TensorStats>) {
    let mut graph = None;
    let stats = collect_stats(images, preprocess, device, |x| {
        let (g, values) = trace(model, x);
        graph = Some(g);
        values
    });
    (graph.expect("at least one calibration image"), stats)
}

/// What calibration saw of each tensor of an imported graph on `images`.
pub(crate) fn calibrate_graph<B: Backend>(
    graph: &FloatGraph,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<TensorStats> {
    collect_stats::<B>(images, preprocess, device, |x| evaluate(graph, x))
}

/// Runs `values` (every tensor of the graph for a normalised batch) over `images` in batches
/// and keeps each tensor's extremes and a strided sample of its values.
fn collect_stats<B: Backend>(
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
    mut values: impl FnMut(Tensor<B, 4>) -> Vec<Tensor<B, 4>>,
) -> Vec<TensorStats> {
    let mut stats: Vec<TensorStats> = Vec::new();
    for start in (0..images.len()).step_by(CALIBRATION_BATCH) {
        let end = (start + CALIBRATION_BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let batch = values(input_tensor::<B>(pixels, preprocess, device));
        if stats.is_empty() {
            stats = vec![
                TensorStats {
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    sample: Vec::new()
                };
                batch.len()
            ];
        }
        for (s, v) in stats.iter_mut().zip(batch) {
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
    }
    stats
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
fn tensor_range(
    stats: &TensorStats,
    non_negative: bool,
    method: CalibrationMethod,
    profile: QdqProfile,
) -> (f32, f32) {
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
            // The levels a tensor has on its side of zero: all 255 for a non-negative one
            // on an asymmetric grid, 127 on a symmetric grid.
            let levels = if non_negative && profile == QdqProfile::Onnxruntime {
                255
            } else {
                127
            };
            let t = entropy_threshold(&stats.sample, max_abs, levels);
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

/// Scale covering `[-max|x|, max|x|]` with zero point 0 (steps −127…127; −128 unused, as
/// TensorRT does).
fn symmetric(lo: f32, hi: f32) -> (f32, i8) {
    ((lo.abs().max(hi.abs()) / 127.0).max(1e-8), 0)
}

/// The grid of a tensor quantised over `[lo, hi]` under `profile`.
fn grid(lo: f32, hi: f32, profile: QdqProfile) -> (f32, i8) {
    match profile {
        QdqProfile::Onnxruntime => affine(lo, hi),
        QdqProfile::Tensorrt => symmetric(lo, hi),
    }
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

/// Per-tensor quantisation for a method and profile; max-pool outputs inherit their input's
/// (the kernel does not requantise).
pub(crate) fn tensor_quantization(
    graph: &FloatGraph,
    stats: &[TensorStats],
    method: CalibrationMethod,
    profile: QdqProfile,
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
            let (lo, hi) = tensor_range(s, t.non_negative, method, profile);
            grid(lo, hi, profile)
        })
        .collect();
    for layer in &graph.layers {
        if matches!(layer.op, FloatOp::MaxPool { .. }) {
            quant[layer.output] = quant[layer.inputs[0]];
        }
    }
    quant
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::{images, preprocess, resnet18_eighth};
    use burn::backend::Flex;

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
}
