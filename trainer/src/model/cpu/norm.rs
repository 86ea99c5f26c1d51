//! Training-mode BatchNorm (optionally followed by ReLU) as one operation on burn's CPU
//! training backend (`Autodiff<Flex>`).
//!
//! Composed from tensor operations, a BatchNorm is about fifteen element-wise passes and
//! reductions forward and back, each of which burn-flex runs on the calling thread; once the
//! convolutions ran on every core ([`super::conv`]), those passes were most of what kept the
//! main thread busy while the other core waited. Here the forward pass is two parallel passes
//! (statistics per channel, then normalise per sample) and the backward pass two more, with the
//! ReLU's mask folded in. Same arithmetic as [`crate::model::batch_norm_composed`]: batch mean, biased
//! batch variance, `ε` inside the square root, the same running-statistics update.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::conv::{cast, Train};
use super::output_buffer::par_filled;
use crate::model::update_running_statistics;

/// Training-mode `batch_norm` (then ReLU when `relu`) of `x` through this module when `B` is
/// `Autodiff<Flex>` with autodiff on, updating `bn`'s running statistics; `Err(x)` otherwise.
pub fn forward<B: Backend>(
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let device = x.device();
    if TypeId::of::<B>() != TypeId::of::<Train>()
        || !B::ad_enabled(&device)
        || x.dtype() != DType::F32
        || bn.gamma.val().dtype() != DType::F32
    {
        return Err(x);
    }
    let (Ok(xt), Ok(gamma), Ok(beta)) = (
        cast::<_, Tensor<Train, 4>>(x),
        cast::<_, Tensor<Train, 1>>(bn.gamma.val()),
        cast::<_, Tensor<Train, 1>>(bn.beta.val()),
    ) else {
        unreachable!("B is Autodiff<Flex>, checked above");
    };
    let c = gamma.dims()[0];
    let (y, mean, var) = batch_norm_train(xt, gamma, beta, bn.epsilon, relu);
    let stat = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [c]), &device);
    update_running_statistics(bn, stat(mean), stat(var));
    match cast(y) {
        Ok(y) => Ok(y),
        Err(_) => unreachable!("B is Autodiff<Flex>, checked above"),
    }
}

/// Runs `f` compiled for the widest float instructions this CPU has (AVX2 + FMA on most x86-64
/// hosts): pulp builds the closure once per instruction set and picks at run time, so the
/// binary still runs on any x86-64 while the plain loops below are vectorised 8 lanes wide (the
/// baseline build's SSE loops were ~7 % of a SimCLR step, profiled).
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Lanes of the reductions: two 8-lane vectors, so consecutive additions do not wait on each
/// other.
const LANES: usize = 16;

/// `Σ f(a[i], b[i])` of each of the `K` values `f` returns, over two equal-length slices in
/// [`LANES`] f32 lanes (a plane holds at most a few thousand values, so f32 partial sums are
/// exact enough, and planes are summed in f64).
#[inline(always)]
fn lane_sums<const K: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; K]) -> [f64; K] {
    let mut lanes = [[0.0f32; LANES]; K];
    let (a16, b16) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = [0.0f64; K];
    for (&x, &y) in a16.remainder().iter().zip(b16.remainder()) {
        for (t, v) in tail.iter_mut().zip(f(x, y)) {
            *t += f64::from(v);
        }
    }
    for (x, y) in a16.zip(b16) {
        for i in 0..LANES {
            for (sum, v) in lanes.iter_mut().zip(f(x[i], y[i])) {
                sum[i] += v;
            }
        }
    }
    core::array::from_fn(|k| lanes[k].iter().map(|&v| f64::from(v)).sum::<f64>() + tail[k])
}

/// Mean and sum of squared deviations from it of one plane: two passes while the plane sits in
/// L1, so the batch is read from memory once.
#[inline(always)]
fn plane_moments(plane: &[f32]) -> (f64, f64) {
    let count = plane.len() as f64;
    let [sum] = lane_sums(plane, plane, |v, _| [v]);
    let mean = sum / count;
    let centre = mean as f32;
    let [squares] = lane_sums(plane, plane, |v, _| [(v - centre) * (v - centre)]);
    // Deviations were taken from the rounded mean: Σ(v − c)² = M2 + n·(mean − c)².
    let off = mean - f64::from(centre);
    (mean, squares - count * off * off)
}

/// Channel statistics of a batch: per-channel mean and biased variance of `x` (`N×C×L`), the
/// planes' moments merged in f64 (Chan et al.'s pairwise update): as exact as two passes over
/// the batch when the variance is small against the mean.
pub fn channel_statistics(x: &[f32], [n, c, l]: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            simd(
                #[inline(always)]
                || {
                    let (mut count, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
                    for s in 0..n {
                        let (plane_mean, plane_m2) = plane_moments(&x[(s * c + ch) * l..][..l]);
                        let (k, total) = (l as f64, count + l as f64);
                        let delta = plane_mean - mean;
                        mean += delta * k / total;
                        m2 += plane_m2 + delta * delta * count * k / total;
                        count = total;
                    }
                    (mean as f32, (m2 / count.max(1.0)) as f32)
                },
            )
        })
        .unzip()
}

/// `y = max?(0, (x − mean)·scale + β)` with `scale = γ/√(var + ε)`, per sample in parallel.
fn normalize(
    x: &[f32],
    [n, c, l]: [usize; 3],
    mean: &[f32],
    scale: &[f32],
    beta: &[f32],
    relu: bool,
) -> Vec<f32> {
    par_filled(n * c * l, c * l, |sample, y_n| {
        let x_n = &x[sample * c * l..][..c * l];
        simd(
            #[inline(always)]
            || {
                for ch in 0..c {
                    let (m, s, b) = (mean[ch], scale[ch], beta[ch]);
                    let inp = &x_n[ch * l..][..l];
                    if relu {
                        y_n.extend_map(inp, |v| ((v - m) * s + b).max(0.0));
                    } else {
                        y_n.extend_map(inp, |v| (v - m) * s + b);
                    }
                }
            },
        )
    })
    .0
}

/// What the backward pass needs: the input, the batch statistics and the affine parameters.
#[derive(Debug, Clone)]
pub struct NormState {
    x: FlexTensor,
    /// `N×C×H×W`.
    shape: [usize; 4],
    /// `N×C×(H·W)`.
    dims: [usize; 3],
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `γ/√(var + ε)`, as the forward pass applied it.
    scale: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    relu: bool,
}

/// Gradients w.r.t. `x`, `γ` and `β` of [`normalize`] given `dy`.
pub fn norm_gradients(state: &NormState, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [n, c, l] = state.dims;
    let NormState {
        mean,
        inv_std,
        scale,
        gamma,
        beta,
        relu,
        ..
    } = state;
    // dy through the ReLU: zero where the output was clipped, recomputed (not stored) with the
    // forward pass's own expression, so the mask is exactly the one it applied.
    let through = |ch: usize| {
        let (m, s, b) = (mean[ch], scale[ch], beta[ch]);
        let relu = *relu;
        #[inline(always)]
        move |v: f32, d: f32| {
            if !relu || (v - m) * s + b > 0.0 {
                d
            } else {
                0.0
            }
        }
    };
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (m, k) = (mean[ch], inv_std[ch]);
            let pass = through(ch);
            simd(
                #[inline(always)]
                || {
                    let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
                    for s in 0..n {
                        let at = (s * c + ch) * l;
                        let (xs, ds) = (&x[at..at + l], &dy[at..at + l]);
                        let [a, b] = lane_sums(xs, ds, |v, d| {
                            let d = pass(v, d);
                            [d, d * (v - m) * k]
                        });
                        sum_dy += a;
                        sum_dy_xhat += b;
                    }
                    (sum_dy as f32, sum_dy_xhat as f32)
                },
            )
        })
        .unzip();
    let count = (n * l) as f32;
    let (dx, _) = par_filled(n * c * l, c * l, |sample, dx_n| {
        let at = sample * c * l;
        let (x_n, dy_n) = (&x[at..][..c * l], &dy[at..][..c * l]);
        simd(
            #[inline(always)]
            || {
                for ch in 0..c {
                    // dx = γ/σ · (dy − Σdy/M − x̂ · Σ(dy·x̂)/M)
                    let k = gamma[ch] * inv_std[ch];
                    let (m, inv) = (mean[ch], inv_std[ch]);
                    let pass = through(ch);
                    let mean_dy = dbeta[ch] / count;
                    let mean_dy_xhat = dgamma[ch] / count;
                    let range = ch * l..(ch + 1) * l;
                    dx_n.extend_zip_map(&x_n[range.clone()], &dy_n[range], |v, d| {
                        let d = pass(v, d);
                        let xhat = (v - m) * inv;
                        k * (d - mean_dy - xhat * mean_dy_xhat)
                    });
                }
            },
        )
    });
    (dx, dgamma, dbeta)
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = NormState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let state = ops.state;
        let x = state.x.to_contiguous();
        let (dx, dgamma, dbeta) = norm_gradients(&state, x.storage::<f32>(), dy.storage::<f32>());
        let [n, c, l] = state.dims;
        let tensor =
            |data: Vec<f32>, dims: Vec<usize>| FlexTensor::from_data(TensorData::new(data, dims));
        debug_assert_eq!(state.shape.iter().product::<usize>(), n * c * l);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, state.shape.to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![c]));
        }
    }
}

/// Training-mode BatchNorm of `x` (`N×C×H×W`) with `γ`, `β` (`C`), then ReLU when `relu`:
/// returns the output and the batch mean and biased variance (for the running statistics).
pub fn batch_norm_train(
    x: Tensor<Train, 4>,
    gamma: Tensor<Train, 1>,
    beta: Tensor<Train, 1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<Train, 4>, Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = x.dims();
    let dims = [n, c, h * w];
    let x = x.into_primitive().tensor();
    let gamma = gamma.into_primitive().tensor();
    let beta = beta.into_primitive().tensor();
    let x_values = x.primitive.to_contiguous();
    let gamma_values = gamma.primitive.to_contiguous().storage::<f32>().to_vec();
    let beta_values = beta.primitive.to_contiguous().storage::<f32>().to_vec();
    let (mean, var) = channel_statistics(x_values.storage::<f32>(), dims);
    let inv_std: Vec<f32> = var
        .iter()
        .map(|v| 1.0 / (v + epsilon as f32).sqrt())
        .collect();
    let scale: Vec<f32> = gamma_values
        .iter()
        .zip(&inv_std)
        .map(|(g, s)| g * s)
        .collect();
    let y = normalize(
        x_values.storage::<f32>(),
        dims,
        &mean,
        &scale,
        &beta_values,
        relu,
    );
    let y = FlexTensor::from_data(TensorData::new(y, [n, c, h, w]));
    let output = match BatchNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            NormState {
                x: x_values,
                shape: [n, c, h, w],
                dims,
                mean: mean.clone(),
                inv_std,
                scale,
                gamma: gamma_values,
                beta: beta_values,
                relu,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (
        Tensor::from_primitive(TensorPrimitive::Float(output)),
        mean,
        var,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation;
    use burn::tensor::Distribution;

    fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Output and gradients of `sum(bn(x) · r)` by tensor operations and by this module.
    #[test]
    fn output_and_gradients_match_the_composed_batch_norm_with_and_without_relu() {
        let device = Default::default();
        for relu in [false, true] {
            let x =
                Tensor::<Train, 4>::random([3, 4, 5, 6], Distribution::Normal(0.5, 2.0), &device);
            let gamma = Tensor::<Train, 1>::from_data([0.5f32, 1.0, 2.0, -1.0], &device);
            let beta = Tensor::<Train, 1>::from_data([0.1f32, -0.3, 0.0, 0.7], &device);
            let run = |ours: bool| {
                let x = x.clone().detach().require_grad();
                let gamma = gamma.clone().detach().require_grad();
                let beta = beta.clone().detach().require_grad();
                let y = if ours {
                    batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu).0
                } else {
                    let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
                    let centered = x.clone() - mean;
                    let var = centered
                        .clone()
                        .square()
                        .mean_dim(0)
                        .mean_dim(2)
                        .mean_dim(3);
                    let y = centered / (var + 1e-5).sqrt() * gamma.clone().reshape([1, 4, 1, 1])
                        + beta.clone().reshape([1, 4, 1, 1]);
                    if relu {
                        activation::relu(y)
                    } else {
                        y
                    }
                };
                let r = y.clone().detach().sin() + 0.5;
                let grads = (y.clone() * r).sum().backward();
                [
                    to_vec(y),
                    to_vec(x.grad(&grads).unwrap()),
                    to_vec(gamma.grad(&grads).unwrap()),
                    to_vec(beta.grad(&grads).unwrap()),
                ]
            };
            let (composed, ours) = (run(false), run(true));
            for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
                .iter()
                .zip(composed.iter().zip(&ours))
            {
                crate::model::assert_close_relative(&format!("relu {relu} {what}"), a, b, 2e-5);
            }
        }
    }

    #[test]
    fn statistics_are_exact_for_a_large_offset() {
        // Values 1000 ± 0.001: a one-pass f32 variance would lose them entirely.
        let x: Vec<f32> = (0..64)
            .map(|i| 1000.0 + if i % 2 == 0 { 0.001 } else { -0.001 })
            .collect();
        let (mean, var) = channel_statistics(&x, [4, 1, 16]);
        assert!((mean[0] - 1000.0).abs() < 1e-3);
        assert!((var[0] - 1e-6).abs() < 1e-7, "{}", var[0]);
    }
}
