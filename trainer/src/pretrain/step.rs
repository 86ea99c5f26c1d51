//! One optimiser step's gradients, data-parallel: the step's batch is cut into micro-batches,
//! each device computes its share's losses and gradients on its own replica of the model (one
//! thread per device), and the gradients are moved to the first device and summed there in
//! micro-batch order — the same arithmetic whichever device finishes first, and the same as
//! that many micro-batches on one device. The optimiser step itself is the caller's.

use std::path::Path;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use scanside_runtime::preprocess::PreprocessConfig;
use serde_json::json;

use super::objectives::objective_losses;
use super::views::StepInputs;
use crate::config::PretrainConfig;
use crate::model::SimClr;
use crate::{Error, Result};

/// One micro-batch's loss, its objectives' values and its gradients (on the first device).
type MicroResult = (f32, Vec<(&'static str, f32)>, GradientsParams);

/// A step's summed gradients with its loss and each objective's share of it.
pub(super) struct StepGradients {
    /// The step's loss (the sum of its micro-batches' losses, each divided by their count).
    pub(super) loss: f32,
    /// Each weighted objective's mean over the micro-batches.
    pub(super) objectives: serde_json::Map<String, serde_json::Value>,
    /// Gradients of every micro-batch, summed on the first device.
    pub(super) grads: GradientsParams,
}

/// How every step's batch is cut and where its micro-batches run.
pub(super) struct MicroBatching<'a, B: AutodiffBackend> {
    pub(super) config: &'a PretrainConfig,
    pub(super) preprocess: &'a PreprocessConfig,
    /// The first holds the model and receives the gradients.
    pub(super) devices: &'a [B::Device],
    /// Micro-batches per step (`accumulation_steps × devices`).
    pub(super) count: usize,
    /// Floats per image.
    pub(super) image_len: usize,
    /// The run directory, named when a loss goes bad.
    pub(super) out: &'a Path,
}

fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f32 {
    t.clone()
        .into_data()
        .iter::<f32>()
        .next()
        .unwrap_or(f32::NAN)
}

impl<B: AutodiffBackend> MicroBatching<'_, B> {
    /// The gradients of step `step` of `model` on `inputs`.
    pub(super) fn gradients(
        &self,
        model: &SimClr<B>,
        inputs: &StepInputs,
        step: usize,
    ) -> Result<StepGradients> {
        let results = if self.devices.len() == 1 {
            (0..self.count)
                .map(|micro| self.micro_step(model, &self.devices[0], inputs, micro, step))
                .collect::<Result<Vec<_>>>()?
        } else {
            self.on_every_device(model, inputs, step)?
        };
        let mut grads = GradientsAccumulator::<SimClr<B>>::new();
        let mut loss = 0.0;
        let mut objectives = serde_json::Map::new();
        for (value, parts, micro_grads) in results {
            loss += value;
            for (name, t) in parts {
                let sum = objectives.entry(name.to_string()).or_insert(json!(0.0));
                *sum = json!(sum.as_f64().unwrap_or(0.0) + f64::from(t) / self.count as f64);
            }
            grads.accumulate(model, micro_grads);
        }
        Ok(StepGradients {
            loss,
            objectives,
            grads: grads.grads(),
        })
    }

    /// Device `d` takes micro-batches d, d + D, d + 2D, … on its own thread; the results come
    /// back in micro-batch order.
    fn on_every_device(
        &self,
        model: &SimClr<B>,
        inputs: &StepInputs,
        step: usize,
    ) -> Result<Vec<MicroResult>> {
        let devices = self.devices;
        let mut by_device = std::thread::scope(|scope| {
            let workers: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(d, on)| {
                    let replica = model.clone().fork(on);
                    scope.spawn(move || {
                        (d..self.count)
                            .step_by(devices.len())
                            .map(|micro| self.micro_step(&replica, on, inputs, micro, step))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a device's worker panicked"))
                .collect::<Result<Vec<_>>>()
        })?
        .into_iter()
        .map(Vec::into_iter)
        .collect::<Vec<_>>();
        // Back into micro-batch order: the sums do not depend on which device finished first.
        Ok((0..self.count)
            .map(|micro| {
                by_device[micro % devices.len()]
                    .next()
                    .expect("every device returns its micro-batches")
            })
            .collect())
    }

    /// One micro-batch on one device: its loss, its objectives and its gradients, moved to
    /// the first device.
    fn micro_step(
        &self,
        replica: &SimClr<B>,
        on: &B::Device,
        inputs: &StepInputs,
        micro: usize,
        step: usize,
    ) -> Result<MicroResult> {
        let batch = inputs.micro_batch(micro, self.count, self.image_len);
        let parts = objective_losses(replica, batch, self.config, self.preprocess, on);
        let loss = parts
            .iter()
            .map(|(_, t)| t.clone())
            .reduce(|a, b| a + b)
            .expect("validated: at least one objective")
            .div_scalar(self.count as f32);
        let value = scalar(&loss);
        if !value.is_finite() {
            return Err(Error::Config {
                path: self.out.to_path_buf(),
                reason: format!("loss became {value} at step {step}; lower the learning rate"),
            });
        }
        let values: Vec<(&'static str, f32)> =
            parts.iter().map(|(name, t)| (*name, scalar(t))).collect();
        let grads = GradientsParams::from_grads(loss.backward(), replica);
        Ok((value, values, grads.to_device(&self.devices[0], replica)))
    }
}
