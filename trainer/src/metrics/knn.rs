//! Measures of learned features without training anything on them: weighted k-nearest-
//! neighbour accuracy of queries against a labelled bank, and how spread out embeddings are
//! (collapse detection). Labels only score here, they never reach training.

fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Weighted k-nearest-neighbour predictions of `queries` against a labelled `bank`: cosine
/// similarity, the `k` nearest vote with weight `exp(sim / temperature)` (Wu et al. 2018, the
/// monitor solo-learn uses). Labels never reach training: this only measures the features.
pub fn knn_predict(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    k: usize,
    temperature: f32,
) -> Vec<Option<usize>> {
    let classes = bank_labels.iter().max().map_or(0, |m| m + 1);
    let bank: Vec<Vec<f32>> = bank.iter().map(|b| l2_normalised(b)).collect();
    queries
        .iter()
        .map(|q| {
            let q = l2_normalised(q);
            let mut sims: Vec<(f32, usize)> = bank
                .iter()
                .zip(bank_labels)
                .map(|(b, &l)| (b.iter().zip(&q).map(|(x, y)| x * y).sum::<f32>(), l))
                .collect();
            let k = k.min(sims.len());
            if k == 0 {
                return None;
            }
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0.0_f64; classes];
            for &(sim, l) in &sims[..k] {
                votes[l] += f64::from(sim / temperature).exp();
            }
            Some(argmax_f64(&votes))
        })
        .collect()
}

/// Top-1 accuracy of [`knn_predict`].
pub fn knn_accuracy(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    query_labels: &[usize],
    k: usize,
    temperature: f32,
) -> f64 {
    let (accuracy, _) = knn_scores(bank, bank_labels, queries, query_labels, k, temperature);
    accuracy
}

/// Top-1 accuracy and balanced accuracy (mean per-class recall, over classes present among the
/// queries) of [`knn_predict`]: with 67 % of HAM10000 in one class, the second is the telling one.
pub fn knn_scores(
    bank: &[Vec<f32>],
    bank_labels: &[usize],
    queries: &[Vec<f32>],
    query_labels: &[usize],
    k: usize,
    temperature: f32,
) -> (f64, f64) {
    let predicted = knn_predict(bank, bank_labels, queries, k, temperature);
    let classes = query_labels.iter().max().map_or(0, |m| m + 1);
    let (mut hit, mut seen) = (vec![0_usize; classes], vec![0_usize; classes]);
    for (p, &y) in predicted.iter().zip(query_labels) {
        seen[y] += 1;
        hit[y] += usize::from(*p == Some(y));
    }
    let accuracy = hit.iter().sum::<usize>() as f64 / query_labels.len().max(1) as f64;
    let recalls: Vec<f64> = hit
        .iter()
        .zip(&seen)
        .filter(|(_, &n)| n > 0)
        .map(|(&h, &n)| h as f64 / n as f64)
        .collect();
    let balanced = recalls.iter().sum::<f64>() / recalls.len().max(1) as f64;
    (accuracy, balanced)
}

fn argmax_f64(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// How spread out L2-normalised embeddings are: the mean per-dimension standard deviation times
/// `√dim` — about 1 for embeddings spread over the sphere, → 0 when they collapse to a point.
pub fn embedding_spread(features: &[Vec<f32>]) -> f64 {
    let Some(dim) = features.first().map(Vec::len) else {
        return 0.0;
    };
    let normalised: Vec<Vec<f32>> = features.iter().map(|f| l2_normalised(f)).collect();
    let n = normalised.len() as f64;
    let mean_std = (0..dim)
        .map(|d| {
            let mean = normalised.iter().map(|f| f64::from(f[d])).sum::<f64>() / n;
            let var = normalised
                .iter()
                .map(|f| (f64::from(f[d]) - mean).powi(2))
                .sum::<f64>()
                / n;
            var.sqrt()
        })
        .sum::<f64>()
        / dim as f64;
    mean_std * (dim as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_finds_the_class_of_nearby_points() {
        let bank = vec![
            vec![1.0, 0.1],
            vec![0.9, 0.0],
            vec![0.0, 1.0],
            vec![0.1, 0.8],
        ];
        let labels = [0, 0, 1, 1];
        let queries = vec![vec![1.0, 0.05], vec![0.05, 1.0], vec![1.0, 0.0]];
        let acc = knn_accuracy(&bank, &labels, &queries, &[0, 1, 1], 2, 0.07);
        assert!((acc - 2.0 / 3.0).abs() < 1e-9, "{acc}");
        let (_, balanced) = knn_scores(&bank, &labels, &queries, &[0, 1, 1], 2, 0.07);
        assert!(
            (balanced - 0.75).abs() < 1e-9,
            "recall 1 for class 0, 1/2 for class 1"
        );
    }

    #[test]
    fn spread_is_near_one_for_spread_embeddings_and_zero_for_collapsed_ones() {
        let spread: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let a = i as f32 * 0.7;
                vec![a.cos(), a.sin(), (a * 1.3).cos(), (a * 1.3).sin()]
            })
            .collect();
        let s = embedding_spread(&spread);
        assert!(s > 0.8 && s < 1.2, "{s}");
        let collapsed = vec![vec![0.3, 0.4, 0.5, 0.1]; 100];
        assert!(embedding_spread(&collapsed) < 1e-6);
    }
}
