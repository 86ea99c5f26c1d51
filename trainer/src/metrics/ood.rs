//! Fitting the bundle's out-of-distribution guard ([`OodGuard`], defined with the manifest in
//! the runtime) on in-distribution logits: the score's parameters, then the threshold that
//! rejects a stated share of those images. The score is computed by the runtime's own code, so
//! the threshold holds for what the runtime computes.

use scanside_runtime::bundle::guard::{ood_features, OodGuard, OodScore};
use serde::{Deserialize, Serialize};

/// Which score the guard uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodMethod {
    /// Squared Mahalanobis distance of the logits to the nearest class mean.
    #[default]
    Mahalanobis,
    /// Energy of the logits.
    Energy,
    /// No guard.
    None,
}

impl OodMethod {
    /// Parses `mahalanobis`, `energy` or `none`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "mahalanobis" => Ok(Self::Mahalanobis),
            "energy" => Ok(Self::Energy),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?}: expected mahalanobis, energy or none")),
        }
    }
}

/// In-distribution images' features for fitting: per image, the logits followed by its
/// input's channel statistics ([`ood_features`] with `input_channels`). The energy uses the
/// logits part only.
#[derive(Debug, Clone)]
pub struct OodFeatures {
    /// One row per image.
    pub rows: Vec<Vec<f32>>,
    /// Logits per row (the rest are input statistics).
    pub classes: usize,
    /// Input channels whose statistics follow the logits.
    pub input_channels: usize,
}

impl OodFeatures {
    /// Collects the rows of images given as (logits, `C×H×W` model input).
    pub fn new(classes: usize, input_channels: usize) -> Self {
        Self {
            rows: Vec::new(),
            classes,
            input_channels,
        }
    }

    /// Adds one image.
    pub fn push(&mut self, logits: &[f32], input: &[f32]) {
        self.rows
            .push(ood_features(logits, input, self.input_channels));
    }

    /// The part of a row `score` reads: the logits for the energy, all of it otherwise.
    fn scored<'a>(&self, score: &OodScore, row: &'a [f32]) -> &'a [f32] {
        match score {
            OodScore::Energy => &row[..self.classes],
            OodScore::Mahalanobis { .. } => row,
        }
    }

    /// How many rows `guard` rejects.
    pub fn rejected_by(&self, guard: &OodGuard) -> usize {
        self.rows
            .iter()
            .map(|row| guard.score.of_features(self.scored(&guard.score, row)))
            .filter(|&s| s.is_nan() || s > guard.threshold)
            .count()
    }
}

/// Fits a guard on in-distribution `features` (`labels`: each image's class, for class means —
/// `None` for multi-label models, one mean) so that `false_rejection` of them score above the
/// threshold. `None` for [`OodMethod::None`], fewer than two images, or a singular fit.
pub fn fit_ood_guard(
    method: OodMethod,
    features: &OodFeatures,
    labels: Option<&[usize]>,
    false_rejection: f32,
) -> Option<OodGuard> {
    if features.rows.len() < 2 {
        return None;
    }
    let score = match method {
        OodMethod::None => return None,
        OodMethod::Energy => OodScore::Energy,
        OodMethod::Mahalanobis => {
            let (means, precision) = mahalanobis(&features.rows, labels)?;
            OodScore::Mahalanobis {
                means,
                precision,
                input_channels: features.input_channels,
            }
        }
    };
    let scores: Vec<f32> = features
        .rows
        .iter()
        .map(|row| score.of_features(features.scored(&score, row)))
        .collect();
    Some(OodGuard {
        threshold: upper_quantile(&scores, false_rejection)?,
        score,
        target_false_rejection: false_rejection,
        fitted_on_images: scores.len(),
    })
}

/// The smallest threshold that at most `share` of the finite `scores` exceed (none when no
/// score is finite).
fn upper_quantile(scores: &[f32], share: f32) -> Option<f32> {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let allowed = (f64::from(share) * n as f64).floor() as usize;
    sorted.get(n.checked_sub(allowed + 1)?).copied()
}

/// Class means of the feature rows and the inverse of their pooled within-class covariance
/// (ridge added so that a rank-deficient covariance — softmax logits carry a free offset —
/// still inverts).
#[allow(clippy::type_complexity)]
fn mahalanobis(logits: &[Vec<f32>], labels: Option<&[usize]>) -> Option<(Vec<Vec<f32>>, Vec<f32>)> {
    let k = logits[0].len();
    let group = |i: usize| labels.map_or(0, |l| l[i]);
    let groups = labels.map_or(1, |l| l.iter().max().map_or(1, |m| m + 1));
    let mut sums = vec![vec![0.0_f64; k]; groups];
    let mut counts = vec![0_usize; groups];
    for (i, z) in logits.iter().enumerate() {
        counts[group(i)] += 1;
        for (s, v) in sums[group(i)].iter_mut().zip(z) {
            *s += f64::from(*v);
        }
    }
    let means: Vec<Vec<f64>> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| s.iter().map(|v| v / c.max(1) as f64).collect())
        .collect();
    let mut cov = vec![0.0_f64; k * k];
    for (i, z) in logits.iter().enumerate() {
        let d: Vec<f64> = z
            .iter()
            .zip(&means[group(i)])
            .map(|(v, m)| f64::from(*v) - m)
            .collect();
        for r in 0..k {
            for c in 0..k {
                cov[r * k + c] += d[r] * d[c] / logits.len() as f64;
            }
        }
    }
    let trace: f64 = (0..k).map(|r| cov[r * k + r]).sum();
    let ridge = 1e-3 * trace / k as f64 + 1e-6;
    (0..k).for_each(|r| cov[r * k + r] += ridge);
    let precision = invert_spd(&cov, k)?;
    Some((
        means
            .iter()
            .zip(&counts)
            .filter(|(_, &c)| c > 0)
            .map(|(m, _)| m.iter().map(|&v| v as f32).collect())
            .collect(),
        precision.iter().map(|&v| v as f32).collect(),
    ))
}

/// The inverse of a symmetric positive-definite `k × k` matrix by Gauss–Jordan elimination
/// (k is the class count, at most a few dozen: not worth a linear-algebra dependency).
fn invert_spd(matrix: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut a = matrix.to_vec();
    let mut inv: Vec<f64> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
        .collect();
    for col in 0..k {
        let pivot = a[col * k + col];
        if !(pivot.is_finite() && pivot > 0.0) {
            return None;
        }
        for c in 0..k {
            a[col * k + c] /= pivot;
            inv[col * k + c] /= pivot;
        }
        for row in (0..k).filter(|&r| r != col) {
            let factor = a[row * k + col];
            for c in 0..k {
                a[row * k + c] -= factor * a[col * k + c];
                inv[row * k + c] -= factor * inv[col * k + c];
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes of logits around (3, -3) and (-3, 3) with a little spread, each image's
    /// one-channel input a flat 0.5 plus the same spread.
    fn clusters() -> (OodFeatures, Vec<usize>) {
        let mut features = OodFeatures::new(2, 1);
        let mut labels = Vec::new();
        for i in 0..200 {
            let e = (i * 37 % 100) as f32 / 100.0 - 0.5;
            let f = (i * 61 % 100) as f32 / 100.0 - 0.5;
            let (c, sign) = if i % 2 == 0 { (0, 1.0) } else { (1, -1.0) };
            let input = [0.5 + e * 0.1, 0.5 - e * 0.1, 0.5 + f * 0.1, 0.5];
            features.push(&[sign * 3.0 + e, -sign * 3.0 + f], &input);
            labels.push(c);
        }
        (features, labels)
    }

    #[test]
    fn the_threshold_rejects_the_stated_share_of_the_fitting_images() {
        let (features, labels) = clusters();
        for method in [OodMethod::Mahalanobis, OodMethod::Energy] {
            let guard = fit_ood_guard(method, &features, Some(&labels), 0.05).unwrap();
            let rejected = features.rejected_by(&guard);
            assert!(
                (5..=10).contains(&rejected),
                "{method:?}: {rejected} of 200 rejected"
            );
            assert_eq!(guard.fitted_on_images, 200);
            assert!(guard.validate(2, 1).is_ok());
        }
        assert!(fit_ood_guard(OodMethod::None, &features, None, 0.01).is_none());
    }

    #[test]
    fn mahalanobis_rejects_logits_or_inputs_far_from_every_class() {
        let (features, labels) = clusters();
        let guard = fit_ood_guard(OodMethod::Mahalanobis, &features, Some(&labels), 0.01).unwrap();
        let typical = [0.5, 0.5, 0.5, 0.5];
        assert!(!guard.assess(&[3.0, -3.0], &typical).1);
        assert!(guard.assess(&[0.0, 0.0], &typical).1);
        assert!(guard.assess(&[30.0, -30.0], &typical).1);
        // Confident logits, but an input of another brightness and contrast.
        assert!(guard.assess(&[3.0, -3.0], &[0.0, 1.0, 0.0, 1.0]).1);
    }

    #[test]
    fn the_inverse_times_the_matrix_is_the_identity() {
        let m = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = invert_spd(&m, 3).unwrap();
        for r in 0..3 {
            for c in 0..3 {
                let v: f64 = (0..3).map(|j| m[r * 3 + j] * inv[j * 3 + c]).sum();
                assert!((v - f64::from(u8::from(r == c))).abs() < 1e-12);
            }
        }
        assert!(invert_spd(&[0.0, 0.0, 0.0, 0.0], 2).is_none());
    }
}
