//! The pretraining health signal: weighted 20-NN accuracy of validation images against a bank of
//! training images, and how spread out the embeddings are (collapse) — measured before training
//! and every `health_every` epochs. Labels only score here; they never reach training.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scanside_runtime::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

use crate::config::PretrainConfig;
use crate::data::{load_images_with, DatasetIndex, ImageSet, Partition, SplitFile};
use crate::metrics::{embed, embedding_spread, knn_scores};
use crate::model::SimClr;
use crate::Result;

/// Below this embedding spread (see [`embedding_spread`]) the run warns of collapse.
pub const COLLAPSE_SPREAD: f64 = 0.05;

/// The backbone's kNN accuracy and embedding spread at one point of training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Steps done when measured.
    pub after_steps: usize,
    /// Weighted 20-NN top-1 accuracy of validation images against training images.
    pub knn_accuracy: f64,
    /// Its balanced accuracy (mean per-class recall).
    #[serde(default)]
    pub knn_balanced_accuracy: f64,
    /// See [`embedding_spread`]: ~1 spread out, → 0 collapsed.
    pub spread: f64,
}

/// Validation images and labels for the health signal (multi-class data only).
pub(super) struct HealthSet {
    bank: Vec<usize>,
    bank_labels: Vec<usize>,
    queries: ImageSet,
    query_labels: Vec<usize>,
}

/// The health signal's images: up to `health_images` validation images (queries) and
/// training images (the bank), drawn with the run's seed; `None` when disabled, without
/// validation images, or for multi-label data.
pub(super) fn health_set(
    config: &PretrainConfig,
    index: &DatasetIndex,
    split: &SplitFile,
    train: &ImageSet,
    preprocess: &PreprocessConfig,
) -> Result<Option<HealthSet>> {
    if config.health_every == 0 {
        return Ok(None);
    }
    let Some(train_labels) = train.class_labels() else {
        eprintln!("health: multi-label data, kNN accuracy is not measured");
        return Ok(None);
    };
    let mut val = split.indices(index, Partition::Val);
    if val.is_empty() {
        return Ok(None);
    }
    val.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    val.truncate(config.health_images);
    val.sort_unstable();
    let queries = load_images_with(index, &val, preprocess, config.skip_bad)?;
    let query_labels = queries.class_labels().expect("same dataset, multi-class");
    let mut bank: Vec<usize> = (0..train.len()).collect();
    bank.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed ^ 0x6b6e6e));
    bank.truncate(config.health_images);
    let bank_labels = bank.iter().map(|&i| train_labels[i]).collect();
    Ok(Some(HealthSet {
        bank,
        bank_labels,
        queries,
        query_labels,
    }))
}

/// The backbone's health now: weighted 20-NN accuracy of the queries against the bank and the
/// queries' embedding spread.
pub(super) fn measure_health<B: AutodiffBackend>(
    model: &SimClr<B>,
    set: &HealthSet,
    train: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
    after_steps: usize,
) -> Health {
    let backbone = model.valid().backbone;
    let bank_pixels: Vec<f32> = set
        .bank
        .iter()
        .flat_map(|&i| train.image(i).iter().copied())
        .collect();
    let bank = embed(
        &backbone,
        &bank_pixels,
        train.sample_len,
        preprocess,
        device,
    );
    let queries = embed(
        &backbone,
        &set.queries.pixels,
        set.queries.sample_len,
        preprocess,
        device,
    );
    debug_assert_eq!(bank.len(), set.bank_labels.len());
    let (knn_accuracy, knn_balanced_accuracy) = knn_scores(
        &bank,
        &set.bank_labels,
        &queries,
        &set.query_labels,
        20,
        0.07,
    );
    Health {
        after_steps,
        knn_accuracy,
        knn_balanced_accuracy,
        spread: embedding_spread(&queries),
    }
}
