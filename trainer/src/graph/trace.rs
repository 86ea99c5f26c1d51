//! The float graph of a model scanside trained, traced in burn with every tensor's values.

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    fold, spatial_mean, Activation, FloatGraph, FloatLayer, FloatOp, FloatTensor, GraphWalk, Window,
};
use crate::model::{batch_norm, to_vec, Classifier};

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
        self.graph.layers.push(FloatLayer {
            op,
            inputs,
            output,
            source: String::new(),
        });
        output
    }
}

fn relu_if(with_relu: bool) -> Activation {
    if with_relu {
        Activation::Relu
    } else {
        Activation::None
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
            activation: relu_if(with_relu),
        };
        self.layer(op, vec![*x], y, with_relu)
    }

    fn max_pool(&mut self, x: &usize, pool: &MaxPool2d) -> usize {
        let value = pool.forward(self.values[*x].clone());
        let op = FloatOp::MaxPool {
            window: Window::square(pool.kernel_size[0], pool.stride[0], STEM_POOL_PADDING),
        };
        self.layer(op, vec![*x], value, true)
    }

    fn add(&mut self, a: &usize, b: &usize) -> usize {
        let y = relu(self.values[*a].clone() + self.values[*b].clone());
        let op = FloatOp::Add {
            activation: Activation::Relu,
        };
        self.layer(op, vec![*a, *b], y, true)
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
        let op = FloatOp::FullyConnected {
            weight,
            bias,
            activation: Activation::None,
        };
        self.layer(op, vec![*pooled], logits.reshape([n, classes, 1, 1]), false)
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
