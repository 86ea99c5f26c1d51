//! Every tensor of a float graph computed in burn, layer by layer: how an imported model's
//! activations are measured for calibration, and its logits compared with tract's run of the
//! ONNX file it came from.

use burn::tensor::activation::{hard_sigmoid, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use super::{spatial_mean, Activation, FloatGraph, FloatOp, FoldedConv, Unary, Window};

/// The values of every tensor of `graph` (`N×C×H×W`, in the graph's tensor order, the input
/// first) for the normalised batch `x`.
pub(crate) fn evaluate<B: Backend>(graph: &FloatGraph, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
    let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; graph.tensors.len()];
    values[0] = Some(x);
    for layer in &graph.layers {
        let input = |i: usize| {
            values[layer.inputs[i]]
                .clone()
                .expect("layers read only earlier tensors")
        };
        let y = match &layer.op {
            FloatOp::Conv { conv, activation } => activate(convolve(input(0), conv), *activation),
            FloatOp::MaxPool { window } => max_pool(input(0), window),
            FloatOp::AvgPool {
                window,
                count_include_pad,
            } => avg_pool(input(0), window, *count_include_pad),
            FloatOp::Add { activation } => activate(input(0) + input(1), *activation),
            FloatOp::Mul => input(0) * input(1),
            FloatOp::Concat => Tensor::cat((0..layer.inputs.len()).map(input).collect(), 1),
            FloatOp::GlobalAvgPool => spatial_mean(input(0)),
            FloatOp::FullyConnected {
                weight,
                bias,
                activation,
            } => activate(fully_connected(input(0), weight, bias), *activation),
            FloatOp::Unary(unary) => apply_unary(input(0), *unary),
        };
        values[layer.output] = Some(y);
    }
    values
        .into_iter()
        .map(|v| v.expect("every tensor is made by a layer"))
        .collect()
}

fn constant<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Pads given separately where burn's symmetric padding cannot express them.
fn pad_asymmetric<B: Backend>(x: Tensor<B, 4>, window: &Window, value: f32) -> Tensor<B, 4> {
    let [top, left, bottom, right] = window.pads;
    x.pad([(top, bottom), (left, right)], PadMode::Constant(value))
}

fn convolve<B: Backend>(x: Tensor<B, 4>, conv: &FoldedConv) -> Tensor<B, 4> {
    let device = x.device();
    let weight = constant(&conv.weight, conv.shape, &device);
    let bias = constant(&conv.bias, [conv.shape[0]], &device);
    let w = &conv.window;
    let (x, padding) = match w.symmetric_pads() {
        Some(pads) => (x, pads),
        None => (pad_asymmetric(x, w, 0.0), [0, 0]),
    };
    let options = ConvOptions::new(w.stride, padding, w.dilation, conv.groups);
    conv2d(x, weight, Some(bias), options)
}

fn max_pool<B: Backend>(x: Tensor<B, 4>, w: &Window) -> Tensor<B, 4> {
    let (x, padding) = match w.symmetric_pads() {
        Some(pads) => (x, pads),
        None => (pad_asymmetric(x, w, f32::MIN), [0, 0]),
    };
    max_pool2d(x, w.kernel, w.stride, padding, w.dilation, false)
}

/// The importer accepts only symmetric pads for average pooling (what counts as a padded
/// position would otherwise differ between burn and ONNX).
fn avg_pool<B: Backend>(x: Tensor<B, 4>, w: &Window, count_include_pad: bool) -> Tensor<B, 4> {
    let padding = w.symmetric_pads().unwrap_or([0, 0]);
    avg_pool2d(x, w.kernel, w.stride, padding, count_include_pad, false)
}

/// Weights `[out][in]` over the input flattened in `C×H×W` order; output `N×out×1×1`.
fn fully_connected<B: Backend>(x: Tensor<B, 4>, weight: &[f32], bias: &[f32]) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let out = bias.len();
    let fin = c * h * w;
    let weight = constant::<B, 2>(weight, [out, fin], &device).transpose();
    let bias = constant::<B, 2>(bias, [1, out], &device);
    (x.reshape([n, fin]).matmul(weight) + bias).reshape([n, out, 1, 1])
}

fn activate<B: Backend>(x: Tensor<B, 4>, activation: Activation) -> Tensor<B, 4> {
    match activation {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Clip { min, max } => x.clamp(min, max),
    }
}

fn apply_unary<B: Backend>(x: Tensor<B, 4>, unary: Unary) -> Tensor<B, 4> {
    match unary {
        Unary::Activation(a) => activate(x, a),
        Unary::HardSwish => x.clone() * hard_sigmoid(x, 1.0 / 6.0, 0.5),
        Unary::HardSigmoid { alpha, beta } => hard_sigmoid(x, f64::from(alpha), f64::from(beta)),
        Unary::Sigmoid => sigmoid(x),
    }
}
