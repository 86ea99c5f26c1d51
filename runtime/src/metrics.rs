//! What a classifier's scores are measured with, in the trainer's evaluation and at a site's
//! acceptance check (`validate`) alike: ROC AUC and curve, and percentile bootstrap intervals
//! that resample whole groups (lesions, patients), because images of one case are not
//! independent evidence. Deterministic for a seed whatever the thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
    let values: Vec<f64> = (0..resamples)
        .into_par_iter()
        .filter_map(|r| metric(&resample(members, &mut resample_rng(seed, r))))
        .collect();
    Some(percentile_interval(estimate, values))
}

/// 95 % percentile bootstrap interval of a metric's shift between two independent datasets,
/// `metric_b(b) − metric_a(a)` (another site against the model's own test images): each
/// resample draws both datasets' groups with replacement. `None` when either metric is
/// undefined on its data. Deterministic for a seed, whatever the thread count.
pub fn group_bootstrap_shift<FA, FB>(
    (members_a, metric_a): (&[Vec<usize>], FA),
    (members_b, metric_b): (&[Vec<usize>], FB),
    resamples: usize,
    seed: u64,
) -> Option<Interval>
where
    FA: Fn(&[usize]) -> Option<f64> + Sync,
    FB: Fn(&[usize]) -> Option<f64> + Sync,
{
    let all = |members: &[Vec<usize>]| members.iter().flatten().copied().collect::<Vec<_>>();
    let estimate = metric_b(&all(members_b))? - metric_a(&all(members_a))?;
    let values: Vec<f64> = (0..resamples)
        .into_par_iter()
        .filter_map(|r| {
            let mut rng = resample_rng(seed, r);
            let a = resample(members_a, &mut rng);
            let b = resample(members_b, &mut rng);
            Some(metric_b(&b)? - metric_a(&a)?)
        })
        .collect();
    Some(percentile_interval(estimate, values))
}

/// The generator of resample `r`: independent of which thread draws it.
fn resample_rng(seed: u64, r: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// As many groups as there are, drawn with replacement; their members concatenated.
fn resample(members: &[Vec<usize>], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut sample = Vec::new();
    for _ in 0..members.len() {
        sample.extend_from_slice(&members[rng.random_range(0..members.len())]);
    }
    sample
}

/// The 2.5th and 97.5th percentiles of the resampled values around the estimate (a
/// zero-width interval when no resample was defined).
fn percentile_interval(estimate: f64, mut values: Vec<f64>) -> Interval {
    if values.is_empty() {
        return Interval {
            estimate,
            low: estimate,
            high: estimate,
        };
    }
    values.sort_by(f64::total_cmp);
    let at =
        |q: f64| values[((q * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    }
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
    fn a_shift_interval_brackets_the_difference_and_zero_for_the_same_data() {
        let groups: Vec<String> = (0..100).map(|i| format!("g{}", i / 2)).collect();
        let members = group_members(&groups);
        let rate = |correct: fn(usize) -> bool| {
            move |idx: &[usize]| {
                Some(idx.iter().filter(|&&i| correct(i)).count() as f64 / idx.len() as f64)
            }
        };
        let (high, low) = (rate(|i| i % 10 < 8), rate(|i| i % 10 < 5));
        let same = group_bootstrap_shift((&members, high), (&members, high), 400, 2).unwrap();
        assert_eq!(same.estimate, 0.0);
        assert!(same.low < 0.0 && same.high > 0.0, "{same:?}");
        let drop = group_bootstrap_shift((&members, high), (&members, low), 400, 2).unwrap();
        assert!((drop.estimate + 0.3).abs() < 1e-12, "{drop:?}");
        assert!(
            drop.low < -0.3 && drop.high > -0.3 && drop.high < 0.0,
            "{drop:?}"
        );
        assert_eq!(
            drop,
            group_bootstrap_shift((&members, high), (&members, low), 400, 2).unwrap()
        );
        let undefined = |_: &[usize]| None;
        assert_eq!(
            group_bootstrap_shift((&members, high), (&members, undefined), 10, 0),
            None
        );
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
