//! The unattended service: screens every image that appears in a drop folder (or arrives over
//! DICOM, [`receive`]) exactly once, crash-safely.
//!
//! One input's path through the folders (all renames stay on the input volume, so each step
//! is atomic):
//!
//! 1. `IN/name` — waiting; a file is taken only once its size and mtime have been stable for
//!    the settle time, and names starting with `.` or ending in `.part` are never taken.
//! 2. claim: renamed to `IN/.scanside-work/<claim>--name` (the claim id orders claims in time).
//! 3. screened in memory; the result is written to `OUT/name.json` (temp file, fsync, rename;
//!    `OUT/name.<claim>.json` when another input of the same name already has a result).
//! 4. commit: one line appended to the audit log ([`audit`]) and fsynced.
//! 5. moved to `IN/done/<claim>--name` (or `IN/failed/` with a `.reason.txt` beside it).
//!
//! On start-up, items left in the work area by a crash are finished: a committed one is only
//! moved (step 5), an uncommitted one is screened again and overwrites its own half-written
//! result (the same name, the same claim). If writing fails (disk full), the item stays in
//! the work area, the error is reported, and the service retries with backoff until the
//! write succeeds.

pub mod audit;
pub mod config;
mod dimse;
pub mod forward;
pub mod receive;
mod reports;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::bundle::sha256_hex;
use crate::decode::{self, DicomIdentity, DicomStudyHeader, FileFormat};
use crate::persist::write_atomically;
use crate::pipeline::Screener;
use crate::report::ScreeningResult;
use crate::sr::SrConfig;
use crate::study::{StudyInstance, StudyResult};
use crate::{Error, Result};
use audit::{AuditEvent, AuditLog, AuditRecord, Journal};

/// The hidden work area inside the input folder.
pub const WORK_DIR: &str = ".scanside-work";
/// Inputs whose result was written.
pub const DONE_DIR: &str = "done";
/// Inputs that could not be screened, each with a `.reason.txt`.
pub const FAILED_DIR: &str = "failed";

/// How the drop folder is watched.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The drop folder.
    pub in_dir: PathBuf,
    /// Where results go.
    pub out_dir: PathBuf,
    /// The audit log (default `OUT_DIR/audit.jsonl`).
    pub audit_log: PathBuf,
    /// How long a file's size and mtime must stay unchanged before it is taken.
    pub settle: Duration,
    /// Rescan interval when no file-system event arrives (the fallback for missed events).
    pub rescan: Duration,
    /// Inputs taken per scan; the rest wait for the next (bounds memory with huge backlogs).
    pub batch: usize,
    /// Return once the folder is empty and nothing is pending (batch runs, tests).
    pub exit_when_idle: bool,
    /// Write DICOM Structured Reports of studies (and instances) to `OUT/sr/`.
    pub sr: Option<SrConfig>,
    /// Where the reports are sent (each has a queue in `OUT/outbox/`).
    pub forward: Vec<forward::Destination>,
}

impl WatchOptions {
    /// Defaults for a drop folder: settle 2 s, rescan 5 s, batch 256, run until stopped.
    pub fn new(in_dir: PathBuf, out_dir: PathBuf) -> Self {
        let audit_log = out_dir.join("audit.jsonl");
        Self {
            in_dir,
            out_dir,
            audit_log,
            settle: Duration::from_secs(2),
            rescan: Duration::from_secs(5),
            batch: 256,
            exit_when_idle: false,
            sr: None,
            forward: Vec::new(),
        }
    }
}

/// The model the service screens with, as the audit log names it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The bundle's model id.
    pub id: String,
    /// SHA-256 of the model file.
    pub sha256: String,
    /// Whether the bundle's signature was verified.
    pub verified: bool,
}

/// What a run of the service did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Inputs screened (a result written).
    pub screened: usize,
    /// Inputs moved to `failed/`.
    pub failed: usize,
    /// Inputs whose bytes had been screened before.
    pub duplicates: usize,
    /// Items found in the work area at start-up (a crash interrupted them).
    pub recovered: usize,
}

/// One screening result as written to `OUT_DIR`: the runtime's result plus what identifies
/// the input.
#[derive(Debug, Serialize)]
struct StoredResult<'a> {
    claim_id: &'a str,
    input_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dicom: Option<&'a DicomIdentity>,
    #[serde(flatten)]
    result: &'a ScreeningResult,
}

/// A file in the work area.
#[derive(Debug, Clone)]
struct WorkItem {
    claim: String,
    /// The name it arrived with.
    name: String,
    path: PathBuf,
}

impl WorkItem {
    fn from_path(path: PathBuf) -> Option<Self> {
        let file_name = path.file_name()?.to_str()?.to_string();
        let (claim, name) = file_name.split_once("--")?;
        Some(Self {
            claim: claim.to_string(),
            name: name.to_string(),
            path,
        })
    }
}

/// The drop-folder service. Holds an exclusive lock on the work area while it lives.
pub struct Service {
    options: WatchOptions,
    screener: Screener,
    model: ModelInfo,
    audit: AuditLog,
    journal: Journal,
    /// name → (size, mtime, unchanged since).
    candidates: HashMap<OsString, (u64, SystemTime, Instant)>,
    last_claim: u128,
    summary: Summary,
    /// Study result files whose report is written (or cannot be), at the mtime checked.
    reported: HashMap<PathBuf, SystemTime>,
    _lock: File,
}

impl Service {
    /// Prepares the folders, takes the lock (a second service on the same folder is refused),
    /// and reads the journal.
    pub fn open(options: WatchOptions, screener: Screener, model: ModelInfo) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if !options.in_dir.is_dir() {
            return Err(Error::Io {
                path: options.in_dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the input folder does not exist",
                ),
            });
        }
        for dir in [WORK_DIR, DONE_DIR, FAILED_DIR] {
            let dir = options.in_dir.join(dir);
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        fs::create_dir_all(&options.out_dir).map_err(io(&options.out_dir))?;
        let lock_path = options.in_dir.join(WORK_DIR).join("lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.try_lock().map_err(|e| Error::Io {
            path: lock_path.clone(),
            source: std::io::Error::other(format!(
                "another scanside service is using this folder ({e})"
            )),
        })?;
        remove_stale_temp_files(&options.out_dir);
        let (audit, journal) = AuditLog::open(&options.audit_log)?;
        if journal.unreadable_lines > 0 {
            eprintln!(
                "scanside: warning: {}: {} unreadable line(s) skipped (a record torn by a crash)",
                audit.path().display(),
                journal.unreadable_lines
            );
        }
        Ok(Self {
            options,
            screener,
            model,
            audit,
            journal,
            candidates: HashMap::new(),
            last_claim: 0,
            summary: Summary::default(),
            reported: HashMap::new(),
            _lock: lock,
        })
    }

    /// The service's audit log, for the DICOM receiver's records.
    pub fn audit_log(&self) -> AuditLog {
        self.audit.clone()
    }

    /// What the audit log records as forwarded: (destination, queue file name).
    pub fn forwarded(&self) -> &std::collections::HashSet<(String, String)> {
        &self.journal.forwarded
    }

    /// Runs until `stop` is set (the current item is finished first) or, with
    /// `exit_when_idle`, until nothing is left. Errors only when the service cannot go on
    /// (e.g. the input folder vanished); output failures are retried.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<Summary> {
        self.summary.recovered = self.work_items()?.len();
        let mut start = AuditRecord::now(AuditEvent::ServiceStart);
        start.model_id = Some(self.model.id.clone());
        start.model_sha256 = Some(self.model.sha256.clone());
        start.model_verified = Some(self.model.verified);
        start.detail = Some(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "in_dir": self.options.in_dir,
            "out_dir": self.options.out_dir,
            "recovered": self.summary.recovered,
        }));
        // Best effort: on a full volume the service must still start and retry its items.
        if let Err(e) = self.audit.append(&start) {
            eprintln!("scanside: warning: {e}");
        }
        let (wake, events) = mpsc::sync_channel::<()>(1);
        // inotify where it works; the periodic rescan covers network file systems and a full
        // event queue.
        let _watcher = watch_events(&self.options.in_dir, wake);
        let mut backoff = Duration::from_millis(250);
        while !stop.load(Ordering::SeqCst) {
            // Leftovers first: a crash's, or ones whose output failed.
            let mut output_failed = false;
            for item in self.work_items()? {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(e) = self.finish(&item) {
                    self.report_output_error(&item, &e);
                    output_failed = true;
                    break;
                }
            }
            if output_failed {
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            backoff = Duration::from_millis(250);
            let (ready, waiting) = self.scan()?;
            for path in &ready {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(item) = self.claim(path)? {
                    if let Err(e) = self.finish(&item) {
                        self.report_output_error(&item, &e);
                        break;
                    }
                }
            }
            if !ready.is_empty() {
                continue;
            }
            let idle_exit =
                self.options.exit_when_idle && waiting == 0 && self.work_items()?.is_empty();
            // A batch run reports every study before it exits; a service waits until a study
            // has had no new instance for the stable time.
            self.write_study_reports(idle_exit);
            if idle_exit {
                break;
            }
            let wait = if waiting > 0 {
                self.options.settle.max(Duration::from_millis(50))
            } else {
                self.options.rescan
            };
            wait_for_event(&events, wait, stop);
        }
        let mut end = AuditRecord::now(AuditEvent::ServiceStop);
        end.detail = Some(serde_json::to_value(self.summary).unwrap_or_default());
        // Best effort: a full disk must not turn a clean stop into a failure.
        let _ = self.audit.append(&end);
        Ok(self.summary)
    }

    /// Lists the work area in claim order.
    fn work_items(&self) -> Result<Vec<WorkItem>> {
        let dir = self.options.in_dir.join(WORK_DIR);
        let mut items: Vec<WorkItem> = fs::read_dir(&dir)
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| WorkItem::from_path(e.path()))
            .collect();
        items.sort_by(|a, b| a.claim.cmp(&b.claim));
        Ok(items)
    }

    /// Files in the drop folder that are ready (stable for the settle time), oldest first,
    /// at most `batch`; and how many are still settling.
    fn scan(&mut self) -> Result<(Vec<PathBuf>, usize)> {
        let dir = &self.options.in_dir;
        let entries = fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let now = Instant::now();
        let mut seen = HashMap::new();
        let mut ready = Vec::new();
        let mut waiting = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let text = name.to_string_lossy();
            if text.starts_with('.') || text.ends_with(".part") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let stamp = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            let since = match self.candidates.get(&name) {
                Some(&(len, mtime, since)) if (len, mtime) == stamp => since,
                _ => now,
            };
            if now.duration_since(since) >= self.options.settle {
                ready.push((stamp.1, entry.path()));
            } else {
                waiting += 1;
            }
            seen.insert(name, (stamp.0, stamp.1, since));
        }
        self.candidates = seen;
        ready.sort();
        waiting += ready.len().saturating_sub(self.options.batch);
        ready.truncate(self.options.batch);
        Ok((ready.into_iter().map(|(_, p)| p).collect(), waiting))
    }

    /// Claims a ready file by renaming it into the work area. `None` when it vanished
    /// meanwhile (someone else took it).
    fn claim(&mut self, path: &Path) -> Result<Option<WorkItem>> {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            // Not UTF-8: it cannot be named in JSON faithfully; fail it with a reason.
            let claim = self.next_claim();
            let failed = self.options.in_dir.join(FAILED_DIR).join(format!(
                "{claim}--{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            fs::rename(path, &failed).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            return Ok(None);
        };
        let claim = self.next_claim();
        let work = self
            .options
            .in_dir
            .join(WORK_DIR)
            .join(format!("{claim}--{name}"));
        match fs::rename(path, &work) {
            Ok(()) => {
                sync_dir(&self.options.in_dir.join(WORK_DIR));
                sync_dir(&self.options.in_dir);
                Ok(WorkItem::from_path(work))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn next_claim(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.last_claim = now.max(self.last_claim + 1);
        format!("{:020x}", self.last_claim)
    }

    /// Screens (unless already committed), writes, commits and moves one work item. An `Err`
    /// is an output failure: the item stays in the work area.
    fn finish(&mut self, item: &WorkItem) -> Result<()> {
        if let Some(done) = self.journal.committed.get(&item.claim).cloned() {
            let dest = self.destination(item, done.event);
            return self.move_item(item, &dest);
        }
        let started = Instant::now();
        let bytes = match fs::read(&item.path) {
            Ok(bytes) => bytes,
            Err(source) => {
                return Err(Error::Io {
                    path: item.path.clone(),
                    source,
                })
            }
        };
        let sha = sha256_hex(&bytes);
        let display = self.options.in_dir.join(&item.name);
        let is_dicom = decode::sniff(&bytes) == Some(FileFormat::Dicom);
        let dicom = is_dicom
            .then(|| decode::dicom_identity_from_bytes(&display, &bytes).ok())
            .flatten();
        // The modules a report copies, kept only when reports are written.
        let header = (is_dicom && self.options.sr.is_some())
            .then(|| decode::dicom_study_header_from_bytes(&display, &bytes).ok())
            .flatten();
        let mut record = AuditRecord {
            claim_id: Some(item.claim.clone()),
            input: Some(display.display().to_string()),
            input_sha256: Some(sha.clone()),
            dicom: dicom.clone(),
            model_id: Some(self.model.id.clone()),
            model_sha256: Some(self.model.sha256.clone()),
            model_verified: Some(self.model.verified),
            ..AuditRecord::now(AuditEvent::Screened)
        };
        let key = (sha.clone(), self.model.sha256.clone());
        if let Some(earlier) = self.journal.screened.get(&key) {
            record.event = Some(AuditEvent::Duplicate);
            record.result_file = Some(earlier.clone());
            return self.commit_and_move(item, record);
        }
        match self.screener.screen_bytes(&display, &bytes, started) {
            Ok(result) => {
                let result_path = self.result_path(item)?;
                let stored = StoredResult {
                    claim_id: &item.claim,
                    input_sha256: &sha,
                    dicom: dicom.as_ref(),
                    result: &result,
                };
                write_json(&result_path, &stored)?;
                if let Some(study) = dicom.as_ref().and_then(|d| d.study_uid.as_deref()) {
                    let instance = self.study_instance(item, dicom.as_ref(), &result, &result_path);
                    let path = self.update_study(study, instance.clone(), header.as_ref())?;
                    record.detail = Some(serde_json::json!({ "study_file": path }));
                    if self.options.sr.as_ref().is_some_and(|c| c.per_instance) {
                        self.write_instance_report(study, instance, header)?;
                    }
                }
                record.status = Some(result.status);
                record.refused_by = result.refused_by.clone();
                record.top_class = result.top_class.clone();
                record.flags = Some(result.flags.clone());
                record.timings = Some(result.timings);
                record.result_file = Some(result_path.display().to_string());
                self.commit_and_move(item, record)
            }
            Err(e) => {
                record.event = Some(AuditEvent::Failed);
                record.error = Some(e.to_string());
                let dest = self.destination(item, AuditEvent::Failed);
                let reason_path = PathBuf::from(format!("{}.reason.txt", dest.display()));
                write_atomically(&reason_path, format!("{e}\n").as_bytes())?;
                eprintln!("scanside: failed: {e}");
                self.commit_and_move(item, record)
            }
        }
    }

    /// Folds one instance's result into its study's result, `OUT/studies/<study UID>.json`:
    /// per class the highest probability over the study's images, the union of flags, and
    /// the instances. Keyed by input name, so a redo after a crash replaces its own entry.
    fn update_study(
        &self,
        study_uid: &str,
        instance: StudyInstance,
        header: Option<&DicomStudyHeader>,
    ) -> Result<PathBuf> {
        let dir = self.options.out_dir.join("studies");
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        // A UID is digits and dots; anything else is hashed rather than trusted as a path.
        let file = if is_uid(study_uid) {
            format!("{study_uid}.json")
        } else {
            format!("{}.json", &sha256_hex(study_uid.as_bytes())[..32])
        };
        let path = dir.join(file);
        let mut study: StudyResult = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("unreadable study result: {e}")),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StudyResult::new(study_uid),
            Err(source) => return Err(Error::Io { path, source }),
        };
        if study.header.is_none() {
            study.header = header.cloned();
        }
        study.add(instance);
        study.aggregate(self.screener.class_names(), &self.model.id);
        write_json(&path, &study)?;
        Ok(path)
    }

    /// A screened work item as an instance of its study.
    fn study_instance(
        &self,
        item: &WorkItem,
        dicom: Option<&DicomIdentity>,
        result: &ScreeningResult,
        result_path: &Path,
    ) -> StudyInstance {
        let input = self.options.in_dir.join(&item.name).display().to_string();
        let mut instance = StudyInstance::of(input, dicom, result);
        instance.claim_id = Some(item.claim.clone());
        instance.result_file = Some(result_path.display().to_string());
        instance
    }

    fn commit_and_move(&mut self, item: &WorkItem, mut record: AuditRecord) -> Result<()> {
        let event = record.event.unwrap_or(AuditEvent::Screened);
        let dest = self.destination(item, event);
        record.moved_to = Some(dest.display().to_string());
        self.audit.append(&record)?;
        self.journal.note(&record);
        match event {
            AuditEvent::Failed => self.summary.failed += 1,
            AuditEvent::Duplicate => self.summary.duplicates += 1,
            _ => self.summary.screened += 1,
        }
        self.move_item(item, &dest)
    }

    fn destination(&self, item: &WorkItem, event: AuditEvent) -> PathBuf {
        let dir = if event == AuditEvent::Failed {
            FAILED_DIR
        } else {
            DONE_DIR
        };
        self.options
            .in_dir
            .join(dir)
            .join(format!("{}--{}", item.claim, item.name))
    }

    fn move_item(&self, item: &WorkItem, dest: &Path) -> Result<()> {
        fs::rename(&item.path, dest).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        sync_dir(&self.options.in_dir.join(WORK_DIR));
        Ok(())
    }

    /// `OUT/name.json`, unless that holds another claim's result: then `OUT/name.<claim>.json`.
    /// Deterministic for a claim, so a redo after a crash overwrites its own partial work.
    fn result_path(&self, item: &WorkItem) -> Result<PathBuf> {
        let plain = self.options.out_dir.join(format!("{}.json", item.name));
        let owner = match fs::read(&plain) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("claim_id")?.as_str().map(String::from)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(plain),
            Err(source) => {
                return Err(Error::Io {
                    path: plain,
                    source,
                })
            }
        };
        Ok(if owner.as_deref() == Some(item.claim.as_str()) {
            plain
        } else {
            self.options
                .out_dir
                .join(format!("{}.{}.json", item.name, item.claim))
        })
    }

    fn report_output_error(&self, item: &WorkItem, error: &Error) {
        eprintln!(
            "scanside: error: {error}; {} stays pending and will be retried",
            item.name
        );
        let record = AuditRecord {
            claim_id: Some(item.claim.clone()),
            input: Some(self.options.in_dir.join(&item.name).display().to_string()),
            error: Some(error.to_string()),
            ..AuditRecord::now(AuditEvent::OutputError)
        };
        // The log may be on the full volume too; stderr has the message either way.
        let _ = self.audit.append(&record);
    }
}

/// Removes temp files a crash left in the results folder (`.name.pid.part`, see
/// [`crate::persist`]); the service holds the folder's lock, so none is being written.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".part") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Pretty JSON with a final newline, written atomically.
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    write_atomically(path, &json)
}

/// Whether `s` is a DICOM UID (digits and dots, at most 64 characters), safe as a file name.
pub(crate) fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn sync_dir(dir: &Path) {
    // Makes renames durable; best effort where directories cannot be opened.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn wait_for_event(events: &mpsc::Receiver<()>, total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        match events.recv_timeout((end - now).min(Duration::from_millis(100))) {
            Ok(()) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                sleep_unless_stopped(end - now, stop);
                return;
            }
        }
    }
}

/// Starts an inotify (or platform) watcher that pokes `wake` on any change in `dir`; `None`
/// (with a warning) when the platform refuses, leaving the periodic rescan.
fn watch_events(dir: &Path, wake: mpsc::SyncSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = match notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        // A full channel already holds a wake-up.
        let _ = wake.try_send(());
    }) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("scanside: warning: file events unavailable ({e}); polling only");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        eprintln!(
            "scanside: warning: {}: cannot watch ({e}); polling only",
            dir.display()
        );
        return None;
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_item_names_split_at_the_first_separator() {
        let item = WorkItem::from_path(PathBuf::from("w/0001--a--b.dcm")).unwrap();
        assert_eq!(
            (item.claim.as_str(), item.name.as_str()),
            ("0001", "a--b.dcm")
        );
        assert!(WorkItem::from_path(PathBuf::from("w/lock")).is_none());
    }
}
