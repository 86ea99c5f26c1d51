//! Percentile bootstrap confidence intervals that resample whole groups (lesions, patients),
//! because images of one case are not independent evidence. Deterministic for a seed whatever
//! the thread count; the metric resampled is the caller's.

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
