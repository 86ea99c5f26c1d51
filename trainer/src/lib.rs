//! scanside's workstation trainer: self-supervised pretraining, fine-tuning, evaluation and
//! export of medical image classifiers with burn.
//!
//! One module per pipeline stage, in the order data flows: [`data`] → [`augment`] → [`model`] →
//! [`pretrain`] → [`finetune`] → [`evaluate`] → [`export`]; [`demo`] runs them all. The library
//! is generic over the burn backend; the binary picks the backend from Cargo features.
#![warn(missing_docs)]

pub mod augment;
pub mod config;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod graph;
pub mod imagenet;
pub mod int8_calibration;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod plots;
pub mod pretrain;
pub mod quantize;
pub mod report;
pub mod run_dir;
pub mod runlog;
pub mod study;

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
