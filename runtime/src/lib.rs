//! scanside's edge runtime: reads PNG/JPEG/DICOM images, applies the preprocessing recorded in a
//! model bundle, runs the exported ONNX model with tract and reports per-class probabilities.
//!
//! The runtime never depends on burn: a bundle (manifest + ONNX model) is the whole contract
//! between the workstation trainer and the edge. The trainer depends on this crate for that
//! contract ([`bundle::BundleManifest`], [`preprocess::PreprocessConfig`]) and for the image
//! decoder, so that training and screening see exactly the same pixels.
//!
//! The modules, bottom up; each imports only from those before it:
//!
//! - [`persist`]: whole-file reads and atomic, durable writes;
//! - [`decode`]: PNG, JPEG and DICOM bytes → [`decode::DecodedImage`] (samples in `[0, 1]`),
//!   with the DICOM window and frame policies it applies;
//! - [`preprocess`]: decoded image → model input (`C×H×W`, normalised);
//! - [`bundle`]: the manifest, its signature, and how logits become probabilities;
//! - [`infer`]: the engines (direct fp32, tract, the int8 core) → logits;
//! - [`report`]: logits → the JSON result of one image;
//! - [`pipeline`]: decode → preprocess → infer → report for one bundle ([`pipeline::Screener`]);
//! - [`metrics`]: ROC AUC and group-bootstrap intervals (shared with the trainer);
//! - [`study`]: a study's results folded into one; [`sr`]: a study result as a DICOM
//!   Structured Report;
//! - the front doors, each adding only its own I/O: [`screen`], [`bench`], [`mcu_vectors`],
//!   [`watch`] (the drop-folder service and the DICOM receiver), [`validate`] (a site's
//!   acceptance check on its labelled images) and [`inspect`] (decoder only);
//! - [`logging`]: the stderr logger the binary installs.
#![warn(missing_docs)]

pub mod bench;
pub mod bundle;
pub mod decode;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod infer;
pub mod inputs;
pub mod inspect;
pub mod logging;
pub mod mcu_vectors;
pub mod metrics;
pub mod persist;
pub mod pipeline;
pub mod preprocess;
pub mod report;
pub mod screen;
pub mod sr;
pub mod study;
pub mod validate;
pub mod watch;

use std::path::PathBuf;

/// Everything that can go wrong in the runtime, each variant naming the file it concerns.
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
    /// The file is not an image format the runtime reads.
    #[error("{path}: not a PNG, JPEG or DICOM file ({reason})")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The image could not be decoded (truncated, corrupt, unsupported encoding).
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A bundle's manifest is missing, malformed or inconsistent with its model.
    #[error("{path}: invalid bundle: {reason}")]
    Bundle {
        /// The manifest or model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A bundle's signature is missing or does not verify.
    #[error("{path}: refused: {reason}")]
    Signature {
        /// The signature file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file is missing or malformed.
    #[error("{path}: key: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// tract could not load or run the model.
    #[error("{path}: model error: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        reason: String,
    },
    /// A configuration file is malformed or inconsistent.
    #[error("{path}: invalid configuration: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Preprocessing settings cannot be applied to this image.
    #[error("{path}: cannot preprocess: {reason}")]
    Preprocess {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, `outer: cause: …`, leaving out a cause whose text the
/// message before it already holds (this crate's and the trainer's I/O errors print their OS
/// error in their own message and also report it as their source; anyhow's `{:#}` printed it
/// twice).
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = inner.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_names_its_cause_once_not_twice() {
        let error = Error::Io {
            path: "data/metadata.csv".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(describe_error(&error), "data/metadata.csv: No such file");
        // Wrapped: the wrapper's message already holds the whole chain.
        let wrapped = std::io::Error::other(error);
        assert_eq!(describe_error(&wrapped), "data/metadata.csv: No such file");
        // A cause the message does not hold is still named.
        let context = anyhow::Error::new(wrapped).context("loading the split");
        assert_eq!(
            describe_error(context.as_ref()),
            "loading the split: data/metadata.csv: No such file"
        );
    }
}
