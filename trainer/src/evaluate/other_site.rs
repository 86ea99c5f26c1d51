//! Evaluation on a labelled dataset the model was not split from — another site's images, in
//! any supported layout — which a site does before it trusts a model: every image scored, the
//! metrics with intervals resampled by that dataset's own groups, the temperature and operating
//! points carried over unchanged from the run's validation partition (a site receives a model
//! with its thresholds; it does not refit them on the data it is checking), and the shift from
//! the run's own test partition with a 95 % interval for each headline metric.

use std::collections::HashSet;
use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::multi_class::{build_report, scored_set, EvalReport, EvaluatedSet, Scored, ScoredSet};
use super::Scorer;
use crate::config::{EvalSettings, FinetuneConfig};
use crate::data::{
    load_images_with, open_split, report_skipped, DatasetIndex, Partition, SourceSpec, Task,
};
use crate::metrics::{group_bootstrap_shift, group_members, predict_logits, Interval};
use crate::run_dir::load_finetuned;
use crate::runlog::save_json;
use crate::{Error, Result};

/// The evaluation of a run on another dataset, as written to `eval-data-<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherSiteReport {
    /// The dataset evaluated.
    pub data: SourceSpec,
    /// Images of it that were scored.
    pub images: usize,
    /// Its images each class of the model has (in the model's class order).
    pub class_counts: Vec<usize>,
    /// Its groups (lesions, patients) that share an id with a group the run was trained on:
    /// not independent of training when above zero.
    pub groups_shared_with_training: usize,
    /// Its images that share an id with a training image.
    pub images_shared_with_training: usize,
    /// The metrics on it; temperature and thresholds fitted on the run's own validation.
    pub other: EvalReport,
    /// The run's own test partition, scored in the same call.
    pub own_test: EvalReport,
    /// Other dataset minus own test.
    pub shift: Shift,
}

/// What changes from the run's own test partition to the other dataset (other − own): each
/// headline metric's difference with a 95 % bootstrap interval that resamples both datasets'
/// groups independently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    /// Top-1 accuracy.
    pub accuracy: Option<Interval>,
    /// Balanced accuracy.
    pub balanced_accuracy: Option<Interval>,
    /// Macro one-vs-rest AUC (over the classes present in each dataset).
    pub macro_auc: Option<Interval>,
    /// Per-class AUC differences (`None` where a class is absent from either).
    pub per_class_auc: Vec<Option<f64>>,
    /// Expected calibration error after temperature scaling.
    pub ece_after: Option<f64>,
}

impl OtherSiteReport {
    /// The other dataset's table, then the shift from the run's own test partition.
    pub fn table(&self) -> String {
        let mut s = self.other.table();
        s += &format!(
            "shift from the run's own test partition ({} images), other - own, 95 % intervals:\n",
            self.own_test.metrics.n
        );
        let line = |name: &str, own: f64, other: f64, shift: Option<Interval>| {
            let interval = shift.map_or(String::new(), |i| {
                format!(" [{:+.3}, {:+.3}]", i.low, i.high)
            });
            format!(
                "  {name:<18} own {own:.3}  other {other:.3}  shift {:+.3}{interval}\n",
                other - own
            )
        };
        let (own, other) = (&self.own_test.metrics, &self.other.metrics);
        s += &line("top-1", own.accuracy, other.accuracy, self.shift.accuracy);
        s += &line(
            "balanced accuracy",
            own.balanced_accuracy,
            other.balanced_accuracy,
            self.shift.balanced_accuracy,
        );
        if let (Some(a), Some(b)) = (own.macro_auc, other.macro_auc) {
            s += &line("macro AUC", a, b, self.shift.macro_auc);
        }
        if self.groups_shared_with_training > 0 || self.images_shared_with_training > 0 {
            s += &format!(
                "warning: {} groups and {} images share ids with the run's training data\n",
                self.groups_shared_with_training, self.images_shared_with_training
            );
        }
        s
    }
}

/// Evaluates a fine-tuned multi-class run on `data` (every image, or `settings.population` of
/// them), compares with the run's own test partition and writes `eval-data-<name>.json`.
pub fn evaluate_other_site<B: Backend>(
    run: &Path,
    data: &SourceSpec,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<OtherSiteReport> {
    let (config, model) = load_finetuned::<B>(run, device)?;
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let other_index = data.open()?;
    check_other(&index, &other_index, &config)?;
    let own_settings = EvalSettings {
        population: None,
        partition: Partition::Test,
        ..settings.clone()
    };
    let scorer = Scorer {
        index: &index,
        split: &split,
        config: &config,
        settings: &own_settings,
        model: &model,
        device,
    };
    let val = scored_set(&scorer, Partition::Val)?;
    let own = scored_set(&scorer, Partition::Test)?;
    let which = other_images(&other_index, settings)?;
    let other = score_other(&other_index, &which, &config, |images| {
        let preprocess = config
            .preprocess
            .as_ref()
            .expect("checked by load_finetuned");
        predict_logits(&model, images, preprocess, device)
    })?;
    let own_test = build_report(
        run,
        &config,
        EvaluatedSet::partition(&own, Partition::Test, &index.grouped_by),
        &val,
        &own_settings,
    );
    let other_report = build_report(
        run,
        &config,
        EvaluatedSet::other(&other, data.path(), &other_index.grouped_by),
        &val,
        settings,
    );
    let training = training_ids(&index, &split);
    let report = OtherSiteReport {
        data: data.clone(),
        images: other.labels.len(),
        class_counts: class_counts(&other.labels, config.class_names.len()),
        groups_shared_with_training: shared(&other.groups, &training.0),
        images_shared_with_training: shared(&other.ids, &training.1),
        shift: shift(&own_test, &other_report, (&own, &other), settings),
        other: other_report,
        own_test,
    };
    if report.groups_shared_with_training > 0 {
        eprintln!(
            "scanside-train: warning: {} of {}'s groups share an id with the run's training \
             groups: it may not be independent of training",
            report.groups_shared_with_training,
            data.path().display()
        );
    }
    save_json(&run.join(other_file_name(data, settings)), &report)?;
    Ok(report)
}

/// Refuses data the model cannot be scored on: the dataset it was split from (that is
/// `--partition`'s job), another task, or images of a class the model does not know.
fn check_other(own: &DatasetIndex, other: &DatasetIndex, config: &FinetuneConfig) -> Result<()> {
    let bad = |reason: String| Error::Data {
        path: other.root().to_path_buf(),
        reason,
    };
    if own.content_sha256 == other.content_sha256 {
        return Err(bad(
            "this is the dataset the run was split from; evaluate its held-out images with \
             --partition test instead"
                .into(),
        ));
    }
    if own.task != Task::MultiClass || other.task != Task::MultiClass {
        return Err(bad(
            "evaluation on another dataset needs a multi-class run and multi-class labels \
             (multi-label runs: evaluate --partition with --where for sub-populations)"
                .into(),
        ));
    }
    let unknown: Vec<&String> = other
        .class_names
        .iter()
        .filter(|name| !config.class_names.contains(name))
        .collect();
    if !unknown.is_empty() {
        return Err(bad(format!(
            "classes the model does not know: {} (the model's classes: {}); rename them or \
             leave their images out with --where",
            join(&unknown),
            join(&config.class_names.iter().collect::<Vec<_>>())
        )));
    }
    Ok(())
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every image of the other dataset, or its requested sub-population.
fn other_images(other: &DatasetIndex, settings: &EvalSettings) -> Result<Vec<usize>> {
    let all: Vec<usize> = (0..other.samples.len()).collect();
    let chosen = match &settings.population {
        Some(filter) => filter.apply(other, &all)?,
        None => all,
    };
    if chosen.is_empty() {
        return Err(Error::Data {
            path: other.root().to_path_buf(),
            reason: "no images in the requested sub-population".into(),
        });
    }
    Ok(chosen)
}

/// The other dataset's images scored, their labels renumbered in the model's class order.
fn score_other(
    other: &DatasetIndex,
    which: &[usize],
    config: &FinetuneConfig,
    logits_of: impl FnOnce(&crate::data::ImageSet) -> Vec<Vec<f32>>,
) -> Result<ScoredSet> {
    let preprocess = config
        .preprocess
        .as_ref()
        .expect("checked by load_finetuned");
    let images = load_images_with(other, which, preprocess, config.skip_bad)?;
    report_skipped(&images);
    let to_model: Vec<usize> = other
        .class_names
        .iter()
        .map(|name| {
            config
                .class_names
                .iter()
                .position(|c| c == name)
                .expect("checked by check_other")
        })
        .collect();
    let labels = images
        .class_labels()
        .expect("checked by check_other")
        .into_iter()
        .map(|c| to_model[c])
        .collect();
    let logits = logits_of(&images);
    Ok(ScoredSet {
        groups: images.groups,
        ids: images.ids,
        labels,
        logits,
    })
}

/// The group ids and the sample ids of the run's training partition.
fn training_ids(
    index: &DatasetIndex,
    split: &crate::data::SplitFile,
) -> (HashSet<String>, HashSet<String>) {
    let train = split.indices(index, Partition::Train);
    let samples = || train.iter().map(|&i| &index.samples[i]);
    (
        samples().map(|s| s.group.clone()).collect(),
        samples().map(|s| s.id.clone()).collect(),
    )
}

/// How many distinct values of `ids` are in `known`.
fn shared(ids: &[String], known: &HashSet<String>) -> usize {
    let distinct: HashSet<&String> = ids.iter().collect();
    distinct
        .into_iter()
        .filter(|id| known.contains(*id))
        .count()
}

fn class_counts(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &y in labels {
        counts[y] += 1;
    }
    counts
}

/// The headline metrics' differences (other − own) with independent group-bootstrap intervals.
fn shift(
    own_report: &EvalReport,
    other_report: &EvalReport,
    (own, other): (&ScoredSet, &ScoredSet),
    settings: &EvalSettings,
) -> Shift {
    let classes = own_report.class_names.len();
    let own_scored = Scored::new(own, classes);
    let other_scored = Scored::new(other, classes);
    let members = (group_members(&own.groups), group_members(&other.groups));
    type Metric<'m> = &'m (dyn Fn(&[usize]) -> Option<f64> + Sync);
    let interval = |own_metric: Metric, other_metric: Metric| {
        group_bootstrap_shift(
            (&members.0, own_metric),
            (&members.1, other_metric),
            settings.bootstrap,
            settings.seed,
        )
    };
    let difference = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Shift {
        accuracy: interval(&|i| own_scored.accuracy(i), &|i| other_scored.accuracy(i)),
        balanced_accuracy: interval(&|i| own_scored.balanced_accuracy(i), &|i| {
            other_scored.balanced_accuracy(i)
        }),
        macro_auc: interval(&|i| own_scored.macro_auc(i), &|i| other_scored.macro_auc(i)),
        per_class_auc: own_report
            .metrics
            .per_class_auc
            .iter()
            .zip(&other_report.metrics.per_class_auc)
            .map(|(&a, &b)| difference(a, b))
            .collect(),
        ece_after: difference(
            own_report.calibration.as_ref().map(|c| c.ece_after),
            other_report.calibration.as_ref().map(|c| c.ece_after),
        ),
    }
}

/// `eval-data-<dataset name>[-<sub-population>].json`.
fn other_file_name(data: &SourceSpec, settings: &EvalSettings) -> String {
    let name: String = data
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match &settings.population {
        Some(f) => format!("eval-data-{name}-{}.json", f.slug()),
        None => format!("eval-data-{name}.json"),
    }
}
