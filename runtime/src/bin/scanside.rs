//! `scanside`: the edge runtime's command line. Parses arguments, calls the library, maps the
//! outcome to an exit code: 0 all images screened, 1 a failure (each named on stderr),
//! 2 usage error (from clap). Bundles must carry a signature by a trusted public key unless
//! `--allow-unsigned` is given.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scanside_runtime::bundle::{signing, Bundle, Trust};
use scanside_runtime::infer::Screener;

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
        /// Images to screen.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scanside: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Screen {
            bundle,
            public_key,
            allow_unsigned,
            files,
        } => {
            let trust = if allow_unsigned {
                eprintln!(
                    "scanside: WARNING: --allow-unsigned: the model's origin is NOT verified; \
                     results are marked model_verified=false"
                );
                Trust::AllowUnsigned
            } else {
                Trust::Keys(
                    public_key
                        .iter()
                        .map(|p| signing::read_verifying_key(p))
                        .collect::<Result<_, _>>()?,
                )
            };
            let bundle = Bundle::load(&bundle, &trust)?;
            let screener = Screener::new(&bundle)?;
            let mut failed = 0_usize;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            for file in &files {
                match screener.screen_file(file) {
                    Ok(result) => {
                        let line =
                            serde_json::to_string(&result).context("serialising a result")?;
                        if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
                            if e.kind() == io::ErrorKind::BrokenPipe {
                                return Ok(ExitCode::SUCCESS);
                            }
                            return Err(e).context("writing to stdout");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("scanside: error: {e}");
                    }
                }
            }
            if failed > 0 {
                eprintln!("scanside: {failed} of {} images failed", files.len());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
