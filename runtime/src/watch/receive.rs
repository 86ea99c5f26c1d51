//! `scanside receive`: a DICOM C-STORE / C-ECHO service class provider (dicom-rs `dicom-ul`).
//!
//! Each received instance is written into the drop folder as a Part-10 file (temp name, fsync,
//! rename to `<SOP Instance UID>.dcm`) *before* the C-STORE response reports success, so an
//! acknowledged instance survives a crash; the drop-folder [`super::Service`] screens it. When
//! the instance cannot be stored (disk full), the response says "out of resources" (A700) and
//! the sender keeps it and retries. The dataset bytes are stored as received, in the
//! negotiated transfer syntax, not re-encoded. With `refuse_not_applicable`, an instance
//! failing the bundle's DICOM input rules (a CT sent to a dermatology box) is not stored: it is
//! audited and answered 0x0122, so the sender keeps it. The rules are known only once the data
//! set is read, so this happens per instance, not when the association is negotiated.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{dicom_value, DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use dicom_ul::{Pdu, ServerAssociationOptions};

use super::audit::{AuditEvent, AuditLog, AuditRecord};
use super::dimse::{command_elements, encode_command, C_STORE_RQ};
use crate::bundle::InputRules;
use crate::decode;
use crate::persist::write_atomically;
use crate::{Error, Result};

/// DIMSE command fields (PS3.7 E.1).
const C_ECHO_RQ: u16 = 0x0030;
/// Status codes (PS3.7 annex C, PS3.4 B.2.3).
const STATUS_SUCCESS: u16 = 0x0000;
const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;
/// PS3.7 C.5: "Refused: SOP Class not supported" — this node takes no such instance.
const STATUS_NOT_SUPPORTED: u16 = 0x0122;
/// Verification SOP class.
const VERIFICATION: &str = "1.2.840.10008.1.1";
/// The largest instance accepted (a bound on memory per association).
const MAX_INSTANCE_BYTES: usize = 1 << 30;
/// A command set is a few hundred bytes; more is not a command (and must not grow memory).
const MAX_COMMAND_BYTES: usize = 1 << 20;

/// How the receiver listens and whom it accepts.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// This node's AE title; associations calling another title are refused.
    pub ae_title: String,
    /// Calling AE titles accepted; empty accepts any.
    pub allowed_calling: Vec<String>,
    /// Where received instances are stored (the drop folder the service watches).
    pub drop_dir: PathBuf,
    /// Concurrent associations; more are refused until one ends.
    pub max_associations: usize,
    /// Input rules whose DICOM attribute rules an instance must pass to be stored (none:
    /// every instance is stored; the screener then reports misfits `not_applicable`).
    pub refuse: Option<InputRules>,
}

/// Access control: the called title must be ours; the calling title must be on the allow-list
/// when one is configured.
#[derive(Debug, Clone)]
struct AllowList(Vec<String>);

impl AccessControl for AllowList {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> std::result::Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.0.is_empty() && !self.0.iter().any(|a| a == calling_ae_title.trim()) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Binds the listening socket (so a port in use is reported before anything starts).
pub fn bind(options: &ReceiveOptions) -> Result<TcpListener> {
    TcpListener::bind(options.listen).map_err(|source| Error::Io {
        path: PathBuf::from(options.listen.to_string()),
        source,
    })
}

/// Accepts associations until `stop` is set; each runs on its own thread.
pub fn serve(listener: TcpListener, options: ReceiveOptions, audit: AuditLog, stop: &AtomicBool) {
    // Non-blocking accept so that `stop` is seen within 100 ms.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("scanside: receive: {e}");
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let options = Arc::new(options);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::SeqCst) >= options.max_associations {
                    // Closing makes the sender retry later, which is what it does on busy PACS.
                    eprintln!("scanside: receive: {peer}: too many associations, closing");
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (active, options, audit) = (active.clone(), options.clone(), audit.clone());
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream, peer, &options, &audit) {
                        eprintln!("scanside: receive: {peer}: {e}");
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                eprintln!("scanside: receive: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Why an association ended badly.
#[derive(Debug, thiserror::Error)]
enum AssociationError {
    #[error("association refused or failed to establish: {0}")]
    Establish(String),
    #[error("network: {0}")]
    Network(String),
    #[error("malformed command: {0}")]
    Command(String),
}

/// One association from establishment to release: echoes answered, instances stored and
/// acknowledged, anything else refused by its response.
fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    options: &ReceiveOptions,
    audit: &AuditLog,
) -> std::result::Result<(), AssociationError> {
    let mut association = establish(stream, peer, options, audit)?;
    let mut session = Session {
        calling: dicom_ul::association::Association::peer_ae_title(&association).to_string(),
        peer,
        command: Vec::new(),
        data: Vec::new(),
        pending: None,
    };
    loop {
        // Senders that leave Nagle's algorithm on (dcmtk does unless TCP_NODELAY=1 is set)
        // hold back the rest of a message until it is acknowledged; a delayed ACK here cost
        // 40 ms per instance (measured 46 ms/instance with storescu, 3.3 ms with quick ACKs).
        // Linux re-enters delayed-ACK mode on its own, so this is set before every read.
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&*association.inner_stream()).set_tcp_quickack(true);
        let pdu = association
            .receive()
            .map_err(|e| AssociationError::Network(e.to_string()))?;
        match pdu {
            Pdu::PData { data: values } => {
                for value in values {
                    match value.value_type {
                        PDataValueType::Command => {
                            session.on_command(&mut association, value)?;
                        }
                        PDataValueType::Data => {
                            session.on_data(&mut association, value, options, audit)?;
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP);
                return Ok(());
            }
            Pdu::AbortRQ { .. } => return Ok(()),
            _ => {}
        }
    }
}

type Association = dicom_ul::ServerAssociation<TcpStream>;

/// Accepts the association (our AE title, an allowed calling title); a refusal is audited.
fn establish(
    stream: TcpStream,
    peer: SocketAddr,
    options: &ReceiveOptions,
    audit: &AuditLog,
) -> std::result::Result<Association, AssociationError> {
    stream
        .set_nonblocking(false)
        .map_err(|e| AssociationError::Network(e.to_string()))?;
    // Each response is a small PDU written in pieces; with Nagle's algorithm and the peer's
    // delayed ACK every C-STORE would stall ~40 ms (measured: 51 ms per instance → see
    // docs/benchmarks.md).
    stream
        .set_nodelay(true)
        .map_err(|e| AssociationError::Network(e.to_string()))?;
    let scp = ServerAssociationOptions::new()
        .ae_access_control(AllowList(options.allowed_calling.clone()))
        .ae_title(options.ae_title.as_str())
        .with_abstract_syntax(VERIFICATION)
        // Any storage SOP class: the decoder decides what it can screen, and refuses the rest
        // into failed/ with a reason, where a person will see it.
        .promiscuous(true)
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60));
    scp.establish(stream).map_err(|e| {
        let mut record = AuditRecord::now(AuditEvent::AssociationRejected);
        record.error = Some(e.to_string());
        record.detail = Some(serde_json::json!({ "peer": peer.to_string() }));
        let _ = audit.append(&record);
        AssociationError::Establish(e.to_string())
    })
}

/// What an association has received so far: the command and data set being assembled from
/// their fragments, and the C-STORE request whose data set is awaited.
struct Session {
    calling: String,
    peer: SocketAddr,
    command: Vec<u8>,
    data: Vec<u8>,
    pending: Option<Command>,
}

impl Session {
    /// A command fragment; once the command is whole, an echo is answered, a store request
    /// awaits its data set, anything else is answered "unrecognized operation".
    fn on_command(
        &mut self,
        association: &mut Association,
        value: PDataValue,
    ) -> std::result::Result<(), AssociationError> {
        if self.command.len() + value.data.len() > MAX_COMMAND_BYTES {
            return Err(AssociationError::Command(format!(
                "command set larger than {MAX_COMMAND_BYTES} bytes"
            )));
        }
        self.command.extend_from_slice(&value.data);
        if !value.is_last {
            return Ok(());
        }
        let parsed = parse_command(&self.command)?;
        self.command.clear();
        self.data.clear();
        if parsed.field == C_ECHO_RQ {
            let rsp = response(&parsed, 0x8030, STATUS_SUCCESS);
            send_command(association, value.presentation_context_id, rsp)?;
        } else if parsed.field == C_STORE_RQ {
            self.pending = Some(parsed);
        } else {
            // Not a service we provide (C-FIND, C-MOVE...): "unrecognized operation" with the
            // response command of the same type.
            let rsp = response(&parsed, parsed.field | 0x8000, 0x0211);
            send_command(association, value.presentation_context_id, rsp)?;
        }
        Ok(())
    }

    /// A data set fragment; once the data set is whole, the instance is stored (and audited)
    /// and the C-STORE answered with the outcome.
    fn on_data(
        &mut self,
        association: &mut Association,
        value: PDataValue,
        options: &ReceiveOptions,
        audit: &AuditLog,
    ) -> std::result::Result<(), AssociationError> {
        if self.data.len() + value.data.len() > MAX_INSTANCE_BYTES {
            return Err(AssociationError::Command(
                "instance larger than 1 GiB".into(),
            ));
        }
        self.data.extend_from_slice(&value.data);
        if !value.is_last {
            return Ok(());
        }
        let Some(request) = self.pending.take() else {
            return Err(AssociationError::Command(
                "data set without a C-STORE request".into(),
            ));
        };
        let transfer_syntax = association
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == value.presentation_context_id)
            .map(|pc| pc.transfer_syntax.clone());
        let status = match transfer_syntax {
            None => STATUS_CANNOT_UNDERSTAND,
            Some(ts) => self.store_instance(&request, &ts, options, audit),
        };
        self.data.clear();
        let rsp = response(&request, 0x8001, status);
        send_command(association, value.presentation_context_id, rsp)
    }

    /// Stores the data set received for `request` and audits it; the C-STORE status.
    fn store_instance(
        &self,
        request: &Command,
        transfer_syntax: &str,
        options: &ReceiveOptions,
        audit: &AuditLog,
    ) -> u16 {
        let bytes = match part10_bytes(request, transfer_syntax, &self.data) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("scanside: receive: cannot store: {e}");
                return STATUS_CANNOT_UNDERSTAND;
            }
        };
        if let Some(refusal) = refusal(options.refuse.as_ref(), &bytes) {
            let mut record = AuditRecord::now(AuditEvent::InstanceRefused);
            record.refused_by = Some(refusal);
            record.detail = Some(serde_json::json!({
                "calling_ae": self.calling,
                "peer": self.peer.to_string(),
                "sop_instance_uid": request.sop_instance_uid,
            }));
            return match audit.append(&record) {
                Ok(()) => STATUS_NOT_SUPPORTED,
                Err(_) => STATUS_OUT_OF_RESOURCES,
            };
        }
        match store(&options.drop_dir, request, &bytes) {
            Ok(path) => {
                let mut record = AuditRecord::now(AuditEvent::Received);
                record.input = Some(path.display().to_string());
                record.detail = Some(serde_json::json!({
                    "calling_ae": self.calling,
                    "peer": self.peer.to_string(),
                    "sop_instance_uid": request.sop_instance_uid,
                    "transfer_syntax": transfer_syntax,
                }));
                match audit.append(&record) {
                    Ok(()) => STATUS_SUCCESS,
                    Err(e) => unstore_unaudited(&path, &e),
                }
            }
            Err(e) => {
                eprintln!("scanside: receive: cannot store: {e}");
                STATUS_OUT_OF_RESOURCES
            }
        }
    }
}

/// An instance stored but not audited is taken back and refused, so the modality keeps it and
/// sends it again: every instance the site accepted has its audit record. (Should the watcher
/// have claimed it in between, it is screened; its own audit records then fail loudly too.)
fn unstore_unaudited(path: &Path, audit_error: &Error) -> u16 {
    eprintln!(
        "scanside: receive: {}: refused, the audit log cannot record it: {audit_error}",
        path.display()
    );
    if let Err(e) = std::fs::remove_file(path) {
        eprintln!("scanside: receive: cannot remove {}: {e}", path.display());
    }
    STATUS_OUT_OF_RESOURCES
}

/// The parts of a DIMSE request the responses need.
#[derive(Debug, Clone)]
struct Command {
    field: u16,
    message_id: u16,
    sop_class_uid: String,
    sop_instance_uid: String,
}

/// Reads one DIMSE command set as the receiver does, for a peer's bytes (the fuzz target's
/// entry): the command field, or why the set was refused.
pub fn read_command_set(bytes: &[u8]) -> std::result::Result<u16, String> {
    parse_command(bytes)
        .map(|c| c.field)
        .map_err(|e| e.to_string())
}

fn parse_command(bytes: &[u8]) -> std::result::Result<Command, AssociationError> {
    let elements = command_elements(bytes).map_err(AssociationError::Command)?;
    let value = |tag: dicom_core::Tag| {
        elements
            .iter()
            .find(|(element, _)| *element == tag.element())
            .map(|(_, v)| *v)
    };
    let uint = |tag: dicom_core::Tag| match value(tag) {
        Some(&[lo, hi]) => Ok(u16::from_le_bytes([lo, hi])),
        _ => Err(AssociationError::Command(format!("missing or bad {tag}"))),
    };
    let text = |tag| {
        value(tag)
            .map(|v| {
                String::from_utf8_lossy(v)
                    .trim_end_matches(['\0', ' '])
                    .to_string()
            })
            .unwrap_or_default()
    };
    Ok(Command {
        field: uint(tags::COMMAND_FIELD)?,
        message_id: uint(tags::MESSAGE_ID)?,
        sop_class_uid: text(tags::AFFECTED_SOP_CLASS_UID),
        sop_instance_uid: text(tags::AFFECTED_SOP_INSTANCE_UID),
    })
}

fn response(request: &Command, field: u16, status: u16) -> InMemDicomObject {
    let mut elements = vec![
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [field])),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            dicom_value!(U16, [request.message_id]),
        ),
        // 0x0101: no data set follows.
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [0x0101]),
        ),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status])),
    ];
    if !request.sop_class_uid.is_empty() {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, request.sop_class_uid.as_str()),
        ));
    }
    if !request.sop_instance_uid.is_empty() {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, request.sop_instance_uid.as_str()),
        ));
    }
    InMemDicomObject::command_from_element_iter(elements)
}

fn send_command<S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket>(
    association: &mut dicom_ul::ServerAssociation<S>,
    presentation_context_id: u8,
    command: InMemDicomObject,
) -> std::result::Result<(), AssociationError> {
    let bytes = encode_command(&command).map_err(AssociationError::Command)?;
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes,
            }],
        })
        .map_err(|e| AssociationError::Network(e.to_string()))
}

/// Writes one instance as a Part-10 file into `dir` (atomically, durably) and returns its path.
/// The rule a received instance (Part 10 bytes) fails, when the receiver refuses misfits; an
/// instance whose header cannot be read is stored, for the screener to report.
fn refusal(rules: Option<&InputRules>, bytes: &[u8]) -> Option<String> {
    let attributes = decode::dicom_attributes_from_bytes(Path::new("received"), bytes).ok()?;
    rules?.check_dicom(&attributes).err().map(|r| r.0)
}

/// A received data set as a DICOM Part 10 file: preamble, file meta information, data set.
fn part10_bytes(
    request: &Command,
    transfer_syntax: &str,
    dataset: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(request.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(request.sop_instance_uid.as_str())
        .transfer_syntax(transfer_syntax.trim_end_matches('\0'))
        .build()
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(dataset.len() + 512);
    bytes.extend_from_slice(&[0; 128]);
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes).map_err(|e| e.to_string())?;
    bytes.extend_from_slice(dataset);
    Ok(bytes)
}

/// Writes a received instance into the drop folder, named by its SOP Instance UID.
fn store(dir: &Path, request: &Command, bytes: &[u8]) -> Result<PathBuf> {
    let uid = request.sop_instance_uid.as_str();
    // A UID is digits and dots; anything else would be a path trick.
    let name = if super::is_uid(uid) {
        format!("{uid}.dcm")
    } else {
        format!("instance-{}.dcm", request.message_id)
    };
    let path = dir.join(name);
    // The temp name ends in `.part`, which the drop-folder scan ignores.
    write_atomically(&path, bytes)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(command: InMemDicomObject) -> Vec<u8> {
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut bytes = Vec::new();
        command.write_dataset_with_ts(&mut bytes, &ts).unwrap();
        bytes
    }

    #[test]
    fn a_command_set_written_by_dicom_rs_reads_back() {
        let request = InMemDicomObject::command_from_element_iter([
            DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_STORE_RQ])),
            DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [7])),
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                dicom_value!(Str, "1.2.840.10008.5.1.4.1.1.7"),
            ),
            DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                dicom_value!(Str, "1.2.3"),
            ),
        ]);
        let parsed = parse_command(&encoded(request)).unwrap();
        assert_eq!((parsed.field, parsed.message_id), (C_STORE_RQ, 7));
        assert_eq!(parsed.sop_class_uid, "1.2.840.10008.5.1.4.1.1.7");
        assert_eq!(parsed.sop_instance_uid, "1.2.3");
    }

    #[test]
    fn a_command_set_with_an_odd_value_length_is_refused_without_a_huge_allocation() {
        // The cargo-fuzz artifact: (0009,0000) with 89 bytes, then 7 bytes. dicom-rs read the
        // next header out of step and reserved the 4 GB it claimed.
        let mut bytes = vec![0x09, 0x00, 0x00, 0x00, 0x59, 0x00, 0x00, 0x00];
        bytes.extend(std::iter::repeat_n(0, 89));
        bytes.extend_from_slice(&[0x9C, 0x0E, 0x00, 0xFF, 0xFF, 0xFE, 0xFF]);
        let e = parse_command(&bytes).unwrap_err().to_string();
        assert!(e.contains("(0009,0000)"), "{e}");
        // In group 0000, a claimed length past the end is refused, not reserved.
        let mut bytes = vec![0x00, 0x00, 0x00, 0x01, 0xFF, 0xFF, 0xFE, 0xFF];
        bytes.extend_from_slice(&[0; 8]);
        let e = parse_command(&bytes).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
    }
}
