//! Metrics of a multi-class classifier from its per-image class probabilities: top-1, top-k
//! and balanced accuracy, the confusion matrix, and one-vs-rest ROC AUC and curves. Pure
//! functions of numbers: nothing here runs a model or reads files.

use serde::{Deserialize, Serialize};

/// Metrics of a multi-class classifier on a set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Number of images.
    pub n: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Mean of the per-class AUCs that are defined.
    pub macro_auc: Option<f64>,
    /// One-vs-rest AUC per class (`None` when the class has no positives or no negatives).
    pub per_class_auc: Vec<Option<f64>>,
    /// Images per true class.
    pub class_counts: Vec<usize>,
    /// Fraction with the true class among the three most probable.
    #[serde(default)]
    pub top3_accuracy: f64,
    /// Mean per-class recall.
    #[serde(default)]
    pub balanced_accuracy: f64,
    /// Counts `[true class][predicted class]`.
    #[serde(default)]
    pub confusion: Vec<Vec<usize>>,
}

impl ClassificationMetrics {
    /// Computes the metrics from per-image class probabilities.
    pub fn compute(probabilities: &[Vec<f32>], labels: &[usize], classes: usize) -> Self {
        let n = labels.len();
        let correct = probabilities
            .iter()
            .zip(labels)
            .filter(|(p, &y)| argmax(p) == y)
            .count();
        let per_class_auc: Vec<Option<f64>> = (0..classes)
            .map(|c| {
                let scores: Vec<f32> = probabilities.iter().map(|p| p[c]).collect();
                let positives: Vec<bool> = labels.iter().map(|&y| y == c).collect();
                roc_auc(&scores, &positives)
            })
            .collect();
        let defined: Vec<f64> = per_class_auc.iter().flatten().copied().collect();
        let mut class_counts = vec![0; classes];
        labels.iter().for_each(|&y| class_counts[y] += 1);
        let predicted = predictions(probabilities);
        Self {
            n,
            accuracy: correct as f64 / n.max(1) as f64,
            macro_auc: (!defined.is_empty())
                .then(|| defined.iter().sum::<f64>() / defined.len() as f64),
            per_class_auc,
            class_counts,
            top3_accuracy: top_k_accuracy(probabilities, labels, 3),
            balanced_accuracy: balanced_accuracy(&predicted, labels, classes),
            confusion: confusion_matrix(&predicted, labels, classes),
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// ROC AUC by the Mann–Whitney statistic with average ranks for ties; `None` when either class
/// is absent.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

/// ROC curve points `(false-positive rate, sensitivity)` from the highest threshold down, one
/// per distinct score, thinned to at most `max_points` (the ends kept); empty when either
/// class is absent.
pub fn roc_curve(scores: &[f32], positive: &[bool], max_points: usize) -> Vec<(f64, f64)> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for (rank, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order.get(rank + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
        }
    }
    if points.len() > max_points.max(2) {
        let stride = points.len().div_ceil(max_points.max(2) - 1);
        let last = *points.last().expect("non-empty");
        points = points.into_iter().step_by(stride).collect();
        if points.last() != Some(&last) {
            points.push(last);
        }
    }
    points
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_curve_steps_through_ties_and_thins_to_its_budget() {
        let y = [true, false, true, false];
        let curve = roc_curve(&[0.9, 0.5, 0.5, 0.1], &y, 100);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        let scores: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let alternating: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let thin = roc_curve(&scores, &alternating, 50);
        assert!(thin.len() <= 51, "{}", thin.len());
        assert_eq!(thin.last(), Some(&(1.0, 1.0)));
        assert!(roc_curve(&[0.1], &[true], 10).is_empty());
    }

    #[test]
    fn auc_of_perfect_random_and_tied_scores() {
        let y = [true, true, false, false];
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &y), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &y), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &y), Some(0.5));
        assert_eq!(roc_auc(&[0.9, 0.4, 0.6, 0.1], &y), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn metrics_skip_undefined_classes_in_the_macro_mean() {
        let probs = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.2, 0.8, 0.0],
            vec![0.6, 0.4, 0.0],
        ];
        let m = ClassificationMetrics::compute(&probs, &[0, 1, 1], 3);
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.per_class_auc[2], None);
        assert_eq!(m.macro_auc, Some(1.0));
        assert_eq!(m.class_counts, vec![1, 2, 0]);
    }

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
}
