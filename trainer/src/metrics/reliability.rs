//! Calibration of class probabilities: the reliability diagram (top-label confidence against
//! accuracy, in equal-width bins) and the expected calibration error. It measures; fitting a
//! temperature is the evaluation's.

use serde::{Deserialize, Serialize};

use super::argmax;

/// One bin of a reliability diagram (top-label confidence).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge of the confidence bin.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Images whose top-label confidence falls in the bin.
    pub count: usize,
    /// Their mean confidence.
    pub confidence: f64,
    /// Their accuracy.
    pub accuracy: f64,
}

/// Reliability diagram with `bins` equal-width bins and the expected calibration error
/// (Σ count/N · |accuracy − confidence|).
pub fn reliability(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    bins: usize,
) -> (Vec<ReliabilityBin>, f64) {
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (p, &y) in probabilities.iter().zip(labels) {
        let top = argmax(p);
        let confidence = f64::from(p[top]);
        let b = ((confidence * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += confidence;
        sums[b].2 += usize::from(top == y);
    }
    let n = labels.len().max(1) as f64;
    let mut ece = 0.0;
    let diagram = sums
        .iter()
        .enumerate()
        .map(|(b, &(count, conf_sum, correct))| {
            let (confidence, accuracy) = if count > 0 {
                (conf_sum / count as f64, correct as f64 / count as f64)
            } else {
                (0.0, 0.0)
            };
            ece += count as f64 / n * (accuracy - confidence).abs();
            ReliabilityBin {
                from: b as f64 / bins as f64,
                to: (b + 1) as f64 / bins as f64,
                count,
                confidence,
                accuracy,
            }
        })
        .collect();
    (diagram, ece)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfectly_calibrated_bin_has_no_error() {
        let probs = vec![vec![0.75, 0.25]; 4];
        let (_, ece) = reliability(&probs, &[0, 0, 0, 1], 10);
        assert!(ece.abs() < 1e-6, "{ece}");
    }
}
