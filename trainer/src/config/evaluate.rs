//! Evaluation settings: bootstrap resamples, the target sensitivity of the operating points,
//! the reliability bins and the sub-population evaluated. Nothing here reads a run.

use serde::{Deserialize, Serialize};

use crate::data::{Partition, SampleFilter};

/// How an evaluation is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Bootstrap resamples for the confidence intervals (0: none).
    pub bootstrap: usize,
    /// Seed of the resampling.
    pub seed: u64,
    /// Sensitivity each class's threshold must reach on validation.
    pub target_sensitivity: f64,
    /// Bins of the reliability diagram.
    pub calibration_bins: usize,
    /// Only the evaluated partition's images of this sub-population (distribution shift).
    #[serde(default)]
    pub population: Option<SampleFilter>,
    /// The partition being evaluated (set by the evaluation itself).
    #[serde(default = "test_partition")]
    pub partition: Partition,
}

fn test_partition() -> Partition {
    Partition::Test
}

impl EvalSettings {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.target_sensitivity > 0.0 && self.target_sensitivity <= 1.0) {
            return Err(format!(
                "target sensitivity {} must be in (0, 1]",
                self.target_sensitivity
            ));
        }
        if self.calibration_bins == 0 {
            return Err("the reliability diagram needs at least one bin".into());
        }
        Ok(())
    }
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            bootstrap: 1000,
            seed: 0,
            target_sensitivity: 0.95,
            calibration_bins: 15,
            population: None,
            partition: Partition::Test,
        }
    }
}
