//! The service's plan: which bundle and keys, which folders, and whether to receive DICOM over
//! the network. Built from command-line flags (`scanside watch`, `scanside receive`) or read
//! from a TOML file (`scanside serve --config`, what the systemd unit runs); both end here, and
//! [`run`] is the one way the service starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::forward::{is_ae_title, Destination, Forwarder};
use super::receive::{self, ReceiveOptions};
use super::{ModelInfo, Service, Summary, WatchOptions};
use crate::bundle::{Bundle, SignatureStatus, Trust};
use crate::infer::EngineKind;
use crate::pipeline::Screener;
use crate::sr::SrConfig;
use crate::{Error, Result};

/// The whole service configuration (the TOML file's shape; see `runtime/deploy/scanside.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Public keys the bundle's signature must verify with (one is enough).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// Run an unsigned or unverifiable bundle (development only; warned in every log).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Which of the bundle's models screens.
    #[serde(default)]
    pub engine: EngineKind,
    /// Threads of one inference (images are screened one at a time); absent: all cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// The drop folder.
    pub in_dir: PathBuf,
    /// Results folder.
    pub out_dir: PathBuf,
    /// Audit log (default `OUT_DIR/audit.jsonl`).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Milliseconds a file must stay unchanged before it is taken.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Milliseconds between rescans when no file event arrives.
    #[serde(default = "default_rescan_ms")]
    pub rescan_ms: u64,
    /// Stop once the drop folder is empty (batch use).
    #[serde(default)]
    pub exit_when_idle: bool,
    /// The DICOM receiver; absent: drop folder only.
    #[serde(default)]
    pub receive: Option<ReceiveConfig>,
    /// DICOM Structured Reports of the results (`OUT/sr/`); absent: JSON results only.
    #[serde(default)]
    pub sr: Option<SrConfig>,
    /// Destinations the reports are sent to with C-STORE (`[[forward]]` tables).
    #[serde(default)]
    pub forward: Vec<Destination>,
}

/// The `[receive]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConfig {
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: IpAddr,
    /// This node's AE title.
    #[serde(default = "default_ae_title")]
    pub ae_title: String,
    /// Calling AE titles accepted; empty accepts any.
    #[serde(default)]
    pub allowed_calling_ae: Vec<String>,
    /// Concurrent associations.
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Refuse instances failing the bundle's DICOM input rules (C-STORE status 0x0122, the
    /// sender keeps them) instead of storing them and reporting them `not_applicable`.
    #[serde(default)]
    pub refuse_not_applicable: bool,
}

fn default_settle_ms() -> u64 {
    2000
}
fn default_rescan_ms() -> u64 {
    5000
}
fn default_port() -> u16 {
    11112
}
fn default_listen() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_ae_title() -> String {
    "SCANSIDE".into()
}
fn default_max_associations() -> usize {
    4
}

impl ServiceConfig {
    /// Reads and checks a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what serde cannot: keys or an explicit opt-out, a usable AE title.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::Config {
                path: path.to_path_buf(),
                reason: reason.into(),
            })
        };
        if self.public_keys.is_empty() && !self.allow_unsigned {
            return bad("public_keys is empty: name the key(s) the bundle must be signed with");
        }
        if !self.public_keys.is_empty() && self.allow_unsigned {
            return bad("public_keys and allow_unsigned exclude each other");
        }
        if self.threads == Some(0) {
            return bad("threads must be at least 1");
        }
        if let Some(r) = &self.receive {
            if !is_ae_title(&r.ae_title) {
                return bad("receive.ae_title must be 1-16 printable ASCII characters");
            }
            if r.max_associations == 0 {
                return bad("receive.max_associations must be at least 1");
            }
        }
        if let Some(sr) = &self.sr {
            sr.validate(path)?;
        }
        if !self.forward.is_empty() && self.sr.is_none() {
            return bad("forward sends the DICOM reports: it needs the [sr] table (or --sr)");
        }
        let mut names = std::collections::HashSet::new();
        for destination in &self.forward {
            destination.validate(path)?;
            if !names.insert(destination.queue_name()) {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    reason: format!(
                        "forward: two destinations named {:?} (set `name` apart)",
                        destination.queue_name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The keys the bundle must verify with.
    pub fn trust(&self) -> Result<Trust> {
        Trust::from_key_files(&self.public_keys, self.allow_unsigned)
    }

    fn watch_options(&self) -> WatchOptions {
        let mut options = WatchOptions::new(self.in_dir.clone(), self.out_dir.clone());
        if let Some(audit) = &self.audit_log {
            options.audit_log = audit.clone();
        }
        options.settle = Duration::from_millis(self.settle_ms);
        options.rescan = Duration::from_millis(self.rescan_ms.max(10));
        options.exit_when_idle = self.exit_when_idle;
        options.sr = self.sr.clone();
        options.forward = self.forward.clone();
        options
    }
}

/// Starts the service: verifies and loads the bundle, opens the folders and the audit log,
/// binds the DICOM port when configured, then screens until `stop` is set (or, with
/// `exit_when_idle`, until nothing is left). The receiver stops with the service.
pub fn run(config: &ServiceConfig, stop: &AtomicBool) -> Result<Summary> {
    let bundle = Bundle::load(&config.bundle, &config.trust()?)?;
    let threads = config.threads.unwrap_or_else(crate::infer::all_cores);
    let screener = Screener::with_engine(&bundle, config.engine)?.with_threads(threads)?;
    let model = ModelInfo {
        id: bundle.model_id().to_string(),
        sha256: bundle.manifest.model.sha256.clone(),
        verified: matches!(bundle.signature, SignatureStatus::Verified(_)),
    };
    let options = config.watch_options();
    let mut service = Service::open(options, screener, model)?;
    let listener = match &config.receive {
        Some(r) => {
            let receive = ReceiveOptions {
                listen: SocketAddr::new(r.listen, r.port),
                ae_title: r.ae_title.clone(),
                allowed_calling: r.allowed_calling_ae.clone(),
                drop_dir: config.in_dir.clone(),
                max_associations: r.max_associations,
                refuse: r
                    .refuse_not_applicable
                    .then(|| bundle.manifest.input_rules.clone())
                    .flatten()
                    .filter(|rules| !rules.dicom.is_empty()),
            };
            Some((receive::bind(&receive)?, receive))
        }
        None => None,
    };
    let audit = service.audit_log();
    let mut forwarders: Vec<Forwarder> = config
        .forward
        .iter()
        .map(|d| {
            Forwarder::new(
                d.clone(),
                &config.out_dir,
                audit.clone(),
                service.forwarded(),
            )
        })
        .collect();
    let receiver_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for forwarder in &mut forwarders {
            let receiver_stop = &receiver_stop;
            scope.spawn(move || forwarder.run(receiver_stop));
        }
        if let Some((listener, receive)) = listener {
            let (audit, receiver_stop) = (audit.clone(), &receiver_stop);
            eprintln!(
                "scanside: receiving DICOM as {} on {}",
                receive.ae_title, receive.listen
            );
            scope.spawn(move || {
                receive::serve(listener, receive, audit, receiver_stop);
            });
        }
        let outcome = service.run(stop);
        receiver_stop.store(true, Ordering::SeqCst);
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_bad_ones_name_the_problem() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/scanside.toml");
        let config = ServiceConfig::from_file(&example).unwrap();
        assert_eq!(config.receive.as_ref().unwrap().port, 11112);
        let sr = config.sr.as_ref().expect("the example writes reports");
        assert!(!sr.uid_root.is_empty() && sr.stable_seconds > 0, "{sr:?}");
        assert_eq!(config.forward.len(), 1);
        assert_eq!(config.forward[0].queue_name(), "pacs");
        assert!(!config.allow_unsigned && !config.public_keys.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            ServiceConfig::from_file(&path).unwrap_err().to_string()
        };
        let base = "bundle = \"b\"\nin_dir = \"i\"\nout_dir = \"o\"\n";
        let err = write("nokeys.toml", base);
        assert!(
            err.contains("nokeys.toml") && err.contains("public_keys"),
            "{err}"
        );
        let err = write(
            "typo.toml",
            &format!("{base}public_keys=[\"k\"]\nsettle_msec = 5\n"),
        );
        assert!(
            err.contains("typo.toml") && err.contains("settle_msec"),
            "{err}"
        );
        let err = write(
            "ae.toml",
            &format!(
                "{base}allow_unsigned = true\n[receive]\nae_title = \"A_TITLE_FAR_TOO_LONG\"\n"
            ),
        );
        assert!(err.contains("ae_title"), "{err}");
        let err = write(
            "sr.toml",
            &format!("{base}allow_unsigned = true\n[sr]\nuid_root = \"1.2.03\"\n"),
        );
        assert!(err.contains("sr.toml") && err.contains("uid_root"), "{err}");
        let err = write(
            "srtypo.toml",
            &format!("{base}allow_unsigned = true\n[sr]\nstable_secs = 5\n"),
        );
        assert!(err.contains("stable_secs"), "{err}");
        let destination = "[[forward]]\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n";
        let err = write(
            "nosr.toml",
            &format!("{base}allow_unsigned = true\n{destination}"),
        );
        assert!(err.contains("nosr.toml") && err.contains("[sr]"), "{err}");
        let err = write(
            "twice.toml",
            &format!("{base}allow_unsigned = true\n[sr]\n{destination}{destination}"),
        );
        assert!(err.contains("two destinations"), "{err}");
    }
}
