//! The append-only audit log (JSONL), which is also the service's journal: an item's record is
//! its commit point. After a crash, an item still in the work area whose record is in the log
//! is only moved on; one without a record is screened again. So every input gets exactly one
//! record and one result, however often the process dies.
//!
//! Each append opens the file anew (`O_APPEND`), writes one line with a single `write` and
//! fsyncs it, so `logrotate` may rename the log at any time (its default `create` mode, no
//! `copytruncate`) and the next record goes to the new file.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::decode::DicomIdentity;
use crate::report::{Status, Timings};
use crate::{Error, Result};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// The service started (details: model, version, pid).
    ServiceStart,
    /// The service stopped cleanly.
    ServiceStop,
    /// An input was screened and its result written.
    Screened,
    /// An input could not be screened (it moved to `failed/` with a reason file).
    Failed,
    /// An input's bytes were already screened with this model; no second result.
    Duplicate,
    /// Writing results or moving inputs failed (e.g. disk full); the input stays pending.
    OutputError,
    /// A DICOM instance was received over the network and stored for screening.
    Received,
    /// A DICOM association was refused (e.g. calling AE title not allowed).
    AssociationRejected,
    /// A DICOM instance was refused at reception: it fails the bundle's input rules and the
    /// receiver is configured to refuse such instances (`refused_by` says which rule).
    InstanceRefused,
    /// A DICOM Structured Report of a study (or of one instance) was written to `OUT/sr/`.
    ReportWritten,
    /// A queued object was stored by a forwarding destination (C-STORE success); the commit
    /// point of its removal from the queue.
    Forwarded,
    /// Sending to a destination failed (down, refusing the association, out of resources);
    /// the object stays queued and is retried.
    ForwardRetry,
    /// A destination refused an object for good; it moved to the queue's `failed/`.
    ForwardRefused,
}

/// One line of the audit log. Fields that do not apply to an event are left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditRecord {
    /// UTC time, RFC 3339 with milliseconds.
    pub time: String,
    /// What happened.
    pub event: Option<AuditEvent>,
    /// The claim that identifies one processing of one input file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// The input file as it arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// SHA-256 of the input's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
    /// DICOM identifiers of the input, when it is DICOM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomIdentity>,
    /// The bundle's model id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// SHA-256 of the bundle's model file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Whether the bundle's signature was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_verified: Option<bool>,
    /// Whether the model's answer stands (`screened`, `not_applicable`,
    /// `out_of_distribution`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The input rule a `not_applicable` input failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The most probable class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_class: Option<String>,
    /// Classes over their screening threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// The result file written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_file: Option<String>,
    /// Where the input was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// Per-stage timings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Anything else (service details, network peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl AuditRecord {
    /// A record of `event` stamped with the current time.
    pub fn now(event: AuditEvent) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event: Some(event),
            ..Self::default()
        }
    }
}

/// What the log says about one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Screened, failed or duplicate.
    pub event: AuditEvent,
    /// Where the input should end up.
    pub moved_to: Option<String>,
}

/// What recovery needs from the log: committed claims and the inputs already screened.
#[derive(Debug, Default)]
pub struct Journal {
    /// Claim id → its committed outcome.
    pub committed: HashMap<String, Committed>,
    /// (input SHA-256, model SHA-256) → result file, for inputs screened before.
    pub screened: HashMap<(String, String), String>,
    /// (destination, queue file name) of objects a forwarding destination stored.
    pub forwarded: std::collections::HashSet<(String, String)>,
    /// Lines that were not valid records (a torn last line after a power cut).
    pub unreadable_lines: usize,
}

impl Journal {
    /// Learns from one record.
    pub fn note(&mut self, record: &AuditRecord) {
        let Some(event) = record.event else { return };
        if event == AuditEvent::Forwarded {
            let field = |name| {
                let value = record.detail.as_ref()?.get(name)?.as_str()?;
                Some(value.to_string())
            };
            if let (Some(destination), Some(file)) = (field("destination"), field("file")) {
                self.forwarded.insert((destination, file));
            }
            return;
        }
        if !matches!(
            event,
            AuditEvent::Screened | AuditEvent::Failed | AuditEvent::Duplicate
        ) {
            return;
        }
        if let Some(claim) = &record.claim_id {
            self.committed.insert(
                claim.clone(),
                Committed {
                    event,
                    moved_to: record.moved_to.clone(),
                },
            );
        }
        if event == AuditEvent::Screened {
            if let (Some(input), Some(model), Some(result)) = (
                &record.input_sha256,
                &record.model_sha256,
                &record.result_file,
            ) {
                self.screened
                    .insert((input.clone(), model.clone()), result.clone());
            }
        }
    }
}

/// The audit log file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating) the log at `path`, ends a torn last line so that new records start on
    /// a line of their own, and reads the journal from it and from its most recent rotation
    /// (`PATH.1`, logrotate's name).
    pub fn open(path: &Path) -> Result<(Self, Journal)> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut journal = Journal::default();
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        if let Ok(text) = std::fs::read_to_string(&rotated) {
            read_records(&text, &mut journal);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        read_records(&text, &mut journal);
        if !text.is_empty() && !text.ends_with('\n') {
            file.write_all(b"\n")
                .and_then(|_| file.sync_data())
                .map_err(io)?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
            },
            journal,
        ))
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record durably (one `write`, then fsync).
    pub fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(&line)?;
                f.sync_data()
            })
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn read_records(text: &str, journal: &mut Journal) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<AuditRecord>(line) {
            Ok(record) => journal.note(&record),
            Err(_) => journal.unreadable_lines += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screened(claim: &str, input: &str) -> AuditRecord {
        AuditRecord {
            claim_id: Some(claim.into()),
            input_sha256: Some(input.into()),
            model_sha256: Some("m".into()),
            result_file: Some(format!("{claim}.json")),
            moved_to: Some(format!("done/{claim}")),
            ..AuditRecord::now(AuditEvent::Screened)
        }
    }

    #[test]
    fn torn_last_line_is_ended_and_ignored_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, journal) = AuditLog::open(&path).unwrap();
        assert!(journal.committed.is_empty());
        log.append(&screened("a", "x")).unwrap();
        // A power cut in the middle of the next record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"time":"2026-11-23T00:00:00Z","event":"scree"#)
            .unwrap();
        drop(f);
        let (log, journal) = AuditLog::open(&path).unwrap();
        assert_eq!(journal.unreadable_lines, 1);
        assert_eq!(journal.committed["a"].event, AuditEvent::Screened);
        assert_eq!(
            journal.screened[&("x".to_string(), "m".to_string())],
            "a.json"
        );
        log.append(&screened("b", "y")).unwrap();
        let (_, journal) = AuditLog::open(&path).unwrap();
        assert_eq!(journal.unreadable_lines, 1);
        assert!(journal.committed.contains_key("b"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().last().unwrap().contains("\"b\""));
    }

    #[test]
    fn rotated_log_is_read_for_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path).unwrap();
        log.append(&screened("old", "x")).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        log.append(&screened("new", "y")).unwrap();
        let (_, journal) = AuditLog::open(&path).unwrap();
        assert!(journal.committed.contains_key("old") && journal.committed.contains_key("new"));
    }
}
