//! The service's DICOM Structured Reports (`OUT/sr/<SOP Instance UID>.dcm`): one per study once
//! the study has gone the stable time without a new instance (and, when configured, one per
//! instance as it is screened). The report's UID is derived from its content, so the file's
//! presence says it is written: a crash before the rename leaves nothing and the next pass
//! writes it; a crash after leaves it and it is not written twice. A report is queued for
//! each forwarding destination ([`super::forward`]) before its file is written.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::audit::{AuditEvent, AuditRecord};
use super::forward::enqueue;
use super::Service;
use crate::decode::DicomStudyHeader;
use crate::persist::write_atomically;
use crate::sr::{study_report, ReportedModel, SrConfig};
use crate::study::{StudyInstance, StudyResult};
use crate::{Error, Result};

/// Where the service writes reports, under `OUT`.
pub const SR_DIR: &str = "sr";

impl Service {
    /// Writes the report of every study result that is stable (all of them with `force`) and
    /// not reported in its current state. Failures are reported and retried on the next pass.
    pub(super) fn write_study_reports(&mut self, force: bool) {
        let Some(config) = self.options.sr.clone() else {
            return;
        };
        let dir = self.options.out_dir.join("studies");
        let Ok(entries) = fs::read_dir(&dir) else {
            return; // no study yet
        };
        let stable = Duration::from_secs(config.stable_seconds);
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(modified) = fs::metadata(&path).and_then(|m| m.modified()) else {
                continue;
            };
            let settled = modified.elapsed().is_ok_and(|age| age >= stable);
            if self.reported.get(&path) == Some(&modified) || !(force || settled) {
                continue;
            }
            match self.report_study_file(&path, &config) {
                Ok(()) => {
                    self.reported.insert(path, modified);
                }
                Err(e) => self.report_sr_error(&path, &e),
            }
        }
    }

    /// Writes the report of one instance as soon as it is screened.
    pub(super) fn write_instance_report(
        &self,
        study_uid: &str,
        instance: StudyInstance,
        header: Option<DicomStudyHeader>,
    ) -> Result<()> {
        let Some(config) = &self.options.sr else {
            return Ok(());
        };
        let mut study = StudyResult::new(study_uid);
        study.header = header;
        study.add(instance);
        study.aggregate(self.screener.class_names(), &self.model.id);
        let origin = study
            .instances
            .first()
            .and_then(|i| i.result_file.clone())
            .unwrap_or_default();
        self.write_report(&study, config, Path::new(&origin))
    }

    fn report_study_file(&self, path: &Path, config: &SrConfig) -> Result<()> {
        let bytes = crate::persist::read(path)?;
        let study: StudyResult = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("unreadable study result: {e}")),
        })?;
        if study.header.is_none() {
            // Screened before reports were configured: nothing to copy the patient from.
            return Ok(());
        }
        self.write_report(&study, config, path)
    }

    /// Builds and writes `study`'s report unless it exists; `origin` names the result it
    /// reports in errors and the audit record.
    fn write_report(&self, study: &StudyResult, config: &SrConfig, origin: &Path) -> Result<()> {
        let model = ReportedModel {
            id: &self.model.id,
            sha256: &self.model.sha256,
            verified: self.model.verified,
            class_names: self.screener.class_names(),
            thresholds: self.screener.thresholds(),
        };
        let document =
            study_report(study, &model, config, SystemTime::now()).map_err(|reason| Error::Io {
                path: origin.to_path_buf(),
                source: std::io::Error::other(format!("cannot build its DICOM SR: {reason}")),
            })?;
        let dir = self.options.out_dir.join(SR_DIR);
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let file = dir.join(format!("{}.dcm", document.sop_instance_uid));
        if file.exists() {
            return Ok(());
        }
        // Queued before the report file marks it written: a crash in between queues it again
        // under the same name, never loses it.
        enqueue(
            &self.options.out_dir,
            &self.options.forward,
            &document.sop_instance_uid,
            &document.bytes,
        )?;
        write_atomically(&file, &document.bytes)?;
        let record = AuditRecord {
            model_id: Some(self.model.id.clone()),
            model_sha256: Some(self.model.sha256.clone()),
            result_file: Some(file.display().to_string()),
            detail: Some(serde_json::json!({
                "study_uid": study.study_uid,
                "sop_instance_uid": document.sop_instance_uid,
                "series_uid": document.series_uid,
                "instances": study.instances.len(),
                "source": origin,
            })),
            ..AuditRecord::now(AuditEvent::ReportWritten)
        };
        self.audit.append(&record)
    }

    fn report_sr_error(&self, path: &Path, error: &Error) {
        eprintln!("scanside: error: {error}; its report will be retried");
        let record = AuditRecord {
            result_file: Some(path.display().to_string()),
            error: Some(error.to_string()),
            ..AuditRecord::now(AuditEvent::OutputError)
        };
        let _ = self.audit.append(&record);
    }
}
