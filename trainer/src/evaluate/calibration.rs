//! Calibration and operating points: temperature scaling fitted on validation logits (Guo et
//! al. 2017; the reliability diagram and ECE that show its effect are in [`crate::metrics`]),
//! and per-class thresholds that reach a target sensitivity on validation, reported with the
//! specificity they give.

use serde::{Deserialize, Serialize};

/// Softmax of `logits / temperature`, in f64.
pub fn softmax_with_temperature(logits: &[f32], temperature: f64) -> Vec<f32> {
    let scaled: Vec<f64> = logits.iter().map(|&z| f64::from(z) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scaled.iter().map(|z| (z - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// Mean negative log-likelihood of the labels under `softmax(logits / temperature)`.
pub fn negative_log_likelihood(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let scaled: Vec<f64> = z.iter().map(|&v| f64::from(v) / temperature).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            log_sum - scaled[y]
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// The temperature in [0.05, 20] that minimises the validation NLL (golden-section search on
/// its logarithm; the NLL is unimodal in it).
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f64 {
    let nll = |log_t: f64| negative_log_likelihood(logits, labels, log_t.exp());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = nll(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = nll(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// The highest threshold at which at least `target` of the positives score at or above it;
/// `None` without positives.
pub fn threshold_for_sensitivity(scores: &[f32], positive: &[bool], target: f64) -> Option<f32> {
    let mut pos: Vec<f32> = scores
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(&s, _)| s)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let needed = ((target * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    Some(pos[needed - 1])
}

/// Sensitivity and specificity of flagging `score ≥ threshold` (each `None` when undefined).
pub fn sensitivity_specificity(
    scores: &[f32],
    positive: &[bool],
    threshold: f32,
) -> (Option<f64>, Option<f64>) {
    let (mut tp, mut p, mut tn, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &is_pos) in scores.iter().zip(positive) {
        if is_pos {
            p += 1;
            tp += usize::from(s >= threshold);
        } else {
            n += 1;
            tn += usize::from(s < threshold);
        }
    }
    (
        (p > 0).then(|| tp as f64 / p as f64),
        (n > 0).then(|| tn as f64 / n as f64),
    )
}

/// A class's screening threshold, chosen on validation for a target sensitivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// Class name.
    pub class: String,
    /// Calibrated probability at or above which the class is flagged.
    pub threshold: Option<f32>,
    /// Sensitivity reached on validation.
    pub val_sensitivity: Option<f64>,
    /// Specificity on validation.
    pub val_specificity: Option<f64>,
    /// Sensitivity on the evaluated partition.
    pub sensitivity: Option<f64>,
    /// Specificity on the evaluated partition.
    pub specificity: Option<f64>,
}

/// A class's operating point: the threshold reaching `target` sensitivity on the validation
/// scores, and the sensitivity and specificity it gives there and on the evaluated scores.
pub fn operating_point(
    class: &str,
    (val_scores, val_positive): (&[f32], &[bool]),
    (scores, positive): (&[f32], &[bool]),
    target: f64,
) -> OperatingPoint {
    let threshold = threshold_for_sensitivity(val_scores, val_positive, target);
    let at = |scores: &[f32], positive: &[bool]| {
        threshold.map_or((None, None), |t| {
            sensitivity_specificity(scores, positive, t)
        })
    };
    let (val_sensitivity, val_specificity) = at(val_scores, val_positive);
    let (sensitivity, specificity) = at(scores, positive);
    OperatingPoint {
        class: class.to_string(),
        threshold,
        val_sensitivity,
        val_specificity,
        sensitivity,
        specificity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_scaling_recovers_the_temperature_that_made_logits_overconfident() {
        // Labels drawn from softmax(z); the model reports 3·z, so T ≈ 3 is right.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        let mut state = 12345u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..4000 {
            let z: Vec<f32> = (0..4).map(|_| (uniform() * 4.0 - 2.0) as f32).collect();
            let p = softmax_with_temperature(&z, 1.0);
            let u = uniform() as f32;
            let mut acc = 0.0;
            let y = p.iter().position(|&q| {
                acc += q;
                u < acc
            });
            labels.push(y.unwrap_or(3));
            logits.push(z.iter().map(|v| v * 3.0).collect::<Vec<f32>>());
        }
        let t = fit_temperature(&logits, &labels);
        assert!((t - 3.0).abs() < 0.3, "fitted {t}");
        let before: Vec<Vec<f32>> = logits
            .iter()
            .map(|z| softmax_with_temperature(z, 1.0))
            .collect();
        let after: Vec<Vec<f32>> = logits
            .iter()
            .map(|z| softmax_with_temperature(z, t))
            .collect();
        let (_, ece_before) = crate::metrics::reliability(&before, &labels, 15);
        let (diagram, ece_after) = crate::metrics::reliability(&after, &labels, 15);
        assert!(ece_after < ece_before / 2.0, "{ece_before} -> {ece_after}");
        assert_eq!(diagram.iter().map(|b| b.count).sum::<usize>(), 4000);
    }

    #[test]
    fn the_threshold_reaches_the_target_sensitivity_and_no_more_than_needed() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];
        let positive = [
            true, false, true, false, true, false, true, false, false, true,
        ];
        // Five positives: 80 % needs four of them, the fourth-highest positive scores 0.3.
        let t = threshold_for_sensitivity(&scores, &positive, 0.8).unwrap();
        assert_eq!(t, 0.3);
        let (sens, spec) = sensitivity_specificity(&scores, &positive, t);
        assert_eq!(sens, Some(0.8));
        assert_eq!(spec, Some(0.4), "negatives 0.2 and 0.1 of five fall below");
        assert_eq!(threshold_for_sensitivity(&scores, &[false; 10], 0.9), None);
        assert_eq!(
            threshold_for_sensitivity(&scores, &positive, 1.0),
            Some(0.05)
        );
    }
}
