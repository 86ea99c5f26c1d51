//! Multi-label targets and metrics: the per-image targets and mask (uncertain findings left
//! out under U-Ignore) and the per-finding AUCs with their mean over findings that have enough
//! positives. Pure functions of labels and scores: nothing here runs a model.

use serde::{Deserialize, Serialize};

use super::roc_auc;
use crate::data::{finding_targets, ImageSet, Target, UncertaintyPolicy};

/// Training labels in the form the loss takes.
pub enum Labels {
    /// Class index per image.
    Classes(Vec<usize>),
    /// `N×K` 0/1 targets and a mask (0: uncertain under U-Ignore, left out of the loss).
    Findings {
        /// Targets.
        targets: Vec<f32>,
        /// Mask.
        mask: Vec<f32>,
    },
}

impl Labels {
    /// The labels of a set of images under an uncertainty policy.
    pub fn of(images: &ImageSet, policy: UncertaintyPolicy) -> Self {
        match images.class_labels() {
            Some(classes) => Labels::Classes(classes),
            None => {
                let (mut targets, mut mask) = (Vec::new(), Vec::new());
                for t in &images.targets {
                    if let Target::Findings(findings) = t {
                        let (t, m) = finding_targets(findings, policy);
                        targets.extend(t);
                        mask.extend(m);
                    }
                }
                Labels::Findings { targets, mask }
            }
        }
    }
}

/// Findings need at least this many positives (and one negative) in the evaluated images to
/// enter the mean AUC: an AUC from one or two positives is noise.
pub const MIN_POSITIVES_FOR_MEAN_AUC: usize = 5;

/// Metrics of a multi-label classifier (one sigmoid per finding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelMetrics {
    /// Number of images.
    pub n: usize,
    /// Finding names.
    pub findings: Vec<String>,
    /// AUC per finding over the images where its label counts (not masked as uncertain).
    pub per_finding_auc: Vec<Option<f64>>,
    /// Positives per finding.
    pub positives: Vec<usize>,
    /// Mean AUC over the findings named in `mean_over`.
    pub mean_auc: Option<f64>,
    /// The findings with at least `min_positives` positives and a negative.
    pub mean_over: Vec<String>,
    /// The rule for `mean_over`.
    pub min_positives: usize,
}

impl MultiLabelMetrics {
    /// From per-image probabilities and `N×K` targets and masks (0 = ignore).
    pub fn compute(
        probabilities: &[Vec<f32>],
        targets: &[f32],
        mask: &[f32],
        findings: &[String],
        min_positives: usize,
    ) -> Self {
        let k = findings.len();
        let mut per_finding_auc = Vec::with_capacity(k);
        let mut positives = Vec::with_capacity(k);
        let mut mean_over = Vec::new();
        let mut included = Vec::new();
        for (f, name) in findings.iter().enumerate() {
            let (mut scores, mut positive) = (Vec::new(), Vec::new());
            for (i, p) in probabilities.iter().enumerate() {
                if mask[i * k + f] > 0.0 {
                    scores.push(p[f]);
                    positive.push(targets[i * k + f] > 0.5);
                }
            }
            let pos = positive.iter().filter(|&&p| p).count();
            let auc = roc_auc(&scores, &positive);
            if let (Some(a), true) = (auc, pos >= min_positives) {
                mean_over.push(name.clone());
                included.push(a);
            }
            per_finding_auc.push(auc);
            positives.push(pos);
        }
        Self {
            n: probabilities.len(),
            findings: findings.to_vec(),
            per_finding_auc,
            positives,
            mean_auc: (!included.is_empty())
                .then(|| included.iter().sum::<f64>() / included.len() as f64),
            mean_over,
            min_positives,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_label_auc_skips_masked_labels_and_rare_findings_in_the_mean() {
        let findings: Vec<String> = ["effusion", "mass"].map(String::from).to_vec();
        // Effusion: 6 labelled positives ranked above 4 negatives, one uncertain (masked)
        // image scored low that would otherwise spoil it. Mass: 1 positive only.
        let mut probs = Vec::new();
        let (mut targets, mut mask) = (Vec::new(), Vec::new());
        for i in 0..11 {
            let effusion = i < 6;
            let uncertain = i == 10;
            probs.push(vec![
                if effusion { 0.9 } else { 0.1 + i as f32 * 0.01 },
                0.5,
            ]);
            targets.extend([f32::from(effusion || uncertain), f32::from(i == 0)]);
            mask.extend([if uncertain { 0.0 } else { 1.0 }, 1.0]);
        }
        probs[10][0] = 0.0;
        let m = MultiLabelMetrics::compute(&probs, &targets, &mask, &findings, 5);
        assert_eq!(m.per_finding_auc[0], Some(1.0));
        assert_eq!(m.positives, vec![6, 1]);
        assert_eq!(m.mean_over, vec!["effusion".to_string()]);
        assert_eq!(m.mean_auc, Some(1.0));
    }
}
