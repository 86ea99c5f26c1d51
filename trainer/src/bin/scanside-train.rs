//! `scanside-train`: the trainer's command line. Parses arguments into a validated plan, runs
//! it with the backend chosen at build time (`flex` by default, `ndarray`, or `cuda`), and maps
//! the outcome to an exit code: 0 ok, 1 failure, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand, ValueEnum};
use scanside_runtime::bundle::signing;
use scanside_runtime::decode::DicomFrames;
use scanside_trainer::augment::Preset;
use scanside_trainer::data::{
    bench_decode_augment, check_dataset, make_split, open_split, write_preview, BagStats,
    CsvLabels, CsvSpec, Partition, PreviewConfig, SampleFilter, SourceSpec, SplitFile,
    UncertaintyPolicy, LABEL_FRACTIONS,
};
use scanside_trainer::demo::{run_demo, DemoConfig};
use scanside_trainer::evaluate::{evaluate, probe_pretrained, EvalSettings};
use scanside_trainer::export::{export_run, parse_targets, ExportOptions, Targets};
use scanside_trainer::finetune::{finetune, ClassWeights, FinetuneConfig, FinetuneMode, QatConfig};
use scanside_trainer::optim::OptimizerKind;
use scanside_trainer::pretrain::{
    pretrain_on, resume_pretrain_on, Method, Objectives, PretrainConfig,
};
use scanside_trainer::quantize::{parse_bytes, CalibrationMethod, QuantizeConfig};
use scanside_trainer::report::write_report;
use scanside_trainer::runlog::save_json;
use scanside_trainer::study::{read_study_config, run_study};

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
    Pretrain {
        /// Split file from `scanside-train data split` (it names the dataset).
        #[arg(long, required_unless_present_any = ["resume", "config"])]
        split: Option<PathBuf>,
        /// The dataset, when it moved since the split was made.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Leave unreadable images out, listing each, instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// Run directory to write (or, with --resume, to continue).
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out from its latest checkpoint, with its saved configuration.
        #[arg(long)]
        resume: bool,
        /// The whole configuration from a TOML or JSON file (the fields of a run's
        /// config.json; missing optional fields take their defaults).
        #[arg(long, conflicts_with_all = [
            "split", "data", "skip_bad", "method", "objective", "optimizer", "weight_decay",
            "checkpoint_every", "health_every", "epochs", "batch_size", "lr", "seed",
            "max_steps", "depth", "width", "image_size", "temperature", "preset", "resume",
            "stem", "init", "accumulate", "arch",
        ])]
        config: Option<PathBuf>,
        /// Objective weights NAME=WEIGHT, comma-separated or repeated (contrastive, simsiam,
        /// rotation, reconstruction), e.g. contrastive=1,rotation=0.5. Default contrastive=1.
        #[arg(long, value_delimiter = ',')]
        objective: Vec<String>,
        /// Self-supervised objective.
        #[arg(long, value_enum, default_value = "simclr")]
        method: Method,
        /// Optimiser (default learning rates: AdamW 1e-3, LARS 0.3·batch/256, SGD 0.1·batch/256).
        #[arg(long, value_enum, default_value = "adamw")]
        optimizer: OptimizerKind,
        /// Weight decay (default: 1e-4 for AdamW and SGD, 1e-6 for LARS).
        #[arg(long)]
        weight_decay: Option<f32>,
        /// Save a resumable checkpoint every N steps (0: never).
        #[arg(long, default_value_t = 200)]
        checkpoint_every: usize,
        /// Measure kNN accuracy and embedding spread every N epochs (0: never).
        #[arg(long, default_value_t = 1)]
        health_every: usize,
        #[command(flatten)]
        train: TrainArgs,
        /// ResNet depth (18, 34 or 50).
        #[arg(long, default_value_t = 18)]
        depth: usize,
        /// Block type: `resnet` (3×3 + 3×3 basic blocks) or `micro` (depthwise-separable
        /// blocks, ~8× fewer MACs: for the `mcu` export target). Fine-tuning keeps it.
        #[arg(long, value_enum, default_value = "resnet")]
        arch: Arch,
        /// Width multiplier of the ResNet stages.
        #[arg(long, default_value_t = 0.25)]
        width: f32,
        /// Stem: `small` (3×3, stride 1, no max-pool; for 28–128 px) or torchvision's
        /// `imagenet` (7×7 stride 2 + max-pool; needed by --init).
        #[arg(long, value_enum, default_value = "small")]
        stem: Stem,
        /// Start from torchvision ImageNet weights (.safetensors, or a PyTorch .pth state dict)
        /// of the same depth and width: the paper's ImageNet-then-medical recipe.
        #[arg(long)]
        init: Option<PathBuf>,
        /// Gradient accumulation: split each batch into this many micro-batches (memory of one
        /// micro-batch, one optimiser step per batch).
        #[arg(long, default_value_t = 1)]
        accumulate: usize,
        /// Input size in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: u32,
        /// NT-Xent temperature.
        #[arg(long, default_value_t = 0.2)]
        temperature: f32,
        /// Augmentation preset for the views.
        #[arg(long, value_enum, default_value = "derm")]
        preset: Preset,
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
            conflicts_with_all = ["from_scratch", "qat"],
            required_unless_present_any = ["from_scratch", "qat"]
        )]
        pretrained: Option<PathBuf>,
        /// Start from random weights.
        #[arg(long, conflicts_with = "qat")]
        from_scratch: bool,
        /// Quantisation-aware training: continue this fine-tuned run with int8 rounding of
        /// weights and activations in the forward pass (use a few epochs and a small
        /// --lr, e.g. 1e-4), then export the new run.
        #[arg(long, value_name = "RUN")]
        qat: Option<PathBuf>,
        /// How --qat calibrates the activation ranges it holds fixed: minmax,
        /// percentile-P or entropy.
        #[arg(long, default_value = "percentile-99.99", value_parser = CalibrationMethod::parse)]
        qat_calibration: CalibrationMethod,
        /// Training images --qat calibrates on.
        #[arg(long, default_value_t = 256)]
        qat_calibration_images: usize,
        #[command(flatten)]
        train: TrainArgs,
        /// Input size when training from scratch.
        #[arg(long, default_value_t = 32)]
        image_size: u32,
        /// Fraction of the training labels to use (nested, stratified subset of the split).
        #[arg(long, default_value_t = 1.0)]
        label_fraction: f64,
        /// Augmentation preset (its fine-tuning set).
        #[arg(long, value_enum, default_value = "derm")]
        preset: Preset,
        /// `full` (backbone and head) or `linear-probe` (head on frozen features).
        #[arg(long, value_enum, default_value = "full")]
        mode: FinetuneMode,
        /// Cross-entropy class weights: `none` or `balanced` (N / (K·n_class)).
        #[arg(long, value_enum, default_value = "none")]
        class_weights: ClassWeights,
        /// Stop after N epochs without a better validation macro AUC.
        #[arg(long)]
        patience: Option<usize>,
        /// Fine-tune on a sub-population only, COLUMN=VALUE[,VALUE...] of the manifest (e.g.
        /// view=PA); evaluate elsewhere with `evaluate --where`.
        #[arg(long = "where", value_name = "COLUMN=VALUES")]
        train_where: Option<String>,
    },
    /// Measure a pretraining run's features: weighted 20-NN accuracy (and balanced accuracy) on
    /// val and test against all training images; labels are used only to score.
    Probe {
        /// Pretraining run directory.
        #[arg(long)]
        pretrained: PathBuf,
        /// Probe a fresh random-init backbone of the same architecture instead (the baseline).
        #[arg(long)]
        random_init: bool,
    },
    /// Evaluate a fine-tuned run: top-1/top-3/balanced accuracy, per-class and macro AUC,
    /// confusion matrix, 95 % intervals resampled by case, calibration before/after
    /// temperature scaling (fitted on val), per-class thresholds for a target sensitivity.
    Evaluate {
        /// Fine-tuning run directory.
        #[arg(long)]
        run: PathBuf,
        /// Partition of the run's split.
        #[arg(long, default_value = "test")]
        split: Partition,
        /// Bootstrap resamples for the confidence intervals (0: none).
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        /// Sensitivity each class's threshold must reach on val (screening: 0.95).
        #[arg(long, default_value_t = 0.95)]
        sensitivity: f64,
        /// Only the partition's images of a sub-population, COLUMN=VALUE[,VALUE...] (e.g.
        /// dx_type=histo, view=AP); written to eval-<partition>-<column>-<values>.json.
        #[arg(long = "where", value_name = "COLUMN=VALUES")]
        population: Option<String>,
    },
    /// Write an HTML page with plots (training curves, ROC, confusion matrix, reliability)
    /// and tables for evaluated fine-tuning runs.
    Report {
        /// Fine-tuning run directories (each evaluated first).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Folder for index.html and the SVG plots.
        #[arg(long)]
        out: PathBuf,
    },
    /// Studies over many fine-tuning runs.
    Study {
        #[command(subcommand)]
        command: StudyCommand,
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
        /// Sign the manifest with this secret key (`scanside-train keygen`); the runtime
        /// refuses unsigned bundles unless told --allow-unsigned.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// What to write: `onnx` (fp32, always); `mcu` / `onnx-int8` (one quantisation, both
        /// written: the int8 blob the firmware and `scanside screen --engine int8` run, and its
        /// standard QDQ ONNX twin for onnxruntime / TensorRT).
        #[arg(long, default_value = "onnx", value_parser = parse_targets)]
        targets: Targets,
        /// Training images calibrating the int8 activation ranges.
        #[arg(long, default_value_t = 256)]
        calibration_images: usize,
        /// Validation images the calibration methods are compared on (0: all).
        #[arg(long, default_value_t = 0)]
        int8_val_images: usize,
        /// Refuse an int8 model whose blob does not fit this flash budget (e.g. 1M).
        #[arg(long, value_parser = parse_bytes)]
        flash: Option<usize>,
        /// Refuse an int8 model whose activation arena does not fit this RAM budget (e.g. 256K).
        #[arg(long, value_parser = parse_bytes)]
        ram: Option<usize>,
        /// Multi-frame DICOM files: screen the `first` frame, or `every` frame (the result is
        /// the per-class maximum, each frame's result beside it).
        #[arg(long, value_enum, default_value = "first")]
        dicom_frames: DicomFrames,
    },
    /// Make an ed25519 key pair for signing bundles: OUT.key (secret, owner-only) and OUT.pub
    /// (for the runtime's --public-key).
    Keygen {
        /// Path stem, e.g. keys/site-a.
        #[arg(long)]
        out: PathBuf,
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

#[derive(Subcommand)]
enum StudyCommand {
    /// Fine-tune and evaluate every pretraining × label fraction × seed cell (resumable:
    /// finished cells are kept), then write table.md, results.json, plots and index.html.
    LabelEfficiency {
        /// Study configuration (TOML or JSON): split, pretrained runs by name, fractions,
        /// seeds, epochs, ... (see docs/results.md for the one used there).
        #[arg(long)]
        config: PathBuf,
        /// Output folder (re-run with the same folder to resume).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Make a grouped, stratified, seeded train/val/test split with nested label-fraction
    /// subsets, and save it with the data's content hash.
    Split {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Train, val and test fractions.
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.7, 0.15, 0.15])]
        fractions: Vec<f64>,
    },
    /// Read every image and report unreadable files, leaks between partitions, label counts
    /// and imbalance; exit 1 on problems.
    Check {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file to check (default: a fresh split with seed 0 and 70/15/15).
        #[arg(long)]
        split: Option<PathBuf>,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write a PNG grid of original images and augmented views.
    Preview {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file; images come from its training partition.
        #[arg(long)]
        split: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "derm")]
        preset: Preset,
        /// Show the fine-tuning augmentations instead of the self-supervised views.
        #[arg(long)]
        finetune: bool,
        /// PNG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Rows (images).
        #[arg(long, default_value_t = 6)]
        images: usize,
        /// Augmented views per image.
        #[arg(long, default_value_t = 6)]
        views: usize,
        /// Tile size in pixels.
        #[arg(long, default_value_t = 96)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Benchmark decoding plus two augmented views per image (images/s on all cores).
    Bench {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, value_enum, default_value = "derm")]
        preset: Preset,
        /// Model input size.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Images to process (from the start of the dataset).
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Timed repetitions (the best is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
}

/// Where the data is, and for CSV manifests which columns mean what.
#[derive(Args)]
struct SourceArgs {
    /// Dataset: HAM10000 folder, NIH ChestX-ray14 folder, MedMNIST .npz, folder of class
    /// sub-folders, or CSV manifest (with the column options).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CSV: column holding image paths (relative to the manifest's folder or --image-root).
    #[arg(long, help_heading = "CSV manifests")]
    path_column: Option<String>,
    /// CSV: folder the image paths are relative to.
    #[arg(long, help_heading = "CSV manifests")]
    image_root: Option<PathBuf>,
    /// CSV: column holding the case / patient id (images of one case stay in one partition).
    #[arg(long, help_heading = "CSV manifests")]
    group_column: Option<String>,
    /// CSV: column holding the class (multi-class), or the joined findings with
    /// --label-separator (multi-label).
    #[arg(long, help_heading = "CSV manifests")]
    label_column: Option<String>,
    /// CSV: separator between findings in --label-column, e.g. '|'.
    #[arg(long, help_heading = "CSV manifests")]
    label_separator: Option<String>,
    /// CSV: the --label-column value meaning no finding, e.g. 'No Finding'.
    #[arg(long, help_heading = "CSV manifests")]
    no_finding: Option<String>,
    /// CSV: one column per finding with CheXpert values 1 / 0 / -1 (uncertain) / blank.
    #[arg(long, value_delimiter = ',', help_heading = "CSV manifests")]
    finding_columns: Vec<String>,
    /// CSV: class order (default: sorted distinct values).
    #[arg(long, value_delimiter = ',', help_heading = "CSV manifests")]
    classes: Vec<String>,
    /// CSV: how uncertain (-1) findings become targets.
    #[arg(
        long,
        value_enum,
        default_value = "u-ignore",
        help_heading = "CSV manifests"
    )]
    uncertain: UncertaintyPolicy,
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

fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

impl SourceArgs {
    fn csv_options_given(&self) -> bool {
        self.path_column.is_some()
            || self.image_root.is_some()
            || self.group_column.is_some()
            || self.label_column.is_some()
            || self.label_separator.is_some()
            || self.no_finding.is_some()
            || !self.finding_columns.is_empty()
            || !self.classes.is_empty()
    }

    /// The dataset's spec; `None` when no `--data` was given.
    fn spec(&self) -> anyhow::Result<Option<SourceSpec>> {
        let Some(data) = &self.data else {
            if self.csv_options_given() {
                return Err(usage("the CSV column options need --data MANIFEST.csv"));
            }
            return Ok(None);
        };
        let is_csv = data
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if !is_csv {
            if self.csv_options_given() {
                return Err(usage(format!(
                    "--data {}: the CSV column options apply only to a .csv manifest",
                    data.display()
                )));
            }
            return Ok(Some(SourceSpec::detect(data)?));
        }
        let path_column = self.path_column.clone().ok_or_else(|| {
            usage(format!(
                "--data {}: a CSV manifest needs --path-column",
                data.display()
            ))
        })?;
        let classes = (!self.classes.is_empty()).then(|| self.classes.clone());
        let labels = match (&self.label_column, self.finding_columns.is_empty()) {
            (Some(column), true) => match &self.label_separator {
                None => {
                    if self.no_finding.is_some() {
                        return Err(usage("--no-finding needs --label-separator (multi-label)"));
                    }
                    CsvLabels::Class {
                        column: column.clone(),
                        classes,
                    }
                }
                Some(separator) => CsvLabels::Joined {
                    column: column.clone(),
                    separator: separator.clone(),
                    none_value: self.no_finding.clone(),
                    classes,
                },
            },
            (None, false) => {
                if classes.is_some() || self.label_separator.is_some() {
                    return Err(usage(
                        "--finding-columns already names the classes; drop --classes and \
                         --label-separator",
                    ));
                }
                CsvLabels::Findings {
                    columns: self.finding_columns.clone(),
                }
            }
            _ => {
                return Err(usage(format!(
                    "--data {}: give either --label-column or --finding-columns",
                    data.display()
                )))
            }
        };
        Ok(Some(SourceSpec::Csv(CsvSpec {
            path: data.clone(),
            image_root: self.image_root.clone(),
            path_column,
            path_template: "{}".into(),
            group_column: self.group_column.clone(),
            labels,
            uncertainty: self.uncertain,
        })))
    }

    fn required_spec(&self) -> anyhow::Result<SourceSpec> {
        self.spec()?.ok_or_else(|| usage("--data is required"))
    }
}

#[derive(Args)]
struct DataArgs {
    /// Split file from `scanside-train data split` (it names the dataset).
    #[arg(long)]
    split: PathBuf,
    /// The dataset, when it moved since the split was made (its content must not change).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Leave unreadable images out, listing each, instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

impl DataArgs {
    /// The dataset path: `--data`, or the one the split file records.
    fn dataset(&self) -> anyhow::Result<PathBuf> {
        match &self.data {
            Some(d) => Ok(d.clone()),
            None => Ok(SplitFile::read(&self.split)?.source.path().to_path_buf()),
        }
    }
}

/// Block type of the backbone.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// Standard ResNet blocks.
    Resnet,
    /// Depthwise-separable blocks.
    Micro,
}

/// ResNet stem.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stem {
    /// 3×3 stride-1 convolution, no max-pool.
    Small,
    /// torchvision's 7×7 stride-2 convolution + 3×3 stride-2 max-pool.
    Imagenet,
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
    let devices = cli
        .device
        .split(',')
        .map(|one| parse_device::<Inner>(one.trim()))
        .collect::<anyhow::Result<Vec<_>>>();
    match devices.and_then(|devices| run::<Train>(cli.command, &devices)) {
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

fn run<B: AutodiffBackend>(command: Command, devices: &[B::Device]) -> anyhow::Result<ExitCode> {
    let device = &devices[0];
    if devices.len() > 1 && !matches!(command, Command::Pretrain { .. }) {
        return Err(usage("several --device values are for pretrain only"));
    }
    match command {
        Command::Data { command } => return run_data(command),
        Command::Pretrain {
            split,
            data,
            skip_bad,
            out,
            resume,
            config: config_file,
            objective,
            method,
            optimizer,
            weight_decay,
            checkpoint_every,
            health_every,
            train,
            depth,
            arch,
            width,
            stem,
            init,
            accumulate,
            image_size,
            temperature,
            preset,
        } => {
            if resume {
                let summary = resume_pretrain_on::<B>(&out, devices)?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(file) = config_file {
                let config = read_pretrain_config(&file)?;
                let summary = pretrain_on::<B>(&config, &out, devices)?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(ExitCode::SUCCESS);
            }
            let split = split.ok_or_else(|| usage("pretrain needs --split (or --resume)"))?;
            let dataset = match data {
                Some(d) => d,
                None => SplitFile::read(&split)?.source.path().to_path_buf(),
            };
            let mut config = PretrainConfig::new(dataset, split);
            config.skip_bad = skip_bad;
            config.method = method;
            if !objective.is_empty() {
                config.objectives = Objectives::parse(&objective).map_err(usage)?;
            }
            config.optimizer = optimizer;
            config.checkpoint_every = checkpoint_every;
            config.health_every = health_every;
            config.augment = preset.ssl();
            config.model.depth = depth;
            config.model.width_multiplier = width;
            config.model.small_input_stem = stem == Stem::Small;
            config.model.separable = arch == Arch::Micro;
            config.init = init;
            config.accumulation_steps = accumulate;
            config.image_size = image_size;
            config.temperature = temperature;
            config.seed = train.seed;
            config.max_steps = train.max_steps;
            config.epochs = train.epochs.unwrap_or(config.epochs);
            config.batch_size = train.batch_size.unwrap_or(config.batch_size);
            let scaled = config.batch_size as f64 / 256.0;
            config.learning_rate = train.lr.unwrap_or(match optimizer {
                OptimizerKind::Adamw => 1e-3,
                OptimizerKind::Lars => 0.3 * scaled,
                OptimizerKind::Sgd => 0.1 * scaled,
            });
            config.weight_decay = weight_decay.unwrap_or(match optimizer {
                OptimizerKind::Lars => 1e-6,
                _ => 1e-4,
            });
            let summary = pretrain_on::<B>(&config, &out, devices)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Finetune {
            data,
            out,
            pretrained,
            from_scratch,
            qat,
            qat_calibration,
            qat_calibration_images,
            train,
            image_size,
            label_fraction,
            preset,
            mode,
            class_weights,
            patience,
            train_where,
        } => {
            if !from_scratch && pretrained.is_none() && qat.is_none() {
                bail!("finetune needs --pretrained DIR, --from-scratch or --qat RUN");
            }
            let mut config = FinetuneConfig::new(data.dataset()?, data.split, pretrained);
            config.qat = qat.map(|from| QatConfig {
                from,
                calibration: qat_calibration,
                calibration_images: qat_calibration_images,
            });
            config.skip_bad = data.skip_bad;
            config.label_fraction = label_fraction;
            config.augment = preset.finetune();
            config.mode = mode;
            config.class_weights = class_weights;
            config.patience = patience;
            config.train_where = train_where
                .map(|w| SampleFilter::parse(&w))
                .transpose()
                .map_err(usage)?;
            config.image_size = image_size;
            config.seed = train.seed;
            config.max_steps = train.max_steps;
            config.epochs = train.epochs.unwrap_or(config.epochs);
            config.batch_size = train.batch_size.unwrap_or(config.batch_size);
            config.learning_rate = train.lr.unwrap_or(config.learning_rate);
            let summary = finetune::<B>(&config, &out, device)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Probe {
            pretrained,
            random_init,
        } => {
            let report = probe_pretrained::<B::InnerBackend>(&pretrained, random_init, device)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Evaluate {
            run,
            split,
            bootstrap,
            sensitivity,
            population,
        } => {
            if !(sensitivity > 0.0 && sensitivity <= 1.0) {
                return Err(usage(format!(
                    "--sensitivity {sensitivity} must be in (0, 1]"
                )));
            }
            let settings = EvalSettings {
                bootstrap,
                target_sensitivity: sensitivity,
                population: population
                    .map(|w| SampleFilter::parse(&w))
                    .transpose()
                    .map_err(usage)?,
                ..EvalSettings::default()
            };
            let report = evaluate::<B::InnerBackend>(&run, split, &settings, device)?;
            print!("{}", report.table());
        }
        Command::Keygen { out } => {
            let key = signing::generate_key()?;
            let (secret, public) = signing::write_key_pair(&out, &key)?;
            println!(
                "key {}: secret {} (keep private), public {}",
                signing::key_id(&key.verifying_key()),
                secret.display(),
                public.display()
            );
        }
        Command::Report { runs, out } => {
            let index = write_report(&runs, &out)?;
            println!("{}", index.display());
        }
        Command::Study {
            command: StudyCommand::LabelEfficiency { config, out },
        } => {
            let config = read_study_config(&config)?;
            let cells = run_study::<B>(&config, &out, device)?;
            print!(
                "{}",
                std::fs::read_to_string(out.join("table.md")).unwrap_or_default()
            );
            eprintln!(
                "{} cells; {}",
                cells.len(),
                out.join("index.html").display()
            );
        }
        Command::Export {
            run,
            out,
            check_images,
            sign_key,
            targets,
            calibration_images,
            int8_val_images,
            flash,
            ram,
            dicom_frames,
        } => {
            let key = sign_key
                .map(|p| signing::read_signing_key(&p))
                .transpose()?;
            if key.is_none() {
                eprintln!("scanside-train: note: the bundle is unsigned (--sign-key KEY to sign)");
            }
            let options = ExportOptions {
                check_images,
                int8: targets.mcu,
                quantize: QuantizeConfig {
                    calibration_images,
                    validation_images: int8_val_images,
                    ..QuantizeConfig::default()
                },
                flash_budget: flash,
                ram_budget: ram,
                dicom_frames,
            };
            let report = export_run::<B::InnerBackend>(&run, &out, &options, key.as_ref(), device)?;
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
    Ok(ExitCode::SUCCESS)
}

fn run_data(command: DataCommand) -> anyhow::Result<ExitCode> {
    match command {
        DataCommand::Split {
            source,
            out,
            seed,
            fractions,
        } => {
            let index = source.required_spec()?.open()?;
            let split = make_split(&index, seed, [fractions[0], fractions[1], fractions[2]])?;
            save_json(&out, &split)?;
            let train = split.indices(&index, Partition::Train);
            let bags = BagStats::of(&index, &train);
            println!(
                "{}: {} images in {} groups (grouped by {}) -> {:?}, written to {}",
                index.root().display(),
                index.samples.len(),
                BagStats::of(&index, &(0..index.samples.len()).collect::<Vec<_>>()).bags,
                split.grouped_by,
                split.counts,
                out.display()
            );
            println!(
                "MICLe bags (train): {} bags, {} with >= 2 images ({} images)",
                bags.bags, bags.multi_image_bags, bags.images_in_multi_image_bags
            );
            let subsets: Vec<String> = LABEL_FRACTIONS
                .iter()
                .map(|&f| format!("{}%: {}", f * 100.0, split.labeled_subset(&index, f).len()))
                .collect();
            println!("label-fraction subsets (images): {}", subsets.join(", "));
        }
        DataCommand::Check {
            source,
            split,
            json,
        } => {
            let (index, split, label) = match (&split, source.spec()?) {
                (Some(path), spec) => {
                    let data = spec.as_ref().map(|s| s.path().to_path_buf());
                    let (index, split) = open_split(path, data.as_deref())?;
                    (index, split, path.display().to_string())
                }
                (None, Some(spec)) => {
                    let index = spec.open()?;
                    let split = make_split(&index, 0, [0.7, 0.15, 0.15])?;
                    (
                        index,
                        split,
                        "none given; a fresh split (seed 0, 70/15/15)".to_string(),
                    )
                }
                (None, None) => return Err(usage("data check needs --data or --split")),
            };
            let report = check_dataset(&index, &split, &label);
            print!("{}", report.render());
            if let Some(path) = json {
                save_json(&path, &report)?;
            }
            if !report.ok() {
                return Ok(ExitCode::from(1));
            }
        }
        DataCommand::Preview {
            source,
            split,
            preset,
            finetune,
            out,
            images,
            views,
            size,
            seed,
        } => {
            let (index, which) = match (&split, source.spec()?) {
                (Some(path), spec) => {
                    let data = spec.as_ref().map(|s| s.path().to_path_buf());
                    let (index, split) = open_split(path, data.as_deref())?;
                    let train = split.indices(&index, Partition::Train);
                    (index, train)
                }
                (None, Some(spec)) => {
                    let index = spec.open()?;
                    let all = (0..index.samples.len()).collect();
                    (index, all)
                }
                (None, None) => return Err(usage("data preview needs --data or --split")),
            };
            let config = PreviewConfig {
                preset,
                finetune,
                images,
                views,
                size,
                seed,
            };
            let ids = write_preview(&index, &which, &config, &out)?;
            println!(
                "{}: {} images × (original + {views} {:?} views), rows: {}",
                out.display(),
                ids.len(),
                preset,
                ids.join(", ")
            );
        }
        DataCommand::Bench {
            source,
            preset,
            size,
            images,
            repeat,
        } => {
            let index = source.required_spec()?.open()?;
            let which: Vec<usize> = (0..index.samples.len().min(images)).collect();
            let result = bench_decode_augment(&index, &which, size, preset, repeat.max(1))?;
            println!("{}", serde_json::to_string(&result)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A pretraining configuration from TOML (by extension) or JSON.
fn read_pretrain_config(path: &std::path::Path) -> anyhow::Result<PretrainConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let config: PretrainConfig = if is_toml {
        toml::from_str(&text).with_context(|| format!("{}: malformed TOML", path.display()))?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed JSON", path.display()))?
    };
    Ok(config)
}
