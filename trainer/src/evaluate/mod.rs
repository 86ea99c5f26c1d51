//! Evaluation of a fine-tuned model on one partition: top-1/top-3 and balanced accuracy,
//! per-class and macro one-vs-rest ROC AUC and the confusion matrix ([`multi_class`]; per-finding
//! AUCs for multi-label runs, [`multi_label`]), 95 % bootstrap intervals resampled by
//! lesion/patient, calibration before and after temperature scaling fitted on validation, and
//! per-class operating points for a target sensitivity chosen on validation ([`calibration`]).
//! Writes `eval-<partition>.json` into the run, and gives the table printed. Also the kNN probe
//! of pretrained features ([`probe`]), and the evaluation on another site's labelled dataset
//! with its shift from the run's own test partition ([`other_site`]). The metrics themselves are [`crate::metrics`]; this stage
//! chooses what is measured on which images, and never trains.

pub mod calibration;
pub mod multi_class;
pub mod multi_label;
pub mod other_site;
pub mod probe;

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::{EvalSettings, FinetuneConfig};
use crate::data::{
    load_images_with, open_split, report_skipped, DatasetIndex, ImageSet, Partition, SplitFile,
    Task,
};
use crate::metrics::predict_logits;
use crate::model::Classifier;
use crate::run_dir::load_finetune_config;
use crate::{Error, Result};

pub use multi_class::{evaluate_run, CalibrationReport, EvalReport, Intervals};
pub use multi_label::{evaluate_multi_label, MultiLabelReport};
pub use other_site::{evaluate_other_site, OtherSiteReport, Shift};
pub use probe::{probe_pretrained, ProbeReport};

/// Either kind of evaluation.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Evaluation {
    /// Softmax classifier.
    MultiClass(EvalReport),
    /// One sigmoid per finding.
    MultiLabel(MultiLabelReport),
}

impl Evaluation {
    /// The report's table.
    pub fn table(&self) -> String {
        match self {
            Evaluation::MultiClass(r) => r.table(),
            Evaluation::MultiLabel(r) => r.table(),
        }
    }
}

/// Evaluates a run of either task on a partition and writes `eval-<partition>.json`.
pub fn evaluate<B: Backend>(
    run: &Path,
    partition: Partition,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<Evaluation> {
    let config = load_finetune_config(run)?;
    let (index, _) = open_split(&config.split, Some(&config.dataset))?;
    if index.task == Task::MultiClass {
        return evaluate_run::<B>(run, partition, settings, device).map(Evaluation::MultiClass);
    }
    evaluate_multi_label::<B>(run, partition, settings, device).map(Evaluation::MultiLabel)
}

/// Scores the images of a run's split an evaluation looks at with the run's model.
struct Scorer<'a, B: Backend> {
    index: &'a DatasetIndex,
    split: &'a SplitFile,
    config: &'a FinetuneConfig,
    settings: &'a EvalSettings,
    model: &'a Classifier<B>,
    device: &'a B::Device,
}

impl<B: Backend> Scorer<'_, B> {
    /// The partition's images (its requested sub-population, see [`population`]) and the
    /// model's logits for each.
    fn logits(&self, partition: Partition) -> Result<(ImageSet, Vec<Vec<f32>>)> {
        let preprocess = self
            .config
            .preprocess
            .as_ref()
            .expect("checked by load_finetuned");
        let images = load_images_with(
            self.index,
            &population(
                self.index,
                self.split,
                partition,
                self.config,
                self.settings,
            )?,
            preprocess,
            self.config.skip_bad,
        )?;
        report_skipped(&images);
        let logits = predict_logits(self.model, &images, preprocess, self.device);
        Ok((images, logits))
    }
}

/// The images an evaluation scores: the evaluated partition restricted to the requested
/// sub-population; validation (temperature, thresholds) restricted as the run was trained.
fn population(
    index: &DatasetIndex,
    split: &SplitFile,
    partition: Partition,
    config: &FinetuneConfig,
    settings: &EvalSettings,
) -> Result<Vec<usize>> {
    let all = split.indices(index, partition);
    let filter = if partition == settings.partition {
        settings.population.as_ref()
    } else {
        config.train_where.as_ref()
    };
    let chosen = match filter {
        Some(f) => f.apply(index, &all)?,
        None => all,
    };
    if chosen.is_empty() {
        return Err(Error::Data {
            path: index.root().to_path_buf(),
            reason: format!("no {partition:?} images in the requested sub-population"),
        });
    }
    Ok(chosen)
}

/// `eval-test.json`, or `eval-test-dx_type-histo.json` for a sub-population.
pub fn eval_file_name(partition: Partition, settings: &EvalSettings) -> String {
    let name = serde_json::to_value(partition)
        .expect("enum")
        .as_str()
        .unwrap_or("split")
        .to_string();
    match &settings.population {
        Some(f) => format!("eval-{name}-{}.json", f.slug()),
        None => format!("eval-{name}.json"),
    }
}
