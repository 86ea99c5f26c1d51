//! Arguments of the commands that measure finished runs — `probe`, `evaluate`, `report` — and
//! how they become the library's settings; defaults are the library's, never written here.

use std::path::PathBuf;

use clap::Args;
use scanside_trainer::config::EvalSettings;
use scanside_trainer::data::{Partition, SampleFilter, SourceSpec};

use crate::data_args::SourceArgs;
use crate::usage;

#[derive(Args)]
pub struct ProbeArgs {
    /// Pretraining run directory.
    #[arg(long)]
    pub pretrained: PathBuf,
    /// Probe a fresh random-init backbone of the same architecture instead (the baseline).
    #[arg(long)]
    pub random_init: bool,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// Fine-tuning run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Partition of the run's split to evaluate (train, val, test).
    #[arg(long, default_value_t = EvalSettings::default().partition)]
    partition: Partition,
    /// The old spelling of --partition (everywhere else --split names a split file).
    #[arg(long = "split", hide = true, value_name = "PARTITION")]
    old_partition: Option<Partition>,
    /// Bootstrap resamples for the confidence intervals (0: none).
    #[arg(long, default_value_t = EvalSettings::default().bootstrap)]
    bootstrap: usize,
    /// Sensitivity each class's threshold must reach on val (screening: 0.95).
    #[arg(long, default_value_t = EvalSettings::default().target_sensitivity)]
    sensitivity: f64,
    /// Only the partition's images of a sub-population, COLUMN=VALUE[,VALUE...] (e.g.
    /// dx_type=histo, view=AP); written to eval-<partition>-<column>-<values>.json.
    #[arg(long = "where", value_name = "COLUMN=VALUES")]
    population: Option<String>,
    /// Another site's labelled dataset, scored instead of a partition: all its images (or
    /// --where's), intervals resampled by its groups, the shift from the run's own test
    /// partition; written to eval-data-<name>.json.
    #[command(flatten, next_help_heading = "Another site's data (--data)")]
    other: SourceArgs,
}

impl EvaluateArgs {
    /// Another dataset to evaluate on (`--data`); a usage error beside `--partition`.
    pub fn other_data(&self) -> anyhow::Result<Option<SourceSpec>> {
        let other = self.other.spec()?;
        let partition_given =
            self.old_partition.is_some() || self.partition != EvalSettings::default().partition;
        if other.is_some() && partition_given {
            return Err(usage(
                "give --data (another dataset) or --partition (of the run's split), not both",
            ));
        }
        Ok(other)
    }

    /// The partition to evaluate; the old `--split PARTITION` still works, with a warning.
    pub fn partition(&self) -> anyhow::Result<Partition> {
        match self.old_partition {
            None => Ok(self.partition),
            Some(_) if self.partition != EvalSettings::default().partition => Err(usage(
                "give --partition only (--split PARTITION is its old spelling)",
            )),
            Some(partition) => {
                eprintln!(
                    "scanside-train: warning: `evaluate --split {partition}` is now \
                     `--partition {partition}` (--split names a split file elsewhere)"
                );
                Ok(partition)
            }
        }
    }

    /// The evaluation settings; a value out of range is a usage error.
    pub fn settings(&self) -> anyhow::Result<EvalSettings> {
        let settings = EvalSettings {
            bootstrap: self.bootstrap,
            target_sensitivity: self.sensitivity,
            population: self
                .population
                .as_deref()
                .map(SampleFilter::parse)
                .transpose()
                .map_err(usage)?,
            ..EvalSettings::default()
        };
        settings.validate().map_err(usage)?;
        Ok(settings)
    }
}

#[derive(Args)]
pub struct ReportArgs {
    /// Fine-tuning run directories (each evaluated first).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for index.html and the SVG plots.
    #[arg(long)]
    pub out: PathBuf,
}
