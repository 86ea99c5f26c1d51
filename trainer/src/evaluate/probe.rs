//! The kNN probe of pretrained features: weighted 20-NN accuracy of validation and test images
//! against every training image, for a pretraining run's backbone or a fresh random-init one of
//! the same architecture (the baseline). Labels only score; nothing is trained.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::data::{load_images_with, open_split, ImageSet, Partition};
use crate::metrics::{embed, knn_scores};
use crate::run_dir::{load_pretrain_config, load_pretrained_backbone, CONFIG_FILE};
use crate::{Error, Result};

/// kNN scores of a pretrained backbone's features (or of a random-init backbone of the same
/// architecture), with every training image as the bank.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Pretraining run.
    pub run: PathBuf,
    /// Whether the weights were the run's or a fresh random initialisation.
    pub weights: String,
    /// Images in the bank (the training partition).
    pub bank: usize,
    /// Per partition (val, test): images, 20-NN accuracy and balanced accuracy.
    pub partitions: Vec<(Partition, usize, f64, f64)>,
}

/// Measures a pretraining run's backbone (or, with `random_init`, a fresh one seeded like the
/// run) by weighted 20-NN on the validation and test partitions against all training images.
pub fn probe_pretrained<B: Backend>(
    run: &Path,
    random_init: bool,
    device: &B::Device,
) -> Result<ProbeReport> {
    let config = load_pretrain_config(run)?;
    let preprocess = config.preprocess.clone().ok_or_else(|| Error::Config {
        path: run.join(CONFIG_FILE),
        reason: "no resolved preprocessing: not a completed pretraining run".into(),
    })?;
    B::seed(device, config.seed);
    let backbone = load_pretrained_backbone::<B>(run, &config, random_init, device)?;
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let labelled = |partition| -> Result<(ImageSet, Vec<usize>)> {
        let images = load_images_with(
            &index,
            &split.indices(&index, partition),
            &preprocess,
            config.skip_bad,
        )?;
        let labels = images.class_labels().ok_or_else(|| Error::Data {
            path: index.root().to_path_buf(),
            reason: "kNN probing needs multi-class labels".into(),
        })?;
        Ok((images, labels))
    };
    let (train, train_labels) = labelled(Partition::Train)?;
    let bank = embed(
        &backbone,
        &train.pixels,
        train.sample_len,
        &preprocess,
        device,
    );
    let mut partitions = Vec::new();
    for partition in [Partition::Val, Partition::Test] {
        let (images, labels) = labelled(partition)?;
        let queries = embed(
            &backbone,
            &images.pixels,
            images.sample_len,
            &preprocess,
            device,
        );
        let (accuracy, balanced) = knn_scores(&bank, &train_labels, &queries, &labels, 20, 0.07);
        partitions.push((partition, images.len(), accuracy, balanced));
    }
    Ok(ProbeReport {
        run: run.to_path_buf(),
        weights: if random_init {
            "random init (seeded like the run)"
        } else {
            "pretrained"
        }
        .into(),
        bank: train.len(),
        partitions,
    })
}
