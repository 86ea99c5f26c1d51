//! The command line of `scanside`: one clap struct per subcommand, and the step from parsed
//! flags to the library's typed settings (a bundle with its trust, a service configuration).
//! Nothing here screens, decodes or writes files.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::examples;
use scanside_runtime::bundle::{Bundle, Trust};
use scanside_runtime::infer::{all_cores, EngineKind};
use scanside_runtime::sr::SrConfig;
use scanside_runtime::validate::ValidateConfig;
use scanside_runtime::watch::config::{ReceiveConfig, ServiceConfig};
use scanside_runtime::watch::forward::Destination;

#[derive(Parser)]
#[command(
    name = "scanside",
    version,
    about = "Screen medical images offline with a scanside model bundle"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Screen image files (PNG, JPEG, DICOM); prints one JSON object per image on stdout.
    #[command(after_help = examples::SCREEN)]
    Screen(ScreenArgs),
    /// Measure a bundle's models: cold start, first inference, p50/p99 latency, throughput and
    /// peak memory, on the given images or on synthetic inputs; prints one JSON object.
    #[command(after_help = examples::BENCH)]
    Bench(BenchArgs),
    /// Show what the decoder reads from image files (size, format, DICOM modality, photometric
    /// interpretation, bits, windowing applied, value range): one JSON object per file; with
    /// --png, also write each decoded, windowed image as a 16-bit PNG.
    #[command(after_help = examples::INSPECT)]
    Inspect(InspectArgs),
    /// Write golden test vectors for the firmware: OUT/model.i8 (the bundle's verified int8
    /// blob) and OUT/vectors.bin (each image's quantised input and the host's int8 output).
    #[command(after_help = examples::MCU_VECTORS)]
    McuVectors(McuVectorsArgs),
    /// Watch a drop folder: screen each image that appears exactly once, write
    /// OUT/<name>.json, append to the audit log, move the input to IN_DIR/done (unreadable ones
    /// to IN_DIR/failed with a reason). Crash-safe; SIGTERM finishes the current image, then
    /// stops.
    #[command(after_help = examples::WATCH)]
    Watch(WatchArgs),
    /// Receive DICOM instances over the network (C-STORE SCP, answers C-ECHO) into IN_DIR and
    /// screen them as `watch` does; files dropped into IN_DIR are screened too.
    #[command(after_help = examples::RECEIVE)]
    Receive(ReceiveArgs),
    /// Run the service (drop folder, and the DICOM receiver when configured) from a TOML file;
    /// see runtime/deploy/scanside.toml.
    #[command(after_help = examples::SERVE)]
    Serve(ServeArgs),
    /// Site acceptance: screen a site's labelled images exactly as `screen` does, measure AUC,
    /// sensitivity and specificity at the bundle's thresholds with intervals resampled by
    /// patient, and compare them with the bundle's own evaluation; prints one JSON object and
    /// exits 1 when a figure falls below the record by more than the margin.
    #[command(after_help = examples::VALIDATE)]
    Validate(ValidateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (scanside.1 and one per subcommand) into a folder.
    #[command(after_help = examples::MAN)]
    Man {
        /// Folder to write them into.
        #[arg(long)]
        out: PathBuf,
    },
}

// `scanside screen`.
#[derive(clap::Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Which model of the bundle runs: fp32 (the direct engine on x86-64 with AVX2/FMA for
    /// the graphs it knows, tract otherwise), tract (fp32 on tract), int8 (the int8 core;
    /// bundles exported with the `mcu` target) or qdq (the QDQ ONNX twin on tract).
    #[arg(long, default_value = "fp32")]
    pub engine: EngineKind,
    /// Images screened at once (default: the number of cores); output stays in input order.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Threads of each inference (default: the cores left per image at once, so one image
    /// runs on all cores and many run one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// After the per-image lines, one JSON object per DICOM study: per class the highest
    /// probability over its screened instances, the union of their flags, counts per status,
    /// the instances (what `watch` writes to OUT/studies/).
    #[arg(long)]
    pub by_study: bool,
    /// Only the study lines (implies --by-study).
    #[arg(long)]
    pub studies_only: bool,
    /// Images to screen: files, folders (walked recursively; hidden entries and files that are
    /// not PNG, JPEG or DICOM skipped) or DICOMDIR files (the instances they reference).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

impl ScreenArgs {
    /// The threads to screen on: `--jobs`, else one per core.
    pub fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(all_cores)
    }

    /// Threads of each inference when screening `files` images: `--threads`, else the cores
    /// divided among the images screened at once.
    pub fn threads(&self, files: usize) -> usize {
        self.threads.map_or_else(
            || (all_cores() / self.jobs().clamp(1, files.max(1))).max(1),
            |t| t as usize,
        )
    }
}

// `scanside bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Engines to measure, comma-separated.
    #[arg(long, default_value = "fp32,int8", value_delimiter = ',')]
    pub engine: Vec<EngineKind>,
    /// Timed inferences per engine.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Untimed inferences before timing.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Threads of each inference (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Images to run (decoded and preprocessed before timing; files, folders or DICOMDIRs);
    /// none: synthetic inputs.
    pub files: Vec<PathBuf>,
}

// `scanside inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Folder for OUT_DIR/<file name>.png.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Folder for DIR/<file name>.f32: a DICOM file's first frame before windowing
    /// (modality-LUT values; RGB for colour), little-endian f32, rows × columns × channels,
    /// and NAME.windowed.f32, the same after VOI (window or VOI LUT) mapped to 0..1;
    /// for comparing the decoder with other toolkits (tools/dicom_corpus.py).
    #[arg(long, value_name = "DIR")]
    pub values: Option<PathBuf>,
    /// Files to read: files, folders (recursive) or DICOMDIR files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

// `scanside mcu-vectors`.
#[derive(clap::Args)]
pub struct McuVectorsArgs {
    /// A bundle exported with the `mcu` target.
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Images (PNG, JPEG, DICOM): files, folders (recursive) or DICOMDIR files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

// `scanside watch`.
#[derive(clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Which model of the bundle screens: fp32, tract, int8 or qdq.
    #[arg(long, default_value = "fp32")]
    pub engine: EngineKind,
    /// The drop folder, given as `--in IN_DIR` (as `receive` takes it) or as the last word.
    #[arg(
        long = "in",
        value_name = "IN_DIR",
        required_unless_present = "in_dir_word"
    )]
    pub in_dir: Option<PathBuf>,
    #[arg(value_name = "IN_DIR", conflicts_with = "in_dir", hide = true)]
    pub in_dir_word: Option<PathBuf>,
    /// Results folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl WatchArgs {
    /// The service configuration these flags describe.
    pub fn config(self) -> ServiceConfig {
        let in_dir = self
            .in_dir
            .or(self.in_dir_word)
            .expect("clap requires --in or IN_DIR");
        self.service
            .config(self.bundle, self.engine, in_dir, self.out)
    }
}

// `scanside receive`.
#[derive(clap::Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Which model of the bundle screens: fp32, tract, int8 or qdq.
    #[arg(long, default_value = "fp32")]
    pub engine: EngineKind,
    /// Folder where received instances are stored for screening.
    #[arg(long = "in", value_name = "IN_DIR")]
    pub in_dir: PathBuf,
    /// Results folder.
    #[arg(long)]
    pub out: PathBuf,
    /// TCP port.
    #[arg(long, default_value_t = 11112)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// This node's AE title; associations calling another are refused.
    #[arg(long, default_value = "SCANSIDE")]
    pub ae_title: String,
    /// Accept only this calling AE title (repeat for several); default: any.
    #[arg(long = "allow-calling-ae", value_name = "AE_TITLE")]
    pub allowed_calling_ae: Vec<String>,
    /// Concurrent associations.
    #[arg(long, default_value_t = 4)]
    pub max_associations: usize,
    /// Refuse instances that fail the bundle's DICOM input rules (C-STORE status 0x0122: the
    /// sender keeps them) rather than store them and report them not_applicable.
    #[arg(long)]
    pub refuse_not_applicable: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl ReceiveArgs {
    /// The service configuration these flags describe, the receiver included.
    pub fn config(self) -> ServiceConfig {
        let mut config = self
            .service
            .config(self.bundle, self.engine, self.in_dir, self.out);
        config.receive = Some(ReceiveConfig {
            port: self.port,
            listen: self.listen,
            ae_title: self.ae_title,
            allowed_calling_ae: self.allowed_calling_ae,
            max_associations: self.max_associations,
            refuse_not_applicable: self.refuse_not_applicable,
        });
        config
    }
}

// `scanside validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Which model of the bundle screens: fp32, tract, int8 or qdq.
    #[arg(long, default_value = "fp32")]
    pub engine: EngineKind,
    /// Labelled images: a folder with one sub-folder per class, or a CSV with columns path,
    /// label and optionally group (patient or lesion id).
    #[arg(long)]
    pub data: PathBuf,
    /// How far a site's figure may fall below the recorded one (the recorded interval's lower
    /// end for the macro AUC) before the check fails.
    #[arg(long, default_value_t = 0.05)]
    pub margin: f64,
    /// Bootstrap resamples per interval.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images screened at once (default: one per core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also write the report as an HTML page with each class's ROC curve.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl ValidateArgs {
    /// The check's settings.
    pub fn config(&self) -> ValidateConfig {
        let mut config = ValidateConfig::new(self.data.clone());
        config.margin = self.margin;
        config.resamples = self.resamples;
        config.seed = self.seed;
        if let Some(jobs) = self.jobs {
            config.jobs = jobs;
        }
        config
    }
}

// `scanside serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Threads of each inference, over the file's `threads` (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
}

impl ServeArgs {
    /// The configuration file's settings, with `--threads` over the file's.
    pub fn config(&self) -> anyhow::Result<ServiceConfig> {
        let mut config = ServiceConfig::from_file(&self.config)?;
        if let Some(threads) = self.threads {
            config.threads = Some(threads as usize);
        }
        Ok(config)
    }
}

/// Settings shared by `watch` and `receive`.
#[derive(clap::Args)]
pub struct ServiceArgs {
    /// Audit log (JSONL, append-only; default OUT/audit.jsonl).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Milliseconds a file's size and mtime must stay unchanged before it is taken.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Milliseconds between rescans when no file event arrives.
    #[arg(long, default_value_t = 5000)]
    rescan_ms: u64,
    /// Stop once the folder is empty and nothing is pending (batch runs).
    #[arg(long)]
    exit_when_idle: bool,
    /// Threads of each inference (images are screened one at a time; default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Write a DICOM Structured Report of each study's result to OUT/sr/ (once the study has
    /// had no new instance for --sr-stable-seconds; at exit with --exit-when-idle).
    #[arg(long)]
    sr: bool,
    /// UID root for the reports' series and instances (default: 2.25 UUID-derived UIDs).
    #[arg(long, requires = "sr", value_name = "UID_ROOT")]
    sr_uid_root: Option<String>,
    /// Seconds without a new instance before a study's report is written.
    #[arg(long, requires = "sr", value_name = "SECONDS")]
    sr_stable_seconds: Option<u64>,
    /// Also write one report per instance as soon as it is screened.
    #[arg(long, requires = "sr")]
    sr_per_instance: bool,
    /// The statement every report carries (default: not for diagnostic use).
    #[arg(long, requires = "sr", value_name = "TEXT")]
    sr_disclaimer: Option<String>,
    /// Send each report with C-STORE to this DICOM node (repeat for several); queued in
    /// OUT/outbox/AE_TITLE/ and retried with backoff while the node is down.
    #[arg(long, requires = "sr", value_name = "AE_TITLE@HOST:PORT", value_parser = Destination::parse)]
    forward: Vec<Destination>,
    /// This node's AE title when forwarding.
    #[arg(
        long,
        requires = "forward",
        default_value = "SCANSIDE",
        value_name = "AE_TITLE"
    )]
    forward_calling_ae: String,
    /// First retry delay after a failed send (doubled up to 5 minutes).
    #[arg(long, requires = "forward", default_value_t = 5000, value_name = "MS")]
    forward_retry_ms: u64,
}

impl ServiceArgs {
    fn config(
        self,
        bundle: BundleArgs,
        engine: EngineKind,
        in_dir: PathBuf,
        out: PathBuf,
    ) -> ServiceConfig {
        ServiceConfig {
            bundle: bundle.bundle,
            public_keys: bundle.public_key,
            allow_unsigned: bundle.allow_unsigned,
            engine,
            threads: self.threads.map(|t| t as usize),
            in_dir,
            out_dir: out,
            audit_log: self.audit_log,
            settle_ms: self.settle_ms,
            rescan_ms: self.rescan_ms,
            exit_when_idle: self.exit_when_idle,
            receive: None,
            sr: self.sr.then(|| {
                let defaults = SrConfig::default();
                SrConfig {
                    uid_root: self.sr_uid_root.unwrap_or(defaults.uid_root),
                    disclaimer: self.sr_disclaimer.unwrap_or(defaults.disclaimer),
                    per_instance: self.sr_per_instance,
                    stable_seconds: self.sr_stable_seconds.unwrap_or(defaults.stable_seconds),
                }
            }),
            forward: self
                .forward
                .into_iter()
                .map(|d| Destination {
                    calling_ae_title: self.forward_calling_ae.clone(),
                    retry_ms: self.forward_retry_ms,
                    retry_max_ms: d.retry_max_ms.max(self.forward_retry_ms),
                    ..d
                })
                .collect(),
        }
    }
}

/// Which bundle, and which keys it must be signed with.
#[derive(clap::Args)]
pub struct BundleArgs {
    /// Bundle directory written by `scanside-train export`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Public key (`scanside-train keygen`) whose signature the bundle must carry; repeat
    /// to trust several.
    #[arg(long, required_unless_present = "allow_unsigned")]
    public_key: Vec<PathBuf>,
    /// Load the bundle without checking its signature (development only; loudly warned).
    #[arg(long, conflicts_with = "public_key")]
    allow_unsigned: bool,
}

impl BundleArgs {
    /// Loads the bundle, its signature verified with the given keys (or, with
    /// --allow-unsigned, unchecked and loudly warned).
    pub fn load(&self) -> anyhow::Result<Bundle> {
        Ok(Bundle::load(&self.bundle, &self.trust()?)?)
    }

    /// The keys to verify with, or no check (loudly warned).
    pub fn trust(&self) -> anyhow::Result<Trust> {
        if self.allow_unsigned {
            eprintln!(
                "scanside: WARNING: --allow-unsigned: the model's origin is NOT verified; \
                 results are marked model_verified=false"
            );
        }
        Ok(Trust::from_key_files(
            &self.public_key,
            self.allow_unsigned,
        )?)
    }
}
