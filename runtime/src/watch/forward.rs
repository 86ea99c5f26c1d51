//! Store-and-forward: the service's DICOM reports sent with C-STORE (SCU) to each configured
//! destination (a PACS, a viewer's gateway), retried with backoff while it is down.
//!
//! Each destination has a queue folder, `OUT/outbox/<name>/`, one Part-10 file per object,
//! named by its SOP Instance UID (queueing the same object twice keeps one file). A file
//! leaves the queue only after the destination answered success and the send is audited
//! (`forwarded`, fsynced): kill -9 at any moment loses nothing. A crash after the audit and
//! before the removal is recognised on restart from the audit log (the file is dropped, not
//! sent again); only a crash between the destination's answer and the audit record's fsync
//! sends an object a second time — under the same SOP Instance UID, which a PACS stores once.
//! A destination that refuses an object for good (a failure status other than "out of
//! resources") gets it moved to `OUT/outbox/<name>/failed/` with a reason; anything else —
//! refused association, no route, timeout, out of resources — is retried.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use dicom_core::{dicom_value, DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use serde::Deserialize;

use super::audit::{AuditEvent, AuditLog, AuditRecord};
use super::dimse::{command_elements, encode_command, uint, C_STORE_RQ};
use crate::persist::write_atomically;
use crate::{Error, Result};

/// The queue folders, under `OUT`.
pub const OUTBOX_DIR: &str = "outbox";
/// Objects a destination refused for good, inside its queue folder.
pub const REFUSED_DIR: &str = "failed";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// The largest object sent (a report is kilobytes; this bounds a corrupted queue file).
const MAX_OBJECT_BYTES: u64 = 256 << 20;

/// A DICOM node results are sent to (a `[[forward]]` table of the service configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The destination's name: its queue folder and its name in the audit log (letters,
    /// digits, `-`, `_`; default: the AE title).
    #[serde(default)]
    pub name: String,
    /// The destination's (called) AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// This node's (calling) AE title.
    #[serde(default = "default_calling")]
    pub calling_ae_title: String,
    /// First retry delay after a failed send, in milliseconds; doubled up to `retry_max_ms`.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_calling() -> String {
    "SCANSIDE".into()
}
fn default_retry_ms() -> u64 {
    5_000
}
fn default_retry_max_ms() -> u64 {
    300_000
}

impl Destination {
    /// `AE_TITLE@HOST:PORT` (the form dcmtk and dicom-rs tools take) with the defaults.
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{spec:?} is not AE_TITLE@HOST:PORT");
        let (ae_title, address) = spec.split_once('@').ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        Ok(Self {
            name: String::new(),
            ae_title: ae_title.to_string(),
            host: host.to_string(),
            port: port.parse().map_err(|_| bad())?,
            calling_ae_title: default_calling(),
            retry_ms: default_retry_ms(),
            retry_max_ms: default_retry_max_ms(),
        })
    }

    /// The queue folder's name.
    pub fn queue_name(&self) -> &str {
        if self.name.is_empty() {
            &self.ae_title
        } else {
            &self.name
        }
    }

    /// Checks the titles (PS3.8 9.3.1), the name (a folder name) and the delays.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                reason,
            })
        };
        for title in [&self.ae_title, &self.calling_ae_title] {
            if !is_ae_title(title) {
                return bad(format!(
                    "forward: AE title {title:?} must be 1-16 printable ASCII characters"
                ));
            }
        }
        let name = self.queue_name();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "forward: name {name:?} must be letters, digits, '-' or '_' (it names the \
                 queue folder; set `name` when the AE title has other characters)"
            ));
        }
        if self.host.is_empty() || self.port == 0 {
            return bad(format!(
                "forward {name}: host and a non-zero port are required"
            ));
        }
        if self.retry_ms == 0 || self.retry_max_ms < self.retry_ms {
            return bad(format!(
                "forward {name}: retry_ms must be positive and at most retry_max_ms"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// PS3.8 9.3.1: 1-16 characters of the default repertoire, not all spaces, no backslash.
pub fn is_ae_title(title: &str) -> bool {
    !title.trim().is_empty()
        && title.len() <= 16
        && title
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

/// Queues a Part-10 object for every destination (atomically; the same UID overwrites its
/// own queued copy).
pub fn enqueue(
    out_dir: &Path,
    destinations: &[Destination],
    sop_instance_uid: &str,
    bytes: &[u8],
) -> Result<()> {
    for destination in destinations {
        let dir = queue_dir(out_dir, destination);
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        write_atomically(&dir.join(format!("{sop_instance_uid}.dcm")), bytes)?;
    }
    Ok(())
}

fn queue_dir(out_dir: &Path, destination: &Destination) -> PathBuf {
    out_dir.join(OUTBOX_DIR).join(destination.queue_name())
}

/// Why a send did not succeed.
#[derive(Debug)]
enum SendError {
    /// Worth retrying: the destination is down, busy or out of resources.
    Retry(String),
    /// The destination refused this object for good (its status says why).
    Refused(String),
}

/// Sends one destination's queue until `stop` is set.
pub struct Forwarder {
    destination: Destination,
    queue: PathBuf,
    audit: AuditLog,
    /// Queue file names the audit log records as sent (a crash before their removal).
    sent_before: HashSet<String>,
}

impl Forwarder {
    /// The forwarder of `destination`'s queue under `out_dir`; `forwarded` is what the audit
    /// log records as sent: (destination name, file name).
    pub fn new(
        destination: Destination,
        out_dir: &Path,
        audit: AuditLog,
        forwarded: &HashSet<(String, String)>,
    ) -> Self {
        let name = destination.queue_name().to_string();
        let sent_before = forwarded
            .iter()
            .filter(|(d, _)| *d == name)
            .map(|(_, f)| f.clone())
            .collect();
        Self {
            queue: queue_dir(out_dir, &destination),
            destination,
            audit,
            sent_before,
        }
    }

    /// Sends queued objects oldest first; on a failure waits (doubling up to the maximum)
    /// and tries the same object again.
    pub fn run(&mut self, stop: &AtomicBool) {
        let first = Duration::from_millis(self.destination.retry_ms);
        let mut backoff = first;
        while !stop.load(Ordering::SeqCst) {
            let queued = self.queued();
            if queued.is_empty() {
                super::sleep_unless_stopped(Duration::from_millis(500), stop);
                continue;
            }
            match self.send_all(&queued, stop) {
                Ok(()) => backoff = first,
                Err(reason) => {
                    self.audit_retry(&reason, backoff);
                    super::sleep_unless_stopped(backoff, stop);
                    backoff =
                        (backoff * 2).min(Duration::from_millis(self.destination.retry_max_ms));
                }
            }
        }
    }

    /// The queue's files, oldest first (ties by name).
    fn queued(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.queue) else {
            return Vec::new();
        };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".dcm") && !name.starts_with('.')
            })
            .map(|e| {
                let modified = e.metadata().and_then(|m| m.modified());
                (modified.unwrap_or(SystemTime::UNIX_EPOCH), e.path())
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, path)| path).collect()
    }

    /// Sends each file; the first that must be retried ends the pass.
    fn send_all(
        &mut self,
        files: &[PathBuf],
        stop: &AtomicBool,
    ) -> std::result::Result<(), String> {
        for file in files {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let name = file_name(file);
            if self.sent_before.contains(&name) {
                // Audited as sent before a crash took the process: only the removal is left.
                remove_durably(file);
                continue;
            }
            match self.send_file(file) {
                Ok(status) => self.commit(file, &name, status)?,
                Err(SendError::Refused(reason)) => self.set_aside(file, &reason)?,
                Err(SendError::Retry(reason)) => return Err(reason),
            }
        }
        Ok(())
    }

    fn send_file(&self, file: &Path) -> std::result::Result<u16, SendError> {
        let size = fs::metadata(file)
            .map_err(|e| SendError::Retry(format!("{}: {e}", file.display())))?
            .len();
        if size > MAX_OBJECT_BYTES {
            return Err(SendError::Refused(format!(
                "larger than {MAX_OBJECT_BYTES} bytes"
            )));
        }
        let bytes =
            fs::read(file).map_err(|e| SendError::Retry(format!("{}: {e}", file.display())))?;
        let object = bytes
            .get(128..)
            .ok_or_else(|| "not a DICOM file (shorter than its preamble)".to_string())
            .and_then(|rest| dicom_object::from_reader(rest).map_err(|e| e.to_string()))
            .map_err(|e| SendError::Refused(format!("unreadable queued object: {e}")))?;
        let class = object
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        let uid = object
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        c_store(&self.destination, &class, &uid, &object)
    }

    /// A sent object: audited (the commit point), then removed from the queue.
    fn commit(&mut self, file: &Path, name: &str, status: u16) -> std::result::Result<(), String> {
        let record = AuditRecord {
            result_file: Some(file.display().to_string()),
            detail: Some(serde_json::json!({
                "destination": self.destination.queue_name(),
                "address": self.destination.to_string(),
                "file": name,
                "status": format!("0x{status:04X}"),
            })),
            ..AuditRecord::now(AuditEvent::Forwarded)
        };
        // Unaudited, the object stays queued (and is sent again: the same UID) rather than
        // leave without a record.
        self.audit.append(&record).map_err(|e| e.to_string())?;
        self.sent_before.insert(name.to_string());
        remove_durably(file);
        Ok(())
    }

    /// A refused object moves to the queue's `failed/` with a reason beside it.
    fn set_aside(&self, file: &Path, reason: &str) -> std::result::Result<(), String> {
        let dir = self.queue.join(REFUSED_DIR);
        let dest = dir.join(file_name(file));
        fs::create_dir_all(&dir)
            .and_then(|()| fs::rename(file, &dest))
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        let _ = write_atomically(
            &PathBuf::from(format!("{}.reason.txt", dest.display())),
            format!("{reason}\n").as_bytes(),
        );
        eprintln!(
            "scanside: forward: {} refused {}: {reason}",
            self.destination,
            file.display()
        );
        let record = AuditRecord {
            result_file: Some(dest.display().to_string()),
            error: Some(reason.to_string()),
            detail: Some(serde_json::json!({
                "destination": self.destination.queue_name(),
                "address": self.destination.to_string(),
            })),
            ..AuditRecord::now(AuditEvent::ForwardRefused)
        };
        let _ = self.audit.append(&record);
        Ok(())
    }

    fn audit_retry(&self, reason: &str, wait: Duration) {
        eprintln!(
            "scanside: forward: {}: {reason}; retrying in {} s",
            self.destination,
            wait.as_secs_f32()
        );
        let record = AuditRecord {
            error: Some(reason.to_string()),
            detail: Some(serde_json::json!({
                "destination": self.destination.queue_name(),
                "address": self.destination.to_string(),
                "retry_in_ms": wait.as_millis() as u64,
            })),
            ..AuditRecord::now(AuditEvent::ForwardRetry)
        };
        let _ = self.audit.append(&record);
    }
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_durably(file: &Path) {
    if let Err(e) = fs::remove_file(file) {
        eprintln!("scanside: forward: cannot remove {}: {e}", file.display());
    }
    if let Some(dir) = file.parent() {
        super::sync_dir(dir);
    }
}

/// One association, one C-STORE, release. The status the destination answered when it stored
/// the object (success or a warning: PS3.4 B.2.3).
fn c_store(
    destination: &Destination,
    class: &str,
    uid: &str,
    object: &InMemDicomObject,
) -> std::result::Result<u16, SendError> {
    let retry = |what: &str, e: &dyn std::fmt::Display| SendError::Retry(format!("{what}: {e}"));
    let mut association = ClientAssociationOptions::new()
        .calling_ae_title(destination.calling_ae_title.as_str())
        .called_ae_title(destination.ae_title.as_str())
        .with_presentation_context(
            class,
            vec![EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN],
        )
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60))
        .establish((destination.host.as_str(), destination.port))
        .map_err(|e| retry("association", &e))?;
    let context = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned();
    let Some(context) = context else {
        let _ = association.abort();
        return Err(SendError::Refused(format!(
            "the destination accepts no {class} objects"
        )));
    };
    let ts = if context.transfer_syntax.trim_end_matches('\0') == IMPLICIT_VR_LITTLE_ENDIAN {
        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let mut data = Vec::new();
    object
        .write_dataset_with_ts(&mut data, &ts)
        .map_err(|e| SendError::Refused(format!("encoding the data set: {e}")))?;
    let command = encode_command(&store_request(class, uid))
        .map_err(|e| SendError::Refused(format!("encoding the command: {e}")))?;
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context.id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .map_err(|e| retry("sending the command", &e))?;
    {
        let mut writer = association.send_pdata(context.id);
        writer
            .write_all(&data)
            .map_err(|e| retry("sending the data set", &e))?;
        writer
            .finish()
            .map_err(|e| retry("sending the data set", &e))?;
    }
    let status = read_status(&mut association)?;
    let _ = association.release();
    classify(status)
}

fn store_request(class: &str, uid: &str) -> InMemDicomObject {
    InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_STORE_RQ])),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [1])),
        DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0])),
        // 0x0000: a data set follows.
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [0x0000]),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, uid),
        ),
    ])
}

/// The C-STORE response's status (its command set may come in fragments).
fn read_status(
    association: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
) -> std::result::Result<u16, SendError> {
    let mut command = Vec::new();
    loop {
        let pdu = association
            .receive()
            .map_err(|e| SendError::Retry(format!("awaiting the response: {e}")))?;
        let Pdu::PData { data } = pdu else {
            return Err(SendError::Retry(format!(
                "the destination answered {pdu:?} instead of a response"
            )));
        };
        for value in data {
            if value.value_type != PDataValueType::Command || command.len() > 1 << 20 {
                return Err(SendError::Retry("malformed response".into()));
            }
            command.extend_from_slice(&value.data);
            if value.is_last {
                let elements = command_elements(&command).map_err(SendError::Retry)?;
                return uint(&elements, tags::STATUS)
                    .ok_or_else(|| SendError::Retry("a response without a status".into()));
            }
        }
    }
}

/// PS3.4 B.2.3 / PS3.7 C: success and warnings stored the object; out of resources (A7xx) is
/// worth retrying; every other failure is the destination's final word on this object.
fn classify(status: u16) -> std::result::Result<u16, SendError> {
    match status {
        0x0000 | 0xB000 | 0xB006 | 0xB007 => Ok(status),
        s if s & 0xFF00 == 0xA700 => Err(SendError::Retry(format!(
            "the destination is out of resources (0x{s:04X})"
        ))),
        s => Err(SendError::Refused(format!(
            "the destination refused it: status 0x{s:04X}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_from_ae_at_host_port_and_bad_ones_are_named() {
        let d = Destination::parse("PACS@10.0.0.5:104").unwrap();
        assert_eq!(
            (d.ae_title.as_str(), d.host.as_str(), d.port),
            ("PACS", "10.0.0.5", 104)
        );
        assert_eq!(d.queue_name(), "PACS");
        d.validate(Path::new("x")).unwrap();
        for bad in ["PACS", "PACS@host", "PACS@host:port", "@host:1"] {
            let parsed = Destination::parse(bad);
            let invalid = parsed
                .map(|d| d.validate(Path::new("x")).is_err())
                .unwrap_or(true);
            assert!(invalid, "{bad}");
        }
        let spaced = Destination::parse("MY PACS@h:1").unwrap();
        let err = spaced
            .validate(Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml") && err.contains("name"), "{err}");
    }

    #[test]
    fn statuses_split_into_stored_retry_and_refused() {
        assert!(matches!(classify(0x0000), Ok(0)));
        assert_eq!(classify(0xB007).ok(), Some(0xB007), "a warning: stored");
        assert!(matches!(classify(0xA700), Err(SendError::Retry(_))));
        assert!(matches!(classify(0xA900), Err(SendError::Refused(_))));
        assert!(matches!(classify(0x0122), Err(SendError::Refused(_))));
        assert!(matches!(classify(0xC000), Err(SendError::Refused(_))));
    }
}
