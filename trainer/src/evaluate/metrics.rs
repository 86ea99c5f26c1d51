//! Classification metrics beyond accuracy and AUC: top-k, balanced accuracy, the confusion
//! matrix, and percentile bootstrap confidence intervals that resample whole groups (lesions,
//! patients), because images of one case are not independent evidence.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::argmax;

/// Fraction of images whose true class is among the `k` most probable.
pub fn top_k_accuracy(probabilities: &[Vec<f32>], labels: &[usize], k: usize) -> f64 {
    let hits = probabilities
        .iter()
        .zip(labels)
        .filter(|(p, &y)| p.iter().filter(|&&q| q > p[y]).count() < k)
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Mean per-class recall over the classes present among the labels.
pub fn balanced_accuracy(predicted: &[usize], labels: &[usize], classes: usize) -> f64 {
    let confusion = confusion_matrix(predicted, labels, classes);
    let recalls: Vec<f64> = confusion
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    recalls.iter().sum::<f64>() / recalls.len().max(1) as f64
}

/// Counts `[true class][predicted class]`.
pub fn confusion_matrix(predicted: &[usize], labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&p, &y) in predicted.iter().zip(labels) {
        m[y][p] += 1;
    }
    m
}

/// Most probable class of each image.
pub fn predictions(probabilities: &[Vec<f32>]) -> Vec<usize> {
    probabilities.iter().map(|p| argmax(p)).collect()
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
            let auc = super::roc_auc(&scores, &positive);
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

/// A point estimate with a 95 % percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The metric on the data as it is.
    pub estimate: f64,
    /// 2.5th percentile of the resampled metric.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// Group ids as dense indices, and the members of each group.
pub fn group_members(groups: &[String]) -> Vec<Vec<usize>> {
    let mut index = std::collections::HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let k = *index.entry(g.as_str()).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[k].push(i);
    }
    members
}

/// 95 % percentile bootstrap interval of `metric` (computed on a list of image indices, with
/// repeats), resampling whole groups with replacement `resamples` times. Resamples where the
/// metric is undefined (e.g. an AUC without positives) are left out; `None` when the metric is
/// undefined on the data itself. Deterministic for a seed, whatever the thread count.
pub fn group_bootstrap<F>(
    members: &[Vec<usize>],
    resamples: usize,
    seed: u64,
    metric: F,
) -> Option<Interval>
where
    F: Fn(&[usize]) -> Option<f64> + Sync,
{
    let all: Vec<usize> = members.iter().flatten().copied().collect();
    let estimate = metric(&all)?;
    let mut values: Vec<f64> = (0..resamples)
        .into_par_iter()
        .filter_map(|r| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut sample = Vec::with_capacity(all.len());
            for _ in 0..members.len() {
                sample.extend_from_slice(&members[rng.random_range(0..members.len())]);
            }
            metric(&sample)
        })
        .collect();
    if values.is_empty() {
        return Some(Interval {
            estimate,
            low: estimate,
            high: estimate,
        });
    }
    values.sort_by(f64::total_cmp);
    let at =
        |q: f64| values[((q * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    Some(Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_the_true_class_among_the_k_most_probable() {
        let probs = vec![
            vec![0.5, 0.3, 0.2],
            vec![0.5, 0.3, 0.2],
            vec![0.5, 0.3, 0.2],
        ];
        let labels = [0, 1, 2];
        assert!((top_k_accuracy(&probs, &labels, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&probs, &labels, 2) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(top_k_accuracy(&probs, &labels, 3), 1.0);
    }

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

    #[test]
    fn balanced_accuracy_weights_classes_not_images() {
        // 8 images of class 0 all right, 2 of class 1 all wrong: accuracy 0.8, balanced 0.5.
        let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let predicted = [0; 10];
        assert_eq!(balanced_accuracy(&predicted, &labels, 3), 0.5);
        let m = confusion_matrix(&predicted, &labels, 3);
        assert_eq!(m[0], vec![8, 0, 0]);
        assert_eq!(m[1], vec![2, 0, 0]);
        assert_eq!(m[2], vec![0, 0, 0]);
    }

    #[test]
    fn group_bootstrap_is_deterministic_and_brackets_the_estimate() {
        // 60 groups of 1-3 images, 70 % correct.
        let groups: Vec<String> = (0..120).map(|i| format!("g{}", i / 2 + i % 3)).collect();
        let correct: Vec<bool> = (0..120).map(|i| i % 10 < 7).collect();
        let members = group_members(&groups);
        let accuracy = |idx: &[usize]| {
            Some(idx.iter().filter(|&&i| correct[i]).count() as f64 / idx.len() as f64)
        };
        let a = group_bootstrap(&members, 400, 3, accuracy).unwrap();
        let b = group_bootstrap(&members, 400, 3, accuracy).unwrap();
        assert_eq!(a, b);
        assert!((a.estimate - 0.7).abs() < 1e-12);
        assert!(a.low < 0.7 && a.high > 0.7, "{a:?}");
        assert!(a.high - a.low < 0.3, "{a:?}");
        // Undefined on the data: no interval.
        assert_eq!(group_bootstrap(&members, 10, 0, |_| None), None);
    }

    #[test]
    fn resampling_groups_widens_the_interval_when_images_of_a_case_agree() {
        // 20 cases of 10 identical-outcome images each: the evidence is 20 cases, not 200
        // images, and the interval must say so.
        let groups: Vec<String> = (0..200).map(|i| format!("case{}", i / 10)).collect();
        let correct: Vec<bool> = (0..200).map(|i| (i / 10) % 2 == 0).collect();
        let accuracy = |idx: &[usize]| {
            Some(idx.iter().filter(|&&i| correct[i]).count() as f64 / idx.len() as f64)
        };
        let by_case = group_bootstrap(&group_members(&groups), 1000, 1, accuracy).unwrap();
        let singletons: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let by_image = group_bootstrap(&group_members(&singletons), 1000, 1, accuracy).unwrap();
        let width = |i: Interval| i.high - i.low;
        assert!(
            width(by_case) > 2.0 * width(by_image),
            "{by_case:?} vs {by_image:?}"
        );
    }
}
