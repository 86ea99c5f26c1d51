//! `scanside`: the edge runtime's command line. Parses arguments ([`args`]), turns them into
//! the library's settings, makes one library call per command and maps the outcome to an exit
//! code: 0 all images screened, 1 a failure (each named on stderr), 2 usage error (from clap);
//! a closed stdout (`| head`) is not an error. Bundles must carry a signature by a trusted
//! public key unless `--allow-unsigned` is given.

mod args;
mod examples;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use scanside_runtime::bench::BenchConfig;
use scanside_runtime::infer::all_cores;
use scanside_runtime::inspect::{self, InspectError, InspectOutputs};
use scanside_runtime::pipeline::Screener;
use scanside_runtime::screen::{self, OutputError};
use scanside_runtime::watch::config::ServiceConfig;
use scanside_runtime::{bench, describe_error, inputs, logging, mcu_vectors, validate, watch};

use args::{BenchArgs, Cli, Command, InspectArgs, McuVectorsArgs, ScreenArgs, ValidateArgs};

fn main() -> ExitCode {
    if let Err(problem) = logging::init_from_env() {
        eprintln!("scanside: WARNING: {problem}");
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scanside: error: {}", describe_error(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let command_line = Path::new("command line");
    match command {
        Command::Screen(args) => screen(args),
        Command::Bench(args) => bench(args),
        Command::Inspect(args) => inspect(args),
        Command::McuVectors(args) => mcu_vectors(args),
        Command::Watch(args) => serve(args.config(), command_line),
        Command::Receive(args) => serve(args.config(), command_line),
        Command::Serve(args) => serve(args.config()?, &args.config),
        Command::Validate(args) => validate(args),
        Command::Completions { shell } => {
            let mut command = args::Cli::command();
            clap_complete::generate(shell, &mut command, "scanside", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            clap_mangen::generate_to(args::Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            print_line(&format!("{}", out.join("scanside.1").display()))
        }
    }
}

/// 1 when some inputs failed (`what`: "images", "files"), after saying how many.
fn failures(failed: usize, of: usize, what: &str) -> ExitCode {
    if failed == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!("scanside: {failed} of {of} {what} failed");
    ExitCode::from(1)
}

/// The files behind the paths given (folders walked, DICOMDIRs followed); says on stderr
/// what was left out, and refuses a command line that names no image at all.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let inputs = inputs::expand_inputs(paths)?;
    if let Some(first) = inputs.skipped.first() {
        eprintln!(
            "scanside: {} file(s) in the folders given are not PNG, JPEG or DICOM and were \
             skipped (the first: {})",
            inputs.skipped.len(),
            first.display()
        );
    }
    anyhow::ensure!(
        !inputs.files.is_empty(),
        "no image found in {}",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(inputs.files)
}

/// Site acceptance: the JSON report on stdout (and the HTML page); 1 when a check fails.
fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    if let Err(reason) = config.validate() {
        eprintln!("scanside: error: {reason}");
        return Ok(ExitCode::from(2));
    }
    let bundle = args.bundle.load()?;
    let screener = Screener::with_engine(&bundle, args.engine)?;
    let images = validate::read_labelled(&config.data, screener.class_names())?;
    let report = validate::validate(
        &screener,
        &bundle.manifest,
        bundle.model_id(),
        &images,
        &config,
    );
    if let Some(html) = &args.html {
        scanside_runtime::persist::write_atomically(html, validate::html_page(&report).as_bytes())?;
    }
    for check in report.checks.iter().filter(|c| !c.passed) {
        eprintln!(
            "scanside: validate: {} {:.3} is below {:.3} - {} ({})",
            check.figure,
            check.site.estimate,
            check.reference,
            report.margin,
            check.reference_source
        );
    }
    print_line(&serde_json::to_string(&report)?)?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn screen(args: ScreenArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.bundle.load()?;
    let files = expand(&args.files)?;
    let screener =
        Screener::with_engine(&bundle, args.engine)?.with_threads(args.threads(files.len()))?;
    let lines = match (args.by_study, args.studies_only) {
        (_, true) => screen::Lines::Studies,
        (true, false) => screen::Lines::ImagesThenStudies,
        (false, false) => screen::Lines::Images,
    };
    let summary = screen::write_json_lines(
        &screener,
        &files,
        args.jobs(),
        lines,
        &mut io::stdout().lock(),
        |_, e| eprintln!("scanside: error: {e}"),
    )
    .map_err(|e| match e {
        OutputError::Write(e) => anyhow::Error::new(e).context("writing to stdout"),
        other => other.into(),
    })?;
    if summary.not_applicable + summary.out_of_distribution > 0 {
        // Answers, not failures: the exit code stays 0, but a person should know.
        eprintln!(
            "scanside: {} of {} images not applicable to this model (input rules), {} out of \
             distribution (nothing flagged on them)",
            summary.not_applicable,
            files.len(),
            summary.out_of_distribution
        );
    }
    if lines != screen::Lines::Images && summary.outside_studies > 0 {
        eprintln!(
            "scanside: {} of {} images belong to no DICOM study (no Study Instance UID): not \
             in the study lines",
            summary.outside_studies,
            files.len()
        );
    }
    Ok(failures(summary.failed, files.len(), "images"))
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let trust = args.bundle.trust()?;
    let files = if args.files.is_empty() {
        Vec::new() // synthetic inputs
    } else {
        expand(&args.files)?
    };
    let config = BenchConfig {
        engines: args.engine,
        runs: args.runs,
        warmup: args.warmup,
        threads: args.threads.map_or_else(all_cores, |t| t as usize),
    };
    if let Err(reason) = config.validate() {
        eprintln!("scanside: error: {reason}");
        return Ok(ExitCode::from(2));
    }
    let report = bench::bench(&args.bundle.bundle, &trust, &files, &config)?;
    print_line(&serde_json::to_string_pretty(&report)?)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let outputs = InspectOutputs {
        png: args.png,
        values: args.values,
    };
    let files = expand(&args.files)?;
    let summary = inspect::inspect_files(&files, &outputs, &mut io::stdout().lock(), |e| {
        eprintln!("scanside: error: {}", describe_error(e))
    })
    .map_err(|e| match e {
        InspectError::Write(e) => anyhow::Error::new(e).context("writing to stdout"),
        other => other.into(),
    })?;
    Ok(failures(summary.failed, files.len(), "files"))
}

fn mcu_vectors(args: McuVectorsArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.bundle.load()?;
    let report = mcu_vectors::write_vectors(&bundle, &expand(&args.files)?, &args.out)?;
    print_line(&serde_json::to_string(&report)?)
}

/// Runs the service until SIGTERM/SIGINT (or idle, when asked); prints the summary.
fn serve(config: ServiceConfig, origin: &Path) -> anyhow::Result<ExitCode> {
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
    print_line(&serde_json::to_string(&summary)?)?;
    Ok(if config.exit_when_idle && summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints one line on stdout; a closed stdout is not an error.
fn print_line(line: &str) -> anyhow::Result<ExitCode> {
    match writeln!(io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_help_ends_with_examples() {
        for sub in super::args::Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:") && help.contains("scanside "),
                "`scanside {} --help` has no examples",
                sub.get_name()
            );
        }
    }

    /// The command lines of an examples text (continuation lines joined), as words.
    fn example_lines(text: &str) -> Vec<Vec<String>> {
        let joined = text.replace("\\\n", " ");
        joined
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("scanside "))
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
        collect(&super::args::Cli::command(), &mut texts);
        let lines: Vec<Vec<String>> = texts.iter().flat_map(|t| example_lines(t)).collect();
        assert!(lines.len() >= 10, "{lines:?}");
        for words in lines {
            let parsed = super::args::Cli::command().try_get_matches_from(&words);
            assert!(
                parsed.is_ok(),
                "{}: {}",
                words.join(" "),
                parsed.unwrap_err()
            );
        }
    }
}
