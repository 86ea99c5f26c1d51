//! The classifier as a float graph, the form both exporters start from: each convolution with
//! its BatchNorm folded in (`W' = W·γ/σ`, `b' = β − μ·γ/σ`), the stem's max-pool, residual adds,
//! global average pooling and the head, in the order the int8 engine runs them. `trace`
//! records the graph and every tensor's values on a batch; `GraphWalk` is the one pass over
//! the network that tracing and quantisation-aware training share, mirroring `ResNet::forward`
//! and `Block::forward` op for op. Nothing here quantises or writes files.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::{batch_norm, to_vec, Classifier};

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

/// A tensor of the traced float graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FloatTensor {
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
    /// Never negative (a ReLU output or an average of one): quantised over `[0, max]`.
    pub(crate) non_negative: bool,
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

pub(crate) fn walk<B: Backend, W: GraphWalk<B>>(
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
pub(crate) fn spatial_mean<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{ImageSet, Target};
    use crate::model::{input_tensor, ResNetConfig};
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
    }
}
