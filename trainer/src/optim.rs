//! Optimisers for pretraining: AdamW and SGD from burn, and LARS (You, Gitman and Ginsburg
//! 2017), which burn does not have and SimCLR trains with.
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
}
