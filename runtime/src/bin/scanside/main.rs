//! `scanside`: the edge runtime's command line. Parses arguments ([`args`]), turns them into
//! the library's settings, makes one library call per command and maps the outcome to an exit
//! code: 0 all images screened, 1 a failure (each named on stderr), 2 usage error (from clap);
//! a closed stdout (`| head`) is not an error. Bundles must carry a signature by a trusted
//! public key unless `--allow-unsigned` is given.

mod args;

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use scanside_runtime::inspect::{self, InspectError, InspectOutputs};
use scanside_runtime::pipeline::Screener;
use scanside_runtime::screen::{self, OutputError};
use scanside_runtime::watch::config::ServiceConfig;
use scanside_runtime::{bench, describe_error, logging, mcu_vectors, watch};

use args::{BenchArgs, Cli, Command, InspectArgs, McuVectorsArgs, ScreenArgs};

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
        Command::Serve(args) => serve(ServiceConfig::from_file(&args.config)?, &args.config),
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

fn screen(args: ScreenArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.bundle.load()?;
    let screener = Screener::with_engine(&bundle, args.engine)?;
    let summary = screen::write_json_lines(
        &screener,
        &args.files,
        args.jobs(),
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
            args.files.len(),
            summary.out_of_distribution
        );
    }
    Ok(failures(summary.failed, args.files.len(), "images"))
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let trust = args.bundle.trust()?;
    let report = bench::bench(
        &args.bundle.bundle,
        &trust,
        &args.engine,
        &args.files,
        args.runs,
        args.warmup,
    )?;
    print_line(&serde_json::to_string_pretty(&report)?)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let outputs = InspectOutputs {
        png: args.png,
        values: args.values,
    };
    let summary = inspect::inspect_files(&args.files, &outputs, &mut io::stdout().lock(), |e| {
        eprintln!("scanside: error: {}", describe_error(e))
    })
    .map_err(|e| match e {
        InspectError::Write(e) => anyhow::Error::new(e).context("writing to stdout"),
        other => other.into(),
    })?;
    Ok(failures(summary.failed, args.files.len(), "files"))
}

fn mcu_vectors(args: McuVectorsArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.bundle.load()?;
    let report = mcu_vectors::write_vectors(&bundle, &args.files, &args.out)?;
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
