//! Metrics of a multi-class classifier from its per-image class probabilities: top-1, top-k
//! and balanced accuracy, the confusion matrix, and one-vs-rest ROC AUC (the AUC itself is the
//! runtime's, [`super::roc_auc`]). Pure functions of numbers: nothing here runs a model or
//! reads files.

use serde::{Deserialize, Serialize};

use super::roc_auc;

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
