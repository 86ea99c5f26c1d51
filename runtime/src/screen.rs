//! `scanside screen`: screens files with a [`Screener`] on several threads and writes one JSON
//! object per image, one per line, in input order, as soon as it and all before it are done;
//! then, when asked, one per DICOM study (the folding `watch` writes to `OUT/studies/`).
//!
//! A file that fails is handed to the caller and the others are still screened; the first
//! error writing the output stops the run, and a closed pipe (`scanside screen … | head`)
//! stops it quietly. It never decides exit codes or prints to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::decode;
use crate::pipeline::Screener;
use crate::report::{ScreeningResult, Status};
use crate::study::{StudyInstance, StudyResult};
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
    /// Study lines written.
    pub studies: usize,
    /// Results in no DICOM study (PNG, JPEG, DICOM without a Study Instance UID), when study
    /// lines were asked for.
    pub outside_studies: usize,
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

/// Which lines a `screen` run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lines {
    /// One per image.
    #[default]
    Images,
    /// One per image, then one per DICOM study ([`StudyResult`], the folding `watch` does).
    ImagesThenStudies,
    /// Only the study lines.
    Studies,
}

/// Screens `files` on `jobs` threads, writing each result to `out` as a JSON line (flushed
/// line by line) in input order, then — as `lines` asks — one line per DICOM study in the
/// order its first instance came; a file that fails goes to `failure` with its error.
pub fn write_json_lines(
    screener: &Screener,
    files: &[PathBuf],
    jobs: usize,
    lines: Lines,
    out: &mut impl Write,
    mut failure: impl FnMut(&Path, &Error),
) -> Result<ScreenSummary, OutputError> {
    let mut summary = ScreenSummary::default();
    let mut studies = Studies::default();
    let mut stopped = None;
    screener.screen_files(files, jobs, |file, outcome| match outcome {
        Ok(result) => {
            summary.count(&result);
            if lines != Lines::Images {
                studies.add(file, &result);
            }
            if lines == Lines::Studies {
                return true;
            }
            match write_line(out, &result) {
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
    if let Some(e) = stopped {
        return Err(e);
    }
    if lines != Lines::Images {
        summary.outside_studies = studies.outside;
        for study in studies.finish(screener.class_names()) {
            match write_line(out, &study) {
                Err(OutputError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                other => other?,
            }
            summary.studies += 1;
        }
    }
    Ok(summary)
}

fn write_line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), OutputError> {
    let line = serde_json::to_string(value).map_err(OutputError::Serialise)?;
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(OutputError::Write)
}

impl ScreenSummary {
    fn count(&mut self, result: &ScreeningResult) {
        match result.status {
            Status::Screened => {}
            Status::NotApplicable => self.not_applicable += 1,
            Status::OutOfDistribution => self.out_of_distribution += 1,
        }
    }
}

/// Study results gathered while screening, in the order their first instance came.
#[derive(Default)]
struct Studies {
    studies: Vec<StudyResult>,
    model_id: String,
    /// Results of files that belong to no DICOM study (PNG, JPEG, DICOM without a Study
    /// Instance UID).
    outside: usize,
}

impl Studies {
    fn add(&mut self, file: &Path, result: &ScreeningResult) {
        // The file was just read whole; its header again is a look-up in the page cache.
        let identity = decode::read_dicom_identity(file).ok();
        let Some(uid) = identity.as_ref().and_then(|d| d.study_uid.clone()) else {
            self.outside += 1;
            return;
        };
        let instance = StudyInstance::of(file.display().to_string(), identity.as_ref(), result);
        self.model_id = result.model_id.clone();
        match self.studies.iter_mut().find(|s| s.study_uid == uid) {
            Some(study) => study.add(instance),
            None => {
                let mut study = StudyResult::new(&uid);
                study.add(instance);
                self.studies.push(study);
            }
        }
    }

    fn finish(mut self, class_names: &[String]) -> Vec<StudyResult> {
        for study in &mut self.studies {
            study.aggregate(class_names, &self.model_id);
        }
        self.studies
    }
}
