//! Arguments of the `data` commands — `split`, `check`, `preview`, `bench` — the dataset options
//! they share (a dataset path and, for CSV manifests, which columns mean what), and one library
//! call each. Argument checks only: the work is the library's.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use scanside_trainer::augment::Preset;
use scanside_trainer::data::{
    bench_source, check_split_or_source, preview_split_or_source, write_split, CompositionConfig,
    CsvLabels, CsvSpec, PreviewConfig, SourceSpec, SplitConfig, UncertaintyPolicy,
    DEFAULT_SPLIT_FRACTIONS,
};

use crate::{print_result, usage};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Make a grouped, seeded train/val/test split whose partitions resemble the whole
    /// (stratified on label, images per group and a metadata column), with nested
    /// label-fraction subsets; save it with the data's content hash and show each partition's
    /// composition.
    #[command(after_help = crate::examples::DATA_SPLIT)]
    Split {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Train, val and test fractions.
        #[arg(
            long,
            value_delimiter = ',',
            num_args = 3,
            default_values_t = DEFAULT_SPLIT_FRACTIONS
        )]
        fractions: Vec<f64>,
        /// Metadata column to stratify on beside label and group size (default: HAM10000
        /// dx_type, NIH view; `none` for no column).
        #[arg(long, value_name = "COLUMN")]
        stratify_by: Option<String>,
        #[command(flatten)]
        compare: CompareArgs,
    },
    /// Read every image and report unreadable files, leaks between partitions, label counts
    /// and imbalance; exit 1 on problems.
    #[command(after_help = crate::examples::DATA_CHECK)]
    Check {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file to check (default: a fresh split with seed 0 and 70/15/15).
        #[arg(long)]
        split: Option<PathBuf>,
        /// Also write the report as JSON to this file (`--json` prints it instead of the
        /// text).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        compare: CompareArgs,
    },
    /// Write a PNG grid of original images and augmented views.
    #[command(after_help = crate::examples::DATA_PREVIEW)]
    Preview {
        #[command(flatten)]
        source: SourceArgs,
        /// Split file; images come from its training partition.
        #[arg(long)]
        split: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = PreviewConfig::default().preset)]
        preset: Preset,
        /// Show the fine-tuning augmentations instead of the self-supervised views.
        #[arg(long)]
        finetune: bool,
        /// PNG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Rows (images).
        #[arg(long, default_value_t = PreviewConfig::default().images)]
        images: usize,
        /// Augmented views per image.
        #[arg(long, default_value_t = PreviewConfig::default().views)]
        views: usize,
        /// Tile size in pixels.
        #[arg(long, default_value_t = PreviewConfig::default().size)]
        size: u32,
        #[arg(long, default_value_t = PreviewConfig::default().seed)]
        seed: u64,
    },
    /// Benchmark decoding plus two augmented views per image (images/s on all cores).
    #[command(after_help = crate::examples::DATA_BENCH)]
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

/// Runs a `data` command: exit 1 when `check` finds problems.
pub fn run(command: DataCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        DataCommand::Split {
            source,
            out,
            seed,
            fractions,
            stratify_by,
            compare,
        } => {
            let config = SplitConfig {
                seed,
                fractions: [fractions[0], fractions[1], fractions[2]],
                stratify_by,
            };
            let spec = source.required_spec()?;
            let summary = write_split(&spec, &config, &compare.config(), &out)?;
            print_result(json, summary.render(), &summary)
        }
        DataCommand::Check {
            source,
            split,
            report: json_file,
            compare,
        } => {
            let spec = source.spec()?;
            if split.is_none() && spec.is_none() {
                return Err(usage("data check needs --data or --split"));
            }
            let report = check_split_or_source(
                split.as_deref(),
                spec.as_ref(),
                &compare.config(),
                json_file.as_deref(),
            )?;
            print_result(json, report.render(), &report)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
            let spec = source.spec()?;
            if split.is_none() && spec.is_none() {
                return Err(usage("data preview needs --data or --split"));
            }
            let config = PreviewConfig {
                preset,
                finetune,
                images,
                views,
                size,
                seed,
            };
            let line = preview_split_or_source(split.as_deref(), spec.as_ref(), &config, &out)?;
            let value = serde_json::json!({ "written": out, "summary": line });
            print_result(json, format_args!("{line}\n"), &value)
        }
        DataCommand::Bench {
            source,
            preset,
            size,
            images,
            repeat,
        } => {
            let result = bench_source(&source.required_spec()?, images, size, preset, repeat)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Which metadata columns each partition is compared with the whole on.
#[derive(Args)]
pub struct CompareArgs {
    /// Metadata columns whose shares are compared per partition, e.g. dx_type,sex,age_bucket
    /// (numeric columns are bucketed; NAME_bucket buckets NAME). Default: the column the split
    /// was stratified on.
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    compare: Vec<String>,
}

impl CompareArgs {
    fn config(&self) -> CompositionConfig {
        CompositionConfig {
            columns: self.compare.clone(),
            ..CompositionConfig::default()
        }
    }
}

/// Where the data is, and for CSV manifests which columns mean what.
#[derive(Args)]
pub struct SourceArgs {
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
        default_value_t = UncertaintyPolicy::default(),
        help_heading = "CSV manifests"
    )]
    uncertain: UncertaintyPolicy,
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

    /// The dataset's spec; `None` when no `--data` was given. CSV options without a CSV
    /// manifest, or contradicting each other, are usage errors.
    pub fn spec(&self) -> anyhow::Result<Option<SourceSpec>> {
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
        Ok(Some(SourceSpec::Csv(CsvSpec {
            path: data.clone(),
            image_root: self.image_root.clone(),
            path_column,
            path_template: "{}".into(),
            group_column: self.group_column.clone(),
            labels: self.csv_labels(data)?,
            uncertainty: self.uncertain,
        })))
    }

    /// How a CSV manifest's labels are given: one class column, a joined findings column, or
    /// one column per finding.
    fn csv_labels(&self, data: &std::path::Path) -> anyhow::Result<CsvLabels> {
        let classes = (!self.classes.is_empty()).then(|| self.classes.clone());
        match (&self.label_column, self.finding_columns.is_empty()) {
            (Some(column), true) => match &self.label_separator {
                None => {
                    if self.no_finding.is_some() {
                        return Err(usage("--no-finding needs --label-separator (multi-label)"));
                    }
                    Ok(CsvLabels::Class {
                        column: column.clone(),
                        classes,
                    })
                }
                Some(separator) => Ok(CsvLabels::Joined {
                    column: column.clone(),
                    separator: separator.clone(),
                    none_value: self.no_finding.clone(),
                    classes,
                }),
            },
            (None, false) => {
                if classes.is_some() || self.label_separator.is_some() {
                    return Err(usage(
                        "--finding-columns already names the classes; drop --classes and \
                         --label-separator",
                    ));
                }
                Ok(CsvLabels::Findings {
                    columns: self.finding_columns.clone(),
                })
            }
            _ => Err(usage(format!(
                "--data {}: give either --label-column or --finding-columns",
                data.display()
            ))),
        }
    }

    /// The dataset's spec, which this command needs.
    pub fn required_spec(&self) -> anyhow::Result<SourceSpec> {
        self.spec()?.ok_or_else(|| usage("--data is required"))
    }
}
