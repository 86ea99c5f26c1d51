//! `scanside-train`: the trainer's command line. Parses arguments into a validated plan, runs
//! it with the backend chosen at build time (`flex` by default, `ndarray`, or `cuda`), and maps
//! the outcome to an exit code: 0 ok, 1 failure, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand};
use scanside_trainer::data::{make_split, open_dataset, Partition};
use scanside_trainer::demo::{run_demo, DemoConfig};
use scanside_trainer::evaluate::evaluate_run;
use scanside_trainer::export::export_run;
use scanside_trainer::finetune::{finetune, FinetuneConfig};
use scanside_trainer::pretrain::{pretrain, PretrainConfig};
use scanside_trainer::runlog::save_json;

#[cfg(feature = "cuda")]
type Inner = burn::backend::Cuda;
#[cfg(all(not(feature = "cuda"), feature = "flex"))]
type Inner = burn::backend::Flex;
#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
type Inner = burn::backend::NdArray;
type Train = burn::backend::Autodiff<Inner>;

#[derive(Parser)]
#[command(
    name = "scanside-train",
    version,
    about = "Self-supervised pretraining, fine-tuning and export of medical image classifiers"
)]
struct Cli {
    /// Compute device: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a grouped, stratified, seeded train/val/test split and save it.
    Split {
        /// Dataset: HAM10000 folder (metadata.csv + images/) or MedMNIST .npz.
        #[arg(long)]
        data: PathBuf,
        /// Split file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Train, val and test fractions.
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.7, 0.15, 0.15])]
        fractions: Vec<f64>,
    },
    /// SimCLR pretraining on the training partition's images (labels unused).
    Pretrain {
        #[command(flatten)]
        data: DataArgs,
        /// Run directory to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        train: TrainArgs,
        /// ResNet depth (18 or 34).
        #[arg(long, default_value_t = 18)]
        depth: usize,
        /// Width multiplier of the ResNet stages.
        #[arg(long, default_value_t = 0.25)]
        width: f32,
        /// Input size in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: u32,
        /// NT-Xent temperature.
        #[arg(long, default_value_t = 0.2)]
        temperature: f32,
    },
    /// Fine-tune a classifier from a pretraining run (or from scratch).
    Finetune {
        #[command(flatten)]
        data: DataArgs,
        /// Run directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Pretraining run directory to start from.
        #[arg(
            long,
            conflicts_with = "from_scratch",
            required_unless_present = "from_scratch"
        )]
        pretrained: Option<PathBuf>,
        /// Start from random weights.
        #[arg(long)]
        from_scratch: bool,
        #[command(flatten)]
        train: TrainArgs,
        /// Input size when training from scratch.
        #[arg(long, default_value_t = 32)]
        image_size: u32,
    },
    /// Evaluate a fine-tuned run: top-1 accuracy and macro one-vs-rest AUC.
    Evaluate {
        /// Fine-tuning run directory.
        #[arg(long)]
        run: PathBuf,
        /// Partition of the run's split.
        #[arg(long, default_value = "test")]
        split: Partition,
    },
    /// Export a fine-tuned run as an ONNX bundle and check it against the runtime.
    Export {
        /// Fine-tuning run directory.
        #[arg(long)]
        run: PathBuf,
        /// Bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Validation images compared between burn and the runtime.
        #[arg(long, default_value_t = 16)]
        check_images: usize,
    },
    /// The whole path on real data: split, pretrain, fine-tune, evaluate, export, screen.
    Demo {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Dataset (default: $SCANSIDE_DATA/ham10000, ../shared/data/ham10000, or DermaMNIST).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 28)]
        image_size: u32,
        /// ResNet-18 width multiplier.
        #[arg(long, default_value_t = 0.125)]
        width: f32,
        #[arg(long, default_value_t = 2)]
        pretrain_epochs: usize,
        #[arg(long, default_value_t = 4)]
        finetune_epochs: usize,
        /// Cap on steps per training stage (quick runs).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Held-out images to screen with the runtime.
        #[arg(long, default_value_t = 8)]
        screen: usize,
        /// Path of the `scanside` binary (default: beside this executable).
        #[arg(long)]
        runtime: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Args)]
struct DataArgs {
    /// Dataset: HAM10000 folder or MedMNIST .npz.
    #[arg(long)]
    data: PathBuf,
    /// Split file from `scanside-train split`.
    #[arg(long)]
    split: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match parse_device::<Inner>(&cli.device).and_then(|device| run::<Train>(cli.command, &device)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scanside-train: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

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

fn run<B: AutodiffBackend>(command: Command, device: &B::Device) -> anyhow::Result<()> {
    match command {
        Command::Split {
            data,
            out,
            seed,
            fractions,
        } => {
            let index = open_dataset(&data)?;
            let split = make_split(&index, seed, [fractions[0], fractions[1], fractions[2]])?;
            save_json(&out, &split)?;
            let groups = index
                .samples
                .iter()
                .map(|s| &s.group)
                .collect::<std::collections::HashSet<_>>()
                .len();
            println!(
                "{}: {} images in {groups} groups ({}) -> {:?}, written to {}",
                data.display(),
                index.samples.len(),
                split.grouped_by,
                split.counts,
                out.display()
            );
        }
        Command::Pretrain {
            data,
            out,
            train,
            depth,
            width,
            image_size,
            temperature,
        } => {
            let mut config = PretrainConfig::new(data.data, data.split);
            config.model.depth = depth;
            config.model.width_multiplier = width;
            config.image_size = image_size;
            config.temperature = temperature;
            config.seed = train.seed;
            config.max_steps = train.max_steps;
            config.epochs = train.epochs.unwrap_or(config.epochs);
            config.batch_size = train.batch_size.unwrap_or(config.batch_size);
            config.learning_rate = train.lr.unwrap_or(config.learning_rate);
            let summary = pretrain::<B>(&config, &out, device)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Finetune {
            data,
            out,
            pretrained,
            from_scratch,
            train,
            image_size,
        } => {
            if !from_scratch && pretrained.is_none() {
                bail!("finetune needs --pretrained DIR or --from-scratch");
            }
            let mut config = FinetuneConfig::new(data.data, data.split, pretrained);
            config.image_size = image_size;
            config.seed = train.seed;
            config.max_steps = train.max_steps;
            config.epochs = train.epochs.unwrap_or(config.epochs);
            config.batch_size = train.batch_size.unwrap_or(config.batch_size);
            config.learning_rate = train.lr.unwrap_or(config.learning_rate);
            let summary = finetune::<B>(&config, &out, device)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Evaluate { run, split } => {
            let report = evaluate_run::<B::InnerBackend>(&run, split, device)?;
            print!("{}", report.table());
        }
        Command::Export {
            run,
            out,
            check_images,
        } => {
            let report = export_run::<B::InnerBackend>(&run, &out, check_images, device)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Demo {
            out,
            data,
            image_size,
            width,
            pretrain_epochs,
            finetune_epochs,
            max_steps,
            screen,
            runtime,
            seed,
        } => {
            let config = DemoConfig {
                out,
                data,
                image_size,
                width_multiplier: width,
                pretrain_epochs,
                finetune_epochs,
                max_steps,
                screen_images: screen,
                runtime_binary: runtime,
                seed,
            };
            let summary = run_demo::<B>(&config, device).context("demo failed")?;
            print!("{}", summary.render());
        }
    }
    Ok(())
}
