//! `scanside`: the edge runtime's command line. Parses arguments, calls the library, maps the
//! outcome to an exit code: 0 all images screened, 1 a failure (each named on stderr),
//! 2 usage error (from clap). Bundles must carry a signature by a trusted public key unless
//! `--allow-unsigned` is given.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scanside_int8::vectors;
use scanside_runtime::bundle::{Bundle, Trust};
use scanside_runtime::infer::{Engine, EngineKind, Screener};
use scanside_runtime::watch::config::{ReceiveConfig, ServiceConfig};
use scanside_runtime::{bench, decode, persist, preprocess, watch};

#[derive(Parser)]
#[command(
    name = "scanside",
    version,
    about = "Screen medical images offline with a scanside model bundle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Screen image files (PNG, JPEG, DICOM); prints one JSON object per image on stdout.
    Screen {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Which model of the bundle runs: fp32 (the direct engine on x86-64 with AVX2/FMA for
        /// the graphs it knows, tract otherwise), tract (fp32 on tract), int8 (the int8 core;
        /// bundles exported with the `mcu` target) or qdq (the QDQ ONNX twin on tract).
        #[arg(long, default_value = "fp32")]
        engine: EngineKind,
        /// Images screened at once (default: the number of cores); output stays in input order.
        #[arg(long)]
        jobs: Option<usize>,
        /// Images to screen.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Measure a bundle's models: cold start, first inference, p50/p99 latency, throughput and
    /// peak memory, on the given images or on synthetic inputs; prints one JSON object.
    Bench {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Engines to measure, comma-separated.
        #[arg(long, default_value = "fp32,int8", value_delimiter = ',')]
        engine: Vec<EngineKind>,
        /// Timed inferences per engine.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Untimed inferences before timing.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Images to run (decoded and preprocessed before timing); none: synthetic inputs.
        files: Vec<PathBuf>,
    },
    /// Show what the decoder reads from image files (size, format, DICOM modality, photometric
    /// interpretation, bits, windowing applied, value range): one JSON object per file; with
    /// --png, also write each decoded, windowed image as a 16-bit PNG.
    Inspect {
        /// Folder for OUT_DIR/<file name>.png.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Folder for DIR/<file name>.f32: a DICOM file's first frame before windowing
        /// (modality-LUT values; RGB for colour), little-endian f32, rows × columns × channels,
        /// and NAME.windowed.f32, the same after VOI (window or VOI LUT) mapped to 0..1;
        /// for comparing the decoder with other toolkits (tools/dicom_corpus.py).
        #[arg(long, value_name = "DIR")]
        values: Option<PathBuf>,
        /// Files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write golden test vectors for the firmware: OUT/model.i8 (the bundle's verified int8
    /// blob) and OUT/vectors.bin (each image's quantised input and the host's int8 output).
    McuVectors {
        /// A bundle exported with the `mcu` target.
        #[command(flatten)]
        bundle: BundleArgs,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Images (PNG, JPEG, DICOM).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Watch a drop folder: screen each image that appears exactly once, write
    /// OUT/<name>.json, append to the audit log, move the input to IN_DIR/done (unreadable ones
    /// to IN_DIR/failed with a reason). Crash-safe; SIGTERM finishes the current image, then
    /// stops.
    Watch {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Which model of the bundle screens: fp32, tract, int8 or qdq.
        #[arg(long, default_value = "fp32")]
        engine: EngineKind,
        /// The drop folder.
        in_dir: PathBuf,
        /// Results folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Receive DICOM instances over the network (C-STORE SCP, answers C-ECHO) into IN_DIR and
    /// screen them as `watch` does; files dropped into IN_DIR are screened too.
    Receive {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Which model of the bundle screens: fp32, tract, int8 or qdq.
        #[arg(long, default_value = "fp32")]
        engine: EngineKind,
        /// Folder where received instances are stored for screening.
        #[arg(long = "in", value_name = "IN_DIR")]
        in_dir: PathBuf,
        /// Results folder.
        #[arg(long)]
        out: PathBuf,
        /// TCP port.
        #[arg(long, default_value_t = 11112)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        listen: std::net::IpAddr,
        /// This node's AE title; associations calling another are refused.
        #[arg(long, default_value = "SCANSIDE")]
        ae_title: String,
        /// Accept only this calling AE title (repeat for several); default: any.
        #[arg(long = "allow-calling-ae", value_name = "AE_TITLE")]
        allowed_calling_ae: Vec<String>,
        /// Concurrent associations.
        #[arg(long, default_value_t = 4)]
        max_associations: usize,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Run the service (drop folder, and the DICOM receiver when configured) from a TOML file;
    /// see runtime/deploy/scanside.toml.
    Serve {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Settings shared by `watch` and `receive`.
#[derive(clap::Args)]
struct ServiceArgs {
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
            in_dir,
            out_dir: out,
            audit_log: self.audit_log,
            settle_ms: self.settle_ms,
            rescan_ms: self.rescan_ms,
            exit_when_idle: self.exit_when_idle,
            receive: None,
        }
    }
}

/// Runs the service until SIGTERM/SIGINT (or idle, when asked); prints the summary.
fn serve(config: ServiceConfig, origin: &std::path::Path) -> anyhow::Result<ExitCode> {
    config.validate(origin)?;
    if config.allow_unsigned {
        eprintln!(
            "scanside: WARNING: allow_unsigned: the model's origin is NOT verified; results \
             and audit records are marked model_verified=false"
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let summary = watch::config::run(&config, &stop)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if config.exit_when_idle && summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Which bundle, and which keys it must be signed with.
#[derive(clap::Args)]
struct BundleArgs {
    /// Bundle directory written by `scanside-train export`.
    #[arg(long)]
    bundle: PathBuf,
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
    fn load(&self) -> anyhow::Result<Bundle> {
        Ok(Bundle::load(&self.bundle, &self.trust()?)?)
    }

    /// The keys to verify with, or no check (loudly warned).
    fn trust(&self) -> anyhow::Result<Trust> {
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

/// One file for `scanside inspect`: the decoder's report as JSON, the PNG written if asked.
fn inspect(
    file: &std::path::Path,
    png: Option<&std::path::Path>,
    values: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let bytes = persist::read(file)?;
    let name = file
        .file_name()
        .map_or("image".into(), |n| n.to_string_lossy().into_owned());
    // inspect has no bundle: DICOM is shown with the file's own window (the default policy).
    let window = decode::DicomWindow::File;
    let (image, dicom) = match (values, decode::sniff(&bytes)) {
        (Some(dir), Some(decode::FileFormat::Dicom)) => {
            let dicom = decode::read_dicom_values(file, &bytes)?;
            let as_bytes =
                |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
            let path = dir.join(format!("{name}.f32"));
            persist::write_atomically(&path, &as_bytes(&dicom.values))?;
            let dims = [dicom.height, dicom.width, dicom.channels];
            let (transfer_syntax, frames) = (dicom.transfer_syntax.clone(), dicom.frames);
            let image = decode::dicom_image(dicom, window);
            // What the model sees before resizing: after VOI (window or LUT) and inversion.
            let windowed = dir.join(format!("{name}.windowed.f32"));
            persist::write_atomically(&windowed, &as_bytes(&image.pixels))?;
            let report = serde_json::json!({
                "values": path,
                "windowed": windowed,
                "transfer_syntax": transfer_syntax,
                "frames": frames,
                "dims": dims,
            });
            (image, Some(report))
        }
        _ => (decode::decode_bytes_with(file, &bytes, window)?, None),
    };
    let (min, max) = image
        .pixels
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let mean =
        image.pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / image.pixels.len().max(1) as f64;
    let written = match png {
        Some(dir) => {
            let path = dir.join(format!("{name}.png"));
            persist::write_atomically(&path, &decode::to_png16(&image, file)?)?;
            Some(path)
        }
        None => None,
    };
    Ok(serde_json::json!({
        "file": file,
        "width": image.width,
        "height": image.height,
        "channels": image.channels,
        "source": image.source,
        "value_range": [min, max],
        "mean": mean,
        "png": written,
        "dicom": dicom,
    })
    .to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "scanside: error: {}",
                scanside_runtime::describe_error(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Screen {
            bundle,
            engine,
            jobs,
            files,
        } => {
            let bundle = bundle.load()?;
            let screener = Screener::with_engine(&bundle, engine)?;
            let mut failed = 0_usize;
            let mut write_error = None;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            screener.screen_files(&files, jobs, |_, outcome| match outcome {
                Ok(result) => {
                    let line = match serde_json::to_string(&result) {
                        Ok(line) => line,
                        Err(e) => {
                            write_error =
                                Some(anyhow::Error::new(e).context("serialising a result"));
                            return false;
                        }
                    };
                    match writeln!(out, "{line}").and_then(|_| out.flush()) {
                        Ok(()) => true,
                        Err(e) => {
                            if e.kind() != io::ErrorKind::BrokenPipe {
                                write_error =
                                    Some(anyhow::Error::new(e).context("writing to stdout"));
                            }
                            false
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("scanside: error: {e}");
                    true
                }
            });
            if let Some(e) = write_error {
                return Err(e);
            }
            if failed > 0 {
                eprintln!("scanside: {failed} of {} images failed", files.len());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            bundle,
            engine,
            runs,
            warmup,
            files,
        } => {
            let trust = bundle.trust()?;
            let report = bench::bench(&bundle.bundle, &trust, &engine, &files, runs, warmup)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { png, values, files } => {
            for dir in [&png, &values].into_iter().flatten() {
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            }
            let mut failed = 0_usize;
            for file in &files {
                match inspect(file, png.as_deref(), values.as_deref()) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!(
                            "scanside: error: {}",
                            scanside_runtime::describe_error(e.as_ref())
                        );
                    }
                }
            }
            if failed > 0 {
                eprintln!("scanside: {failed} of {} files failed", files.len());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            bundle,
            engine,
            in_dir,
            out,
            service,
        } => serve(
            service.config(bundle, engine, in_dir, out),
            std::path::Path::new("command line"),
        ),
        Command::Receive {
            bundle,
            engine,
            in_dir,
            out,
            port,
            listen,
            ae_title,
            allowed_calling_ae,
            max_associations,
            service,
        } => {
            let mut config = service.config(bundle, engine, in_dir, out);
            config.receive = Some(ReceiveConfig {
                port,
                listen,
                ae_title,
                allowed_calling_ae,
                max_associations,
            });
            serve(config, std::path::Path::new("command line"))
        }
        Command::Serve { config } => serve(ServiceConfig::from_file(&config)?, &config),
        Command::McuVectors { bundle, out, files } => {
            let bundle = bundle.load()?;
            let Engine::Int8(model) = Engine::load(&bundle, EngineKind::Int8)? else {
                anyhow::bail!("internal: an int8 engine was asked for");
            };
            let mut pairs = Vec::with_capacity(files.len());
            for file in &files {
                let bytes = persist::read(file)?;
                let window = bundle.manifest.preprocess.dicom_window;
                let image = decode::decode_bytes_with(file, &bytes, window)?;
                let input = preprocess::preprocess(&image, &bundle.manifest.preprocess, file)?;
                pairs.push(model.vector(&input)?);
            }
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            let blob = bundle.int8_bytes.as_deref().unwrap_or_default();
            persist::write_atomically(&out.join("model.i8"), blob)?;
            persist::write_atomically(&out.join("vectors.bin"), &vectors::write(&pairs))?;
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "vectors": pairs.len(),
                    "outputs": pairs.iter().map(|p| &p.1).collect::<Vec<_>>(),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
