//! `scanside-train`: the trainer's command line. Parses arguments into the library's validated
//! settings, makes one library call per subcommand with the backend chosen at build time (`flex`
//! by default, `ndarray`, or `cuda`), prints its result, and maps the outcome to an exit code:
//! 0 ok, 1 failure, 2 usage error.
//!
//! The arguments of each group of subcommands live in their own module beside this one
//! ([`data_args`], [`train_args`], [`eval_args`], [`export_args`]). They stay in the binary
//! rather than the library because they are the binary's interface — flag names, help texts,
//! what counts as a usage error — while the library takes typed settings, whoever fills them
//! (these flags, a config file, a test, the demo).

mod data_args;
mod eval_args;
mod examples;
mod export_args;
mod help;
mod train_args;

use std::process::ExitCode;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;

use data_args::DataCommand;
use eval_args::{EvaluateArgs, ProbeArgs, ReportArgs};
use export_args::{ExportArgs, ExportPlan, KeygenArgs};
use train_args::{DemoArgs, FinetuneArgs, PretrainArgs, PretrainPlan, StudyCommand};

/// mimalloc keeps freed tensor buffers for reuse; glibc's malloc returned them to the kernel
/// and faulted fresh pages in on every step (~15 % of a CPU training step in the kernel,
/// 4.5 → 0.7 s of system time over 33 SimCLR steps).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "cuda")]
type Inner = burn::backend::Cuda;
#[cfg(all(not(feature = "cuda"), feature = "flex"))]
type Inner = burn::backend::Flex;
#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
type Inner = burn::backend::NdArray;
#[cfg(all(
    not(feature = "cuda"),
    not(feature = "flex"),
    not(feature = "ndarray"),
    feature = "candle"
))]
type Inner = burn::backend::Candle;
type Train = burn::backend::Autodiff<Inner>;

#[derive(Parser)]
#[command(
    name = "scanside-train",
    version,
    about = "Self-supervised pretraining, fine-tuning and export of medical image classifiers"
)]
struct Cli {
    /// Compute device: `cpu`, or `cuda:N` in builds with the `cuda` feature (default: `cuda:0`
    /// there, `cpu` otherwise). `pretrain` also takes several, `cuda:0,cuda:1`: data-parallel,
    /// each step's batch split across them.
    #[arg(long, global = true, default_value = DEFAULT_DEVICE)]
    device: String,
    /// Print the result as JSON (every command; those that print JSON anyway are unchanged).
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Debug records on stderr: where data and runs were found, how long each step took
    /// (the same as SCANSIDE_LOG=debug).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Datasets: split, check, preview augmentations, benchmark loading.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Self-supervised pretraining (SimCLR or MICLe) on the training partition's images;
    /// labels are never trained on (the health signal measures kNN accuracy with them).
    #[command(after_help = examples::PRETRAIN)]
    Pretrain(PretrainArgs),
    /// Fine-tune a classifier from a pretraining run (or from scratch).
    #[command(after_help = examples::FINETUNE)]
    Finetune(FinetuneArgs),
    /// Measure a pretraining run's features: weighted 20-NN accuracy (and balanced accuracy) on
    /// val and test against all training images; labels are used only to score.
    #[command(after_help = examples::PROBE)]
    Probe(ProbeArgs),
    /// Evaluate a fine-tuned run: top-1/top-3/balanced accuracy, per-class and macro AUC,
    /// confusion matrix, 95 % intervals resampled by case, calibration before/after
    /// temperature scaling (fitted on val), per-class thresholds for a target sensitivity;
    /// or, with --data, on another site's labelled images with the shift from the run's own
    /// test partition.
    #[command(after_help = examples::EVALUATE)]
    Evaluate(EvaluateArgs),
    /// Write an HTML page with plots (training curves, ROC, confusion matrix, reliability)
    /// and tables for evaluated fine-tuning runs.
    #[command(after_help = examples::REPORT)]
    Report(ReportArgs),
    /// Studies over many fine-tuning runs.
    Study {
        #[command(subcommand)]
        command: StudyCommand,
    },
    /// Export a fine-tuned run (--run) or an ONNX classifier trained elsewhere (--onnx) as a
    /// bundle — ONNX fp32, and for the int8 targets the int8 blob and its QDQ ONNX twin — and
    /// check it against the runtime.
    #[command(after_help = export_args::EXPORT_EXAMPLES)]
    Export(ExportArgs),
    /// Write a pretraining run's backbone as safetensors under torchvision's names (the
    /// inverse of `pretrain --init`), for PyTorch: `torchvision.models.resnetNN()` then
    /// `load_state_dict(..., strict=False)` (only `fc` missing).
    #[command(after_help = examples::EXPORT_BACKBONE)]
    ExportBackbone {
        /// Pretraining run directory.
        #[arg(long)]
        run: std::path::PathBuf,
        /// File to write (.safetensors).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Format: safetensors (the only one; PyTorch reads it with safetensors.torch).
        #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
        format: String,
    },
    /// Make an ed25519 key pair for signing bundles: OUT.key (secret, owner-only) and OUT.pub
    /// (for the runtime's --public-key).
    #[command(after_help = examples::KEYGEN)]
    Keygen(KeygenArgs),
    /// The whole path on real data: split, pretrain, fine-tune, evaluate, export, screen.
    #[command(after_help = examples::DEMO)]
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (scanside-train.1 and one per subcommand) into a folder.
    #[command(after_help = examples::MAN)]
    Man {
        /// Folder to write them into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// A command-line mistake: reported with exit code 2.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error (exit code 2) with this message.
fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// mimalloc gives freed memory back to the kernel a second after it is freed (its default);
/// in training steps longer than that (ResNet-18 ×1 at 64 px: ~5 s a step on 2 cores) every
/// step faulted its multi-megabyte activations back in, zeroed by the kernel — 15 % of the CPU
/// time (profiled), 4.5–5.5 → 6.4 img/s with purging off. mimalloc reads its options from the
/// environment when the process starts, and setting one from Rust takes an unsafe FFI call
/// with a hard-coded option number, so the binary restarts itself once (same process id and
/// open files) with `MIMALLOC_PURGE_DELAY=-1`, unless the variable is already set. Freed
/// memory then stays committed: the process keeps its peak footprint, which training needs
/// again on the next step anyway.
#[cfg(unix)]
fn keep_freed_memory_committed() {
    use std::os::unix::process::CommandExt;
    const SETTING: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(SETTING).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only if it failed; the run then goes on with mimalloc's defaults.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(SETTING, "-1")
        .exec();
}

fn main() -> ExitCode {
    #[cfg(unix)]
    keep_freed_memory_committed();
    let cli = Cli::parse();
    if cli.quiet {
        scanside_trainer::runlog::hide_progress();
    }
    if cli.verbose {
        scanside_runtime::logging::init(log::LevelFilter::Debug);
    } else if let Err(problem) = scanside_runtime::logging::init_from_env() {
        eprintln!("scanside-train: WARNING: {problem}");
    }
    let devices = cli
        .device
        .split(',')
        .map(|one| parse_device::<Inner>(one.trim()))
        .collect::<anyhow::Result<Vec<_>>>();
    match devices.and_then(|devices| run::<Train>(cli.command, &devices, cli.json)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "scanside-train: error: {}",
                scanside_runtime::describe_error(e.as_ref())
            );
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(feature = "cuda")]
const DEFAULT_DEVICE: &str = "cuda:0";
#[cfg(not(feature = "cuda"))]
const DEFAULT_DEVICE: &str = "cpu";

#[cfg(feature = "cuda")]
fn parse_device<B>(s: &str) -> anyhow::Result<burn::backend::cuda::CudaDevice> {
    let index = s
        .strip_prefix("cuda:")
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("--device {s:?}: this build runs on CUDA; use cuda:N"))?;
    Ok(burn::backend::cuda::CudaDevice::new(index))
}

#[cfg(not(feature = "cuda"))]
fn parse_device<B: burn::tensor::backend::Backend>(s: &str) -> anyhow::Result<B::Device> {
    if s != "cpu" {
        bail!("--device {s:?}: this build has only the CPU backend (rebuild with --features cuda)");
    }
    Ok(Default::default())
}

/// Prints a result as pretty JSON: exit 0.
fn print_json(value: &impl Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints a result for people (`text`), or with `--json` the same as JSON: exit 0.
fn print_result(
    json: bool,
    text: impl std::fmt::Display,
    value: &impl Serialize,
) -> anyhow::Result<ExitCode> {
    if json {
        return print_json(value);
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Prints a path written, or with `--json` `{"written": path}`: exit 0.
fn print_text_line(json: bool, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let value = serde_json::json!({ "written": path });
    print_result(json, format_args!("{}\n", path.display()), &value)
}

/// Arguments → validated settings → one library call → its result printed.
fn run<B: AutodiffBackend>(
    command: Command,
    devices: &[B::Device],
    json: bool,
) -> anyhow::Result<ExitCode> {
    use scanside_trainer::{demo, evaluate, export, finetune, pretrain, report, study};
    let device = &devices[0];
    if devices.len() > 1 && !matches!(command, Command::Pretrain(_)) {
        return Err(usage("several --device values are for pretrain only"));
    }
    match command {
        Command::Data { command } => data_args::run(command, json),
        Command::Pretrain(args) => match args.plan()? {
            PretrainPlan::Resume(out) => {
                print_json(&pretrain::resume_pretrain_on::<B>(&out, devices)?)
            }
            PretrainPlan::Run(config, out) => {
                print_json(&pretrain::pretrain_on::<B>(&config, &out, devices)?)
            }
        },
        Command::Finetune(args) => {
            let (config, out) = args.config()?;
            print_json(&finetune::finetune::<B>(&config, &out, device)?)
        }
        Command::Probe(args) => {
            let report = evaluate::probe_pretrained::<B::InnerBackend>(
                &args.pretrained,
                args.random_init,
                device,
            )?;
            print_json(&report)
        }
        Command::Evaluate(args) => {
            let settings = args.settings()?;
            if let Some(data) = args.other_data()? {
                let report = evaluate::evaluate_other_site::<B::InnerBackend>(
                    &args.run, &data, &settings, device,
                )?;
                return print_result(json, report.table(), &report);
            }
            let evaluation = evaluate::evaluate::<B::InnerBackend>(
                &args.run,
                args.partition()?,
                &settings,
                device,
            )?;
            print_result(json, evaluation.table(), &evaluation)
        }
        Command::Report(args) => {
            let index = report::write_report(&args.runs, &args.out)?;
            let value = serde_json::json!({ "index": index });
            print_result(json, format_args!("{}\n", index.display()), &value)
        }
        Command::Study {
            command: StudyCommand::LabelEfficiency(args),
        } => {
            let config = args.config()?;
            let results = study::run_study::<B>(&config, &args.out, device)?;
            print_result(json, &results.table, &results)
        }
        Command::Export(args) => match args.plan()? {
            ExportPlan::Run(run, options) => {
                print_json(&export::export_run_with_key_file::<B::InnerBackend>(
                    &run,
                    &args.out,
                    &options,
                    args.sign_key.as_deref(),
                    device,
                )?)
            }
            ExportPlan::Onnx(plan) => {
                print_json(&export::imported::export_onnx_with_key_file::<
                    B::InnerBackend,
                >(
                    &plan, &args.out, args.sign_key.as_deref(), device
                )?)
            }
        },
        Command::Keygen(args) => {
            let pair = export::write_new_key_pair(&args.out)?;
            let value = serde_json::json!({
                "id": pair.id, "secret": pair.secret, "public": pair.public,
            });
            print_result(json, format_args!("{pair}\n"), &value)
        }
        Command::ExportBackbone { run, out, .. } => {
            let config = scanside_trainer::run_dir::load_pretrain_config(&run)?;
            let backbone = scanside_trainer::run_dir::load_pretrained_backbone::<B::InnerBackend>(
                &run, &config, false, device,
            )?;
            print_json(&scanside_trainer::imagenet::save_torchvision(
                &backbone,
                &config.model,
                &out,
            )?)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "scanside-train",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            print_text_line(json, &out.join("scanside-train.1"))
        }
        Command::Demo(args) => {
            let summary = demo::run_demo::<B>(&args.config()?, device).context("demo failed")?;
            print_result(json, summary.render(), &summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command that runs something (not the `data` and `study` groups) shows examples.
    fn check(command: &clap::Command, path: &str) {
        let subcommands: Vec<&clap::Command> = command.get_subcommands().collect();
        if subcommands.is_empty() {
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:") && help.contains("scanside-train "),
                "`{path} --help` has no examples"
            );
        }
        for sub in subcommands {
            check(sub, &format!("{path} {}", sub.get_name()));
        }
    }

    #[test]
    fn every_subcommand_help_ends_with_examples() {
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            check(sub, &format!("scanside-train {}", sub.get_name()));
        }
    }

    /// The command lines of an examples text (continuation lines joined), as words.
    fn example_lines(text: &str) -> Vec<Vec<String>> {
        let joined = text.replace("\\\n", " ");
        joined
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("scanside-train "))
            .map(|l| {
                // A redirection ends the command line.
                l.split_whitespace()
                    .take_while(|w| *w != ">")
                    .map(String::from)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_example_parses() {
        let mut texts: Vec<String> = Vec::new();
        fn collect(command: &clap::Command, texts: &mut Vec<String>) {
            texts.extend(command.get_after_help().map(|h| h.to_string()));
            command.get_subcommands().for_each(|c| collect(c, texts));
        }
        collect(&super::Cli::command(), &mut texts);
        let lines: Vec<Vec<String>> = texts.iter().flat_map(|t| example_lines(t)).collect();
        assert!(lines.len() >= 10, "{lines:?}");
        for words in lines {
            let parsed = super::Cli::command().try_get_matches_from(&words);
            assert!(
                parsed.is_ok(),
                "{}: {}",
                words.join(" "),
                parsed.unwrap_err()
            );
        }
    }
}
