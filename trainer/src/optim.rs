//! Optimisers and their schedules: AdamW and SGD from burn, and LARS (You, Gitman and Ginsburg
//! 2017), which burn does not have and SimCLR trains with; the learning-rate schedule (linear
//! warm-up, cosine decay), the seeded order of batches and the per-step augmentation seed that
//! pretraining and fine-tuning share. Nothing here reads data or knows a training stage.
//!
//! LARS as in SimCLR: weight decay is added to the gradient and the step is scaled per layer by
//! the trust ratio `η·‖w‖ / ‖g‖`, except for biases and BatchNorm parameters (the only 1-D
//! parameters of our networks), which get neither weight decay nor adaptation. Heavy-ball
//! momentum follows. The trust ratio is computed with tensor ops, so a step never waits for the
//! device.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::SimpleOptimizer;
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which optimiser a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay.
    #[default]
    Adamw,
    /// Layer-wise adaptive rate scaling with momentum (SimCLR's choice for large batches).
    Lars,
    /// SGD with momentum.
    Sgd,
}

/// LARS hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lars {
    /// Heavy-ball momentum.
    pub momentum: f64,
    /// L2 weight decay on weights (not on biases or BatchNorm).
    pub weight_decay: f64,
    /// Trust coefficient η.
    pub trust_coefficient: f64,
}

impl Default for Lars {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 1e-6,
            trust_coefficient: 0.001,
        }
    }
}

/// LARS state of one parameter: its velocity.
#[derive(Record, Clone)]
pub struct LarsState<B: Backend, const D: usize> {
    /// Momentum buffer.
    pub velocity: Tensor<B, D>,
}

impl Lars {
    /// The optimiser for a module.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Lars, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for Lars {
    type State<const D: usize> = LarsState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        // Biases and BatchNorm scales/shifts: plain momentum SGD.
        let update = if D == 1 {
            grad.mul_scalar(lr)
        } else {
            let grad = grad + tensor.clone().mul_scalar(self.weight_decay);
            let weight_norm = tensor.clone().powf_scalar(2.0).sum().sqrt();
            let grad_norm = grad.clone().powf_scalar(2.0).sum().sqrt();
            // η‖w‖/‖g‖; a zero gradient gives a zero step whatever the ratio.
            let trust = weight_norm
                .mul_scalar(self.trust_coefficient)
                .div(grad_norm.add_scalar(1e-12));
            grad.mul(trust.unsqueeze::<D>()).mul_scalar(lr)
        };
        let velocity = match state {
            Some(state) => state.velocity.mul_scalar(self.momentum) + update,
            None => update,
        };
        (tensor - velocity.clone(), Some(LarsState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LarsState {
            velocity: state.velocity.to_device(device),
        }
    }
}

/// Linear warm-up then cosine decay to zero.
pub fn learning_rate_at(step: usize, total: usize, peak: f64, warmup_fraction: f64) -> f64 {
    let warmup = ((total as f64 * warmup_fraction).round() as usize).max(1);
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// The batches of every step: a seeded shuffle per epoch, whole batches only.
pub fn batch_schedule(
    images: usize,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    total: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..images).collect();
    let mut schedule = Vec::with_capacity(total);
    for epoch in 0..epochs {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1)));
        for batch in order.chunks_exact(batch_size) {
            if schedule.len() == total {
                return schedule;
            }
            schedule.push(batch.to_vec());
        }
    }
    schedule
}

/// The augmentation seed of a step.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(step as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn weights_step_by_the_trust_ratio_and_biases_by_plain_sgd() {
        let device = Default::default();
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.0,
            trust_coefficient: 0.5,
        };
        // ‖w‖ = 5, ‖g‖ = 10 → trust 0.5·5/10 = 0.25, step = lr · 0.25 · g.
        let w = Tensor::<Flex, 2>::from_data(TensorData::new(vec![3.0_f32, 4.0], [1, 2]), &device);
        let g = Tensor::<Flex, 2>::from_data(TensorData::new(vec![6.0_f32, 8.0], [1, 2]), &device);
        let (w1, state) = SimpleOptimizer::<Flex>::step(&lars, 0.1, w, g.clone(), None);
        let w1 = values(w1);
        assert!((w1[0] - (3.0 - 0.1 * 0.25 * 6.0)).abs() < 1e-6, "{w1:?}");
        assert!((w1[1] - (4.0 - 0.1 * 0.25 * 8.0)).abs() < 1e-6, "{w1:?}");
        // Second step: velocity = 0.9·v + new update.
        let w1t = Tensor::<Flex, 2>::from_data(TensorData::new(w1.clone(), [1, 2]), &device);
        let (w2, _) = SimpleOptimizer::<Flex>::step(&lars, 0.1, w1t, g, state);
        let v0 = 0.1 * 0.25 * 6.0;
        let norm1 = (w1[0] * w1[0] + w1[1] * w1[1]).sqrt();
        let v1 = 0.9 * v0 + 0.1 * 0.5 * norm1 / 10.0 * 6.0;
        assert!((values(w2)[0] - (w1[0] - v1)).abs() < 1e-5);

        let b = Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0_f32], [1]), &device);
        let gb = Tensor::<Flex, 1>::from_data(TensorData::new(vec![2.0_f32], [1]), &device);
        let (b1, _) = SimpleOptimizer::<Flex>::step(&lars, 0.1, b, gb, None);
        assert!(
            (values(b1)[0] - 0.8).abs() < 1e-6,
            "bias: no adaptation, no decay"
        );
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let lr: Vec<f64> = (0..100)
            .map(|s| learning_rate_at(s, 100, 1.0, 0.1))
            .collect();
        assert!((lr[9] - 1.0).abs() < 1e-9 && lr[0] < 0.2);
        assert!(lr[50] < 1.0 && lr[99] < 0.01);
    }
}
