//! scanside's workstation trainer: self-supervised pretraining, fine-tuning, evaluation and
//! export of medical image classifiers with burn.
//!
//! The modules are listed below bottom-up: each imports only modules above it in the list, never
//! one below (`tools/check_structure.py` checks it). First what every stage builds on — run
//! files, optimisers, augmentation, data, the network, metrics, the float graph and its int8
//! grids, the settings and the run-directory contracts — then the stages in the order a model
//! goes through them: [`pretrain`] → [`finetune`] → [`evaluate`] → [`quantize`] → [`export`],
//! with [`report`], [`study`] and [`demo`] composing them. A stage may read an earlier stage's
//! run (through [`run_dir`]) but never reaches sideways into another stage for a helper. The
//! library is generic over the burn backend; the binary picks the backend from Cargo features.
#![warn(missing_docs)]

pub mod runlog; // run files: JSON configs, weights saved atomically, the metrics log, progress

pub mod optim; // optimisers (LARS beside burn's), learning-rate and batch schedules, step seeds

pub mod augment; // augmentations of self-supervised views and fine-tuning images

pub mod data; // datasets and their readers, leak-free splits, loading and sampling images

pub mod model; // the ResNet backbone, the classifier and the SimCLR network (CPU kernels)

pub mod imagenet; // torchvision ImageNet weights loaded into the backbone

pub mod metrics; // scoring models and features: outputs, AUC, kNN, calibration, intervals

pub mod graph; // the classifier as a float graph with BatchNorm folded in, and its tracing

pub mod int8_calibration; // activation ranges, weight grids, fake quantisation (QAT)

pub mod onnx; // ONNX writers: the fp32 classifier and its int8 QDQ twin

pub mod onnx_import; // ONNX classifiers trained elsewhere read into the float graph

pub mod config; // every stage's settings: defaults, validation, config files and flags

pub mod run_dir; // run-directory contracts: file names, loading a finished run back

pub mod plots; // SVG charts for reports

pub mod pretrain; // stage: self-supervised pretraining (SimCLR, MICLe, combined objectives)

pub mod finetune; // stage: supervised fine-tuning (full, linear probe, quantisation-aware)

pub mod evaluate; // stage: evaluation with intervals, calibration and operating points

pub mod quantize; // stage: post-training int8 quantisation to the firmware's blob

pub mod export; // stage: the signed bundle (ONNX, int8), checked against the runtime

pub mod report; // the HTML report of evaluated runs

pub mod study; // the label-efficiency study: fine-tuning and evaluation over a grid

pub mod demo; // the whole path on real data, ending in the runtime's screening

use std::path::PathBuf;

/// Everything that can go wrong in the trainer, each naming the file or setting concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A dataset is missing, empty or malformed.
    #[error("{path}: {reason}")]
    Data {
        /// The dataset file or folder.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A configuration or run directory is inconsistent.
    #[error("{path}: {reason}")]
    Config {
        /// The config file or run directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint could not be saved or loaded.
    #[error("{path}: checkpoint: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// burn's explanation.
        reason: String,
    },
    /// Pretrained weights cannot initialise the backbone.
    #[error("{path}: cannot initialise the backbone from these weights: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The exported model does not reproduce the trained one.
    #[error("export check failed: {0}")]
    ExportMismatch(String),
    /// An ONNX model cannot be read into the float graph.
    #[error("{path}: cannot import: {reason}")]
    Import {
        /// The ONNX file.
        path: PathBuf,
        /// The node and what is wrong with it.
        reason: String,
    },
    /// The int8 model cannot be made, or does not fit the device's budget.
    #[error("int8 export: {0}")]
    Quantize(String),
    /// An error from the runtime crate (decoding, bundles, tract).
    #[error(transparent)]
    Runtime(#[from] scanside_runtime::Error),
}

/// Result alias for the trainer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
