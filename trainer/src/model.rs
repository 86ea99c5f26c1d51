//! Models: a ResNet backbone (18, 34 or 50 layers, width multiplier, small-input stem for
//! 28–128 px images; torchvision's layout so ImageNet weights load by name), the classifier (backbone + linear head) and the SimCLR network (backbone + 2-layer
//! projection head).
//!
//! The layer structure here is mirrored by [`crate::graph`], the float graph with BatchNorm
//! folded into the convolutions that the ONNX and int8 exports write.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub mod cpu;

/// `conv.forward(x)`; on burn's CPU training backend with a faster backward pass
/// ([`cpu::conv`]), elsewhere burn's own.
pub fn conv_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    return cpu::conv::forward(conv, x);
    #[cfg(not(feature = "flex"))]
    conv.forward(x)
}

/// Backbone architecture, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// 18, 34 (basic blocks) or 50 (bottleneck blocks).
    pub depth: usize,
    /// Multiplies the standard widths 64/128/256/512 (at least 8 channels per stage).
    pub width_multiplier: f32,
    /// Input channels.
    pub in_channels: usize,
    /// 3×3 stride-1 stem without max-pool (for 28–128 px inputs) instead of 7×7/2 + max-pool.
    pub small_input_stem: bool,
    /// Depthwise-separable basic blocks (`--arch micro`): a 3×3 depthwise convolution carrying
    /// the stride, then a 1×1 pointwise one — about 8× fewer multiply-accumulates, the
    /// MobileNet trade suited to microcontrollers. Basic-block depths (18, 34) only.
    #[serde(default)]
    pub separable: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            depth: 18,
            width_multiplier: 0.25,
            in_channels: 3,
            small_input_stem: true,
            separable: false,
        }
    }
}

impl ResNetConfig {
    /// Channels of the four stages.
    pub fn widths(&self) -> [usize; 4] {
        [64, 128, 256, 512].map(|w| ((w as f32 * self.width_multiplier).round() as usize).max(8))
    }

    /// Residual blocks per stage.
    pub fn blocks_per_stage(&self) -> Option<[usize; 4]> {
        match self.depth {
            18 => Some([2, 2, 2, 2]),
            34 | 50 => Some([3, 4, 6, 3]),
            _ => None,
        }
    }

    /// Bottleneck blocks (1×1 → 3×3 → 1×1, four times wider out than in) instead of basic ones.
    pub fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    /// Channels a stage outputs: its width, ×4 for bottleneck blocks.
    fn stage_out(&self, width: usize) -> usize {
        if self.bottleneck() {
            width * BOTTLENECK_EXPANSION
        } else {
            width
        }
    }

    /// Length of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.stage_out(self.widths()[3])
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.blocks_per_stage().is_none() {
            return Err(format!(
                "ResNet depth {} is not supported (18, 34 or 50)",
                self.depth
            ));
        }
        if !(self.width_multiplier > 0.0 && self.width_multiplier <= 4.0) {
            return Err(format!(
                "width multiplier {} is out of (0, 4]",
                self.width_multiplier
            ));
        }
        if self.separable && self.bottleneck() {
            return Err(format!(
                "depthwise-separable blocks (--arch micro) need a basic-block depth (18 or 34), not {}",
                self.depth
            ));
        }
        if !(self.in_channels == 1 || self.in_channels == 3) {
            return Err(format!(
                "{} input channels: 1 or 3 expected",
                self.in_channels
            ));
        }
        Ok(())
    }

    /// Builds the backbone with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let widths = self.widths();
        let blocks = self.blocks_per_stage().expect("validated config");
        let stem = if self.small_input_stem {
            conv(self.in_channels, widths[0], 3, 1, device)
        } else {
            conv(self.in_channels, widths[0], 7, 2, device)
        };
        let mut stages = Vec::new();
        let mut channels = widths[0];
        for (stage, (&width, &count)) in widths.iter().zip(&blocks).enumerate() {
            for b in 0..count {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let block = if self.bottleneck() {
                    Block::bottleneck(channels, width, stride, device)
                } else if self.separable {
                    Block::separable(channels, width, stride, device)
                } else {
                    Block::basic(channels, width, stride, device)
                };
                stages.push(block);
                channels = self.stage_out(width);
            }
        }
        ResNet {
            stem_conv: stem,
            stem_bn: BatchNormConfig::new(widths[0]).init(device),
            stem_pool: (!self.small_input_stem).then(|| {
                MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init()
            }),
            blocks: stages,
        }
    }
}

fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(device)
}

/// BatchNorm over `N×C×H×W` with burn's [`BatchNorm`] parameters and semantics (batch
/// statistics and a running-average update while autodiff is on, running statistics otherwise):
/// one fused operation while training on burn's CPU backend ([`cpu::norm`]), otherwise
/// [`batch_norm_composed`].
pub fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match cpu::norm::forward(bn, x, false) {
        Ok(y) => return y,
        Err(x) => x,
    };
    batch_norm_composed(bn, x)
}

/// `relu(batch_norm(bn, x))`, fused on burn's CPU training backend.
pub fn batch_norm_relu<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match cpu::norm::forward(bn, x, true) {
        Ok(y) => return y,
        Err(x) => x,
    };
    relu(batch_norm_composed(bn, x))
}

/// [`batch_norm`] from tensor operations (every backend), written so that CPU backends stay on
/// their fast paths. burn's own forward swaps the batch and channel axes (a strided copy) and
/// broadcasts `1×C×1×1` factors, which burn-flex evaluates element by element through a generic
/// strided iterator: profiled, that was 38 % of a SimCLR step on 2 cores. Here statistics reduce
/// along contiguous trailing axes and every per-channel factor is materialised as `N×C×1×1` (a
/// few hundred floats), which flex broadcasts with SIMD.
pub fn batch_norm_composed<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let per_sample = |v: Tensor<B, 1>| v.reshape([1, c, 1, 1]).repeat_dim(0, n);
    let channel_mean = |t: Tensor<B, 4>| {
        t.reshape([n, c, h * w])
            .mean_dim(2)
            .mean_dim(0)
            .reshape([c])
    };
    let (centered, var) = if B::ad_enabled(&device) {
        let mean = channel_mean(x.clone());
        let centered = x - per_sample(mean.clone());
        let var = channel_mean(centered.clone().square());
        update_running_statistics(bn, mean.detach(), var.clone().detach());
        (centered, var)
    } else {
        let mean = bn.running_mean.value().to_device(&device);
        let var = bn.running_var.value().to_device(&device);
        (x - per_sample(mean), var)
    };
    let scale = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt();
    centered * per_sample(scale) + per_sample(bn.beta.val())
}

/// burn's running-average update of `bn`'s statistics with one batch's mean and (biased)
/// variance, `running ← (1 − momentum)·running + momentum·batch`.
fn update_running_statistics<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
    let device = mean.device();
    let blend = |running: Tensor<B, 1>, batch: Tensor<B, 1>| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - bn.momentum)
            .add(batch.mul_scalar(bn.momentum))
            .detach()
    };
    bn.running_mean
        .update(blend(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(blend(bn.running_var.value_sync(), var));
}

/// Projection shortcut of a block that changes shape.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1×1 convolution.
    pub conv: Conv2d<B>,
    /// Its BatchNorm.
    pub bn: BatchNorm<B>,
}

/// Output channels of a bottleneck block per unit of its width.
pub const BOTTLENECK_EXPANSION: usize = 4;

/// A ResNet residual block, torchvision's layout and field names. Basic (ResNet-18/34): 3×3
/// convolution carrying the stride, 3×3 convolution. Bottleneck (ResNet-50, "v1.5" like
/// torchvision: the stride on the 3×3): 1×1 reduce, 3×3, 1×1 expand (`conv3`). BatchNorm after
/// each, ReLU between, the shortcut added before the last ReLU.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// First convolution (3×3 with the stride; 1×1 in a bottleneck).
    pub conv1: Conv2d<B>,
    /// Its BatchNorm.
    pub bn1: BatchNorm<B>,
    /// Second convolution (3×3; carries the stride in a bottleneck).
    pub conv2: Conv2d<B>,
    /// Its BatchNorm.
    pub bn2: BatchNorm<B>,
    /// Bottleneck expansion (1×1), absent in a basic block.
    pub conv3: Option<Conv2d<B>>,
    /// Its BatchNorm.
    pub bn3: Option<BatchNorm<B>>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    fn shortcut(
        cin: usize,
        cout: usize,
        stride: usize,
        device: &B::Device,
    ) -> Option<Downsample<B>> {
        (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, device),
            bn: BatchNormConfig::new(cout).init(device),
        })
    }

    fn basic(cin: usize, width: usize, stride: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv(cin, width, 3, stride, device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: conv(width, width, 3, 1, device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: None,
            bn3: None,
            downsample: Self::shortcut(cin, width, stride, device),
        }
    }

    /// Depthwise 3×3 (stride, one filter per input channel) then pointwise 1×1 to `width`.
    fn separable(cin: usize, width: usize, stride: usize, device: &B::Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([cin, cin], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_groups(cin)
                .with_bias(false)
                .init(device),
            bn1: BatchNormConfig::new(cin).init(device),
            conv2: conv(cin, width, 1, 1, device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: None,
            bn3: None,
            downsample: Self::shortcut(cin, width, stride, device),
        }
    }

    fn bottleneck(cin: usize, width: usize, stride: usize, device: &B::Device) -> Self {
        let cout = width * BOTTLENECK_EXPANSION;
        Self {
            conv1: conv(cin, width, 1, 1, device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: conv(width, width, 3, stride, device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: Some(conv(width, cout, 1, 1, device)),
            bn3: Some(BatchNormConfig::new(cout).init(device)),
            downsample: Self::shortcut(cin, cout, stride, device),
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(d) => batch_norm(&d.bn, conv_forward(&d.conv, x.clone())),
            None => x.clone(),
        };
        let y = batch_norm_relu(&self.bn1, conv_forward(&self.conv1, x));
        let mut y = batch_norm(&self.bn2, conv_forward(&self.conv2, y));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            y = batch_norm(bn3, conv_forward(conv3, relu(y)));
        }
        relu(y + shortcut)
    }
}

/// The ResNet backbone: stem, residual stages, global average pooling.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution.
    pub stem_conv: Conv2d<B>,
    /// Stem BatchNorm.
    pub stem_bn: BatchNorm<B>,
    /// Max-pool of the ImageNet stem (absent in the small-input stem).
    pub stem_pool: Option<MaxPool2d>,
    /// All residual blocks, stage after stage.
    pub blocks: Vec<Block<B>>,
}

impl<B: Backend> ResNet<B> {
    /// `N×C×H×W` images to `N×features` pooled features.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut y = batch_norm_relu(&self.stem_bn, conv_forward(&self.stem_conv, x));
        if let Some(pool) = &self.stem_pool {
            y = pool.forward(y);
        }
        for block in &self.blocks {
            y = block.forward(y);
        }
        let [n, c, h, w] = y.dims();
        y.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }
}

/// Backbone + linear classification head: outputs logits.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    /// Feature extractor.
    pub backbone: ResNet<B>,
    /// Linear head.
    pub head: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    /// A classifier around a backbone, with a fresh head.
    pub fn new(
        backbone: ResNet<B>,
        feature_dim: usize,
        classes: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            backbone,
            head: LinearConfig::new(feature_dim, classes).init(device),
        }
    }

    /// `N×C×H×W` images to `N×classes` logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.backbone.forward(x))
    }
}

/// Side of the patch grid that masked reconstruction masks and predicts (`G×G` patches).
pub const RECONSTRUCTION_GRID: usize = 8;

/// Which optional heads a self-supervised network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SslHeads {
    /// SimSiam predictor on the projection.
    pub predictor: bool,
    /// 4-way rotation classifier on the backbone features.
    pub rotation: bool,
    /// Light decoder from backbone features to per-patch means (`C×G×G`).
    pub reconstruction: bool,
}

/// Self-supervised network: backbone, 2-layer MLP projection head (SimCLR / MICLe / SimSiam),
/// and the optional heads of the other objectives.
#[derive(Module, Debug)]
pub struct SimClr<B: Backend> {
    /// Feature extractor (what fine-tuning keeps).
    pub backbone: ResNet<B>,
    /// Hidden projection layer.
    pub projection_hidden: Linear<B>,
    /// Output projection layer.
    pub projection_out: Linear<B>,
    /// SimSiam predictor, hidden layer.
    pub predictor_hidden: Option<Linear<B>>,
    /// SimSiam predictor, output layer.
    pub predictor_out: Option<Linear<B>>,
    /// Rotation classifier (0°, 90°, 180°, 270°).
    pub rotation_head: Option<Linear<B>>,
    /// Masked-patch decoder: features → `C·G·G` patch means.
    pub decoder: Option<Linear<B>>,
}

impl<B: Backend> SimClr<B> {
    /// A network with a `feature_dim → feature_dim → projection_dim` projection head and the
    /// requested extra heads.
    pub fn new(
        config: &ResNetConfig,
        projection_dim: usize,
        heads: SslHeads,
        device: &B::Device,
    ) -> Self {
        let f = config.feature_dim();
        let hidden = (projection_dim / 2).max(8);
        Self {
            backbone: config.init(device),
            projection_hidden: LinearConfig::new(f, f).init(device),
            projection_out: LinearConfig::new(f, projection_dim).init(device),
            predictor_hidden: heads
                .predictor
                .then(|| LinearConfig::new(projection_dim, hidden).init(device)),
            predictor_out: heads
                .predictor
                .then(|| LinearConfig::new(hidden, projection_dim).init(device)),
            rotation_head: heads.rotation.then(|| LinearConfig::new(f, 4).init(device)),
            decoder: heads.reconstruction.then(|| {
                LinearConfig::new(
                    f,
                    config.in_channels * RECONSTRUCTION_GRID * RECONSTRUCTION_GRID,
                )
                .init(device)
            }),
        }
    }

    /// Images to projections `z`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.project(self.backbone.forward(x))
    }

    /// Backbone features to projections `z`.
    pub fn project(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.projection_out
            .forward(relu(self.projection_hidden.forward(h)))
    }

    /// SimSiam prediction `p` from a projection (the identity without a predictor).
    pub fn predict(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        match (&self.predictor_hidden, &self.predictor_out) {
            (Some(a), Some(b)) => b.forward(relu(a.forward(z))),
            _ => z,
        }
    }
}

/// Normalises a batch of `C×H×W` images (values in `[0, 1]`) with the run's preprocessing and
/// puts it on the device as an `N×C×H×W` tensor.
pub fn input_tensor<B: Backend>(
    mut pixels: Vec<f32>,
    preprocess: &scanside_runtime::preprocess::PreprocessConfig,
    device: &B::Device,
) -> Tensor<B, 4> {
    let per_image = preprocess.input_len();
    let n = pixels.len() / per_image;
    for image in pixels.chunks_mut(per_image) {
        scanside_runtime::preprocess::normalize_in_place(image, preprocess);
    }
    let shape = [
        n,
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    ];
    Tensor::from_data(burn::tensor::TensorData::new(pixels, shape), device)
}

/// Reads a float tensor back as a `Vec<f32>`.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Test helper for the CPU kernels: `a` (burn's or the composed result) and `b` (ours) agree
/// element by element within `tolerance` times the largest magnitude in `a` (at least 1e-3).
#[cfg(test)]
pub(crate) fn assert_close_relative(what: &str, a: &[f32], b: &[f32], tolerance: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        assert!(
            (p - q).abs() <= tolerance * scale,
            "{what}[{i}]: reference {p} vs ours {q}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn fast_batch_norm_matches_burns_in_training_and_inference() {
        type Ad = Autodiff<Flex>;
        let device = Default::default();
        let x = Tensor::<Ad, 4>::random([3, 4, 5, 6], Distribution::Normal(0.5, 2.0), &device);
        let ours = BatchNormConfig::new(4).init::<Ad>(&device);
        let gamma = Tensor::<Ad, 1>::from_data(
            TensorData::new(vec![0.5_f32, 1.0, 2.0, -1.0], [4]),
            &device,
        );
        let ours = BatchNorm {
            gamma: burn::module::Param::from_tensor(gamma),
            ..ours
        };
        let theirs = ours.clone();
        let reference = theirs.forward(x.clone());
        let fast = batch_norm(&ours, x.clone());
        let diff = (reference - fast).abs().max().into_scalar();
        assert!(diff < 1e-5, "training output differs by {diff}");
        let stats = |bn: &BatchNorm<Ad>| {
            (
                to_vec(bn.running_mean.value()),
                to_vec(bn.running_var.value()),
            )
        };
        let (m1, v1) = stats(&ours);
        let (m2, v2) = stats(&theirs);
        for (a, b) in m1.iter().chain(&v1).zip(m2.iter().chain(&v2)) {
            assert!(
                (a - b).abs() < 1e-5,
                "running statistics differ: {a} vs {b}"
            );
        }
        // Inference (no autodiff): running statistics.
        let inner = ours.valid();
        let xi = x.inner();
        let diff = (inner.forward(xi.clone()) - batch_norm(&inner, xi))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "inference output differs by {diff}");
    }
}
