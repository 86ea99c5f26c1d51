//! The classifier as a float graph, the one form every exporter starts from: each convolution
//! with its BatchNorm folded in (`W' = W·γ/σ`, `b' = β − μ·γ/σ`), activations fused into the
//! layer they follow, pooling, residual adds and the head, in the order the int8 engine runs
//! them. A graph comes from a model scanside trained ([`trace`], through [`GraphWalk`], the
//! one pass over the network that tracing and quantisation-aware training share) or from an
//! ONNX file trained elsewhere (`crate::onnx_import`); [`evaluate`] computes every tensor of
//! any graph in burn, which is what calibration measures. Imported graphs may hold operators
//! the int8 core lacks (hard-swish, channel products, concatenation, grouped convolution …):
//! they evaluate and export as ONNX like the others, and [`FloatGraph::int8_gaps`] names them.
//! Nothing here quantises or writes files.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::to_vec;

mod evaluate;
mod trace;

pub(crate) use evaluate::evaluate;
pub(crate) use trace::{trace, walk};

/// A convolution or pooling window: kernel, strides, pads and dilations, each `[y, x]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    /// Top, left, bottom, right (ONNX orders them top, left, bottom, right too).
    pub(crate) pads: [usize; 4],
    pub(crate) dilation: [usize; 2],
}

impl Window {
    /// A square window with the same stride and padding on every side.
    pub(crate) fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel: [kernel; 2],
            stride: [stride; 2],
            pads: [padding; 4],
            dilation: [1; 2],
        }
    }

    /// `(kernel, stride, padding)` when the window is square, symmetric and undilated — the
    /// only geometry the int8 core's kernels take.
    pub(crate) fn as_square(&self) -> Option<(usize, usize, usize)> {
        let [k, kx] = self.kernel;
        let [s, sx] = self.stride;
        let p = self.pads[0];
        (k == kx && s == sx && self.pads.iter().all(|&q| q == p) && self.dilation == [1, 1])
            .then_some((k, s, p))
    }

    /// Output height and width for an input of `[height, width]`; `None` when the window
    /// does not fit.
    pub(crate) fn output_size(&self, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
        let extent = |input: usize, axis: usize| {
            let span = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
            let padded = input + self.pads[axis] + self.pads[axis + 2];
            (self.kernel[axis] > 0 && self.stride[axis] > 0 && padded >= span)
                .then(|| (padded - span) / self.stride[axis] + 1)
        };
        Some([extent(h, 0)?, extent(w, 1)?])
    }

    /// Pads as `[y, x]` when top = bottom and left = right.
    pub(crate) fn symmetric_pads(&self) -> Option<[usize; 2]> {
        (self.pads[0] == self.pads[2] && self.pads[1] == self.pads[3])
            .then_some([self.pads[0], self.pads[1]])
    }
}

/// A convolution with BatchNorm folded in: `W' = W·γ/σ`, `b' = β − μ·γ/σ`.
#[derive(Debug, Clone)]
pub(crate) struct FoldedConv {
    /// OIHW weights (`I` is the input channels of one group).
    pub(crate) weight: Vec<f32>,
    pub(crate) shape: [usize; 4],
    pub(crate) bias: Vec<f32>,
    pub(crate) window: Window,
    /// 1; the channel count for a depthwise convolution (weights `[C][1][k][k]`); anything
    /// between for a grouped one.
    pub(crate) groups: usize,
}

impl FoldedConv {
    /// One filter per input channel, one output per filter (what the int8 core runs as
    /// `DepthwiseConv2d`).
    pub(crate) fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.shape[1] == 1 && self.shape[0] == self.groups
    }

    /// Folds a BatchNorm that follows this convolution: per output channel, the weights
    /// scale by `γ/√(σ²+ε)` and the bias becomes `β + (b − μ)·γ/√(σ²+ε)`.
    pub(crate) fn fold_batch_norm(&mut self, bn: &BatchNormValues) {
        let per_out = self.weight.len() / self.shape[0];
        for o in 0..self.shape[0] {
            let scale = bn.gamma[o] / (bn.var[o] + bn.epsilon).sqrt();
            self.weight[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .for_each(|w| *w *= scale);
            self.bias[o] = bn.beta[o] + (self.bias[o] - bn.mean[o]) * scale;
        }
    }
}

/// A BatchNorm's parameters and statistics, per channel.
pub(crate) struct BatchNormValues {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    pub(crate) mean: Vec<f32>,
    pub(crate) var: Vec<f32>,
    pub(crate) epsilon: f32,
}

pub(crate) fn fold<B: Backend>(conv: &Conv2d<B>, bn: &BatchNorm<B>) -> FoldedConv {
    let shape = conv.weight.val().dims();
    let mut folded = FoldedConv {
        weight: to_vec(conv.weight.val()),
        shape,
        bias: conv
            .bias
            .as_ref()
            .map_or(vec![0.0; shape[0]], |b: &Param<_>| to_vec(b.val())),
        window: Window::square(shape[2], conv.stride[0], shape[2] / 2),
        groups: conv.groups,
    };
    folded.fold_batch_norm(&BatchNormValues {
        gamma: to_vec(bn.gamma.val()),
        beta: to_vec(bn.beta.val()),
        mean: to_vec(bn.running_mean.value()),
        var: to_vec(bn.running_var.value()),
        epsilon: bn.epsilon as f32,
    });
    folded
}

/// The activation fused into a layer's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activation {
    None,
    Relu,
    /// `min(max(x, min), max)`: ReLU6 is `Clip { min: 0, max: 6 }`.
    Clip {
        min: f32,
        max: f32,
    },
}

impl Activation {
    /// Whether the output can never be negative.
    pub(crate) fn non_negative(&self) -> bool {
        match self {
            Activation::None => false,
            Activation::Relu => true,
            Activation::Clip { min, .. } => *min >= 0.0,
        }
    }

    /// The real interval the activation clamps to.
    pub(crate) fn bounds(&self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clip { min, max } => (*min, *max),
        }
    }
}

/// An element-wise function the int8 core has no kernel for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unary {
    /// A ReLU or clip on a tensor whose producer could not take it (fused otherwise).
    Activation(Activation),
    /// `x · min(max(x/6 + 1/2, 0), 1)`.
    HardSwish,
    /// `min(max(αx + β, 0), 1)`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
}

/// A tensor of the float graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FloatTensor {
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
    /// Never negative (a ReLU output or an average of one): quantised over `[0, max]`.
    pub(crate) non_negative: bool,
}

/// A layer of the float graph.
#[derive(Debug, Clone)]
pub(crate) enum FloatOp {
    Conv {
        conv: FoldedConv,
        activation: Activation,
    },
    MaxPool {
        window: Window,
    },
    /// Not in the int8 core.
    AvgPool {
        window: Window,
        count_include_pad: bool,
    },
    Add {
        activation: Activation,
    },
    /// Element-wise product, the second input `C×1×1` or the first's shape (squeeze-and-
    /// excitation). Not in the int8 core.
    Mul,
    /// Along channels. Not in the int8 core.
    Concat,
    GlobalAvgPool,
    /// Weights `[out][in]`, `in` the flattened input in `C×H×W` order.
    FullyConnected {
        weight: Vec<f32>,
        bias: Vec<f32>,
        activation: Activation,
    },
    Unary(Unary),
}

impl FloatOp {
    /// Why the int8 core cannot run this layer, if it cannot: the operator as a user would
    /// look it up in the ONNX file.
    fn int8_gap(&self) -> Option<String> {
        match self {
            FloatOp::Conv { conv, .. } => {
                if conv.groups > 1 && !conv.is_depthwise() {
                    Some(format!(
                        "grouped Conv (group {}, {} channels per group)",
                        conv.groups, conv.shape[1]
                    ))
                } else if conv.window.as_square().is_none() {
                    Some(
                        "Conv with a non-square kernel, unequal strides, asymmetric pads or dilation"
                            .into(),
                    )
                } else {
                    None
                }
            }
            FloatOp::MaxPool { window } => window.as_square().is_none().then(|| {
                "MaxPool with a non-square kernel, unequal strides, asymmetric pads or dilation"
                    .into()
            }),
            FloatOp::AvgPool { .. } => Some("AveragePool (other than global)".into()),
            FloatOp::Mul => Some("Mul".into()),
            FloatOp::Concat => Some("Concat".into()),
            FloatOp::Unary(u) => Some(
                match u {
                    Unary::Activation(_) => {
                        "Relu/Clip after an operator that cannot fuse it (e.g. after Concat)"
                    }
                    Unary::HardSwish => "HardSwish",
                    Unary::HardSigmoid { .. } => "HardSigmoid",
                    Unary::Sigmoid => "Sigmoid",
                }
                .into(),
            ),
            FloatOp::Add { .. } | FloatOp::GlobalAvgPool | FloatOp::FullyConnected { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FloatLayer {
    pub(crate) op: FloatOp,
    pub(crate) inputs: Vec<usize>,
    pub(crate) output: usize,
    /// The ONNX node(s) the layer came from, for messages (empty for traced models).
    pub(crate) source: String,
}

/// The classifier as the int8 engine sees it: tensors (the input first, the logits last) and
/// layers in order, each reading only tensors made before it.
#[derive(Debug, Clone)]
pub(crate) struct FloatGraph {
    pub(crate) tensors: Vec<FloatTensor>,
    pub(crate) layers: Vec<FloatLayer>,
}

impl FloatGraph {
    /// The input's `[channels, height, width]`.
    pub(crate) fn input_chw(&self) -> [usize; 3] {
        let t = &self.tensors[0];
        [t.channels, t.height, t.width]
    }

    /// The number of outputs (classes).
    pub(crate) fn classes(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.channels)
    }

    /// The operators the int8 core lacks, each with how many layers use it and where the
    /// first one came from; empty when the whole graph runs in int8.
    pub(crate) fn int8_gaps(&self) -> Vec<String> {
        let mut gaps: Vec<(String, usize, &str)> = Vec::new();
        for layer in &self.layers {
            if let Some(gap) = layer.op.int8_gap() {
                match gaps.iter_mut().find(|(g, _, _)| *g == gap) {
                    Some(entry) => entry.1 += 1,
                    None => gaps.push((gap, 1, &layer.source)),
                }
            }
        }
        gaps.into_iter()
            .map(|(gap, n, first)| {
                let at = if first.is_empty() {
                    String::new()
                } else {
                    format!(", first at node {first}")
                };
                format!("{gap} ×{n}{at}")
            })
            .collect()
    }
}

/// One pass over a classifier in the int8 graph's order — each convolution with its
/// BatchNorm (and ReLU when one follows), the stem's max-pool, residual adds with their ReLU,
/// global average pooling, the head — mirroring `ResNet::forward` and `Block::forward` op for
/// op. [`trace`] records the graph and its values with it; quantisation-aware training's
/// [`crate::int8_calibration::fake_quant_forward`] computes the same ops with int8 rounding
/// inserted. Values are made in the graph's tensor order (the input first).
pub(crate) trait GraphWalk<B: Backend> {
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

/// `N×C×H×W` → `N×C×1×1` means.
pub(crate) fn spatial_mean<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c, 1, 1])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{ImageSet, Target};
    use crate::model::{input_tensor, Classifier, ResNetConfig};
    use burn::backend::Flex;
    use scanside_runtime::preprocess::PreprocessConfig;

    pub(crate) fn images(n: usize, side: usize, seed: u32) -> ImageSet {
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
    pub(crate) fn resnet18_eighth(separable: bool) -> ResNetConfig {
        ResNetConfig {
            depth: 18,
            width_multiplier: 0.125,
            in_channels: 3,
            small_input_stem: true,
            separable,
        }
    }
    pub(crate) fn preprocess(side: u32) -> PreprocessConfig {
        PreprocessConfig::new(side, 3, vec![0.5; 3], vec![0.25; 3])
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
        assert!(graph.int8_gaps().is_empty(), "{:?}", graph.int8_gaps());
    }

    /// Evaluating the traced graph (folded BatchNorm, fused ReLUs) gives the model's values:
    /// the evaluator that calibrates imported graphs agrees with burn's own forward pass.
    #[test]
    fn evaluating_a_traced_graph_reproduces_every_traced_tensor() {
        let device = Default::default();
        for separable in [false, true] {
            let config = resnet18_eighth(separable);
            let model =
                Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 3, &device);
            let x = input_tensor::<Flex>(images(2, 16, 4).pixels, &preprocess(16), &device);
            let (graph, traced) = trace(&model, x.clone());
            let evaluated = evaluate(&graph, x);
            assert_eq!(evaluated.len(), traced.len());
            for (i, (a, b)) in evaluated.into_iter().zip(traced).enumerate() {
                let (a, b) = (to_vec(a), to_vec(b));
                let scale = b.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-4 * scale, "tensor {i}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn windows_compute_output_sizes_and_know_the_int8_geometry() {
        let w = Window::square(3, 2, 1);
        assert_eq!(w.output_size([32, 31]), Some([16, 16]));
        assert_eq!(w.as_square(), Some((3, 2, 1)));
        let asymmetric = Window {
            pads: [0, 0, 1, 1],
            ..w
        };
        assert_eq!(asymmetric.as_square(), None);
        assert_eq!(asymmetric.output_size([32, 32]), Some([16, 16]));
        assert_eq!(Window::square(5, 1, 0).output_size([3, 3]), None);
    }
}
