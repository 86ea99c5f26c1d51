//! `scanside screen`: screens files with a [`Screener`] on several threads and writes one JSON
//! object per image, one per line, in input order, as soon as it and all before it are done.
//!
//! A file that fails is handed to the caller and the others are still screened; the first
//! error writing the output stops the run, and a closed pipe (`scanside screen … | head`)
//! stops it quietly. It never decides exit codes or prints to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::pipeline::Screener;
use crate::report::Status;
use crate::Error;

/// What a `screen` run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScreenSummary {
    /// Results written.
    pub written: usize,
    /// Files that could not be screened (each handed to the failure callback).
    pub failed: usize,
    /// Results `not_applicable` (an input rule of the bundle failed).
    pub not_applicable: usize,
    /// Results `out_of_distribution`.
    pub out_of_distribution: usize,
}

/// Why a `screen` run stopped before its last file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A result could not be serialised.
    #[error("serialising a result")]
    Serialise(#[source] serde_json::Error),
    /// Writing a result failed (not a closed pipe: that only ends the run).
    #[error("writing a result")]
    Write(#[source] std::io::Error),
}

/// Screens `files` on `jobs` threads, writing each result to `out` as a JSON line (flushed
/// line by line) in input order; a file that fails goes to `failure` with its error.
pub fn write_json_lines(
    screener: &Screener,
    files: &[PathBuf],
    jobs: usize,
    out: &mut impl Write,
    mut failure: impl FnMut(&Path, &Error),
) -> Result<ScreenSummary, OutputError> {
    let mut summary = ScreenSummary::default();
    let mut stopped = None;
    screener.screen_files(files, jobs, |file, outcome| match outcome {
        Ok(result) => {
            match result.status {
                Status::Screened => {}
                Status::NotApplicable => summary.not_applicable += 1,
                Status::OutOfDistribution => summary.out_of_distribution += 1,
            }
            let written = serde_json::to_string(&result)
                .map_err(OutputError::Serialise)
                .and_then(|line| {
                    writeln!(out, "{line}")
                        .and_then(|_| out.flush())
                        .map_err(OutputError::Write)
                });
            match written {
                Ok(()) => {
                    summary.written += 1;
                    true
                }
                Err(OutputError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
                Err(e) => {
                    stopped = Some(e);
                    false
                }
            }
        }
        Err(e) => {
            summary.failed += 1;
            failure(file, &e);
            true
        }
    });
    match stopped {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
