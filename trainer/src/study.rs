//! `scanside-train study label-efficiency --config FILE --out DIR`: fine-tunes every
//! (pretraining × label fraction × seed) cell, evaluates each on the test partition with
//! case-resampled intervals, and writes the table (`table.md`), all numbers (`results.json`),
//! the label-efficiency plots and an HTML page. Pretraining runs are inputs (made and resumed
//! with `pretrain`); "scratch" (random init, same architecture) is a row unless `scratch = false`. Resumable: a
//! cell with its `cell.json` is done and kept when its `request.json` (the fine-tuning and
//! evaluation settings it was made with) matches what the study asks for now, and refused
//! otherwise; a cell without `cell.json` is redone from the start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::config::{EvalSettings, FinetuneConfig, PretrainConfig, StudyConfig, SCRATCH};
use crate::data::{open_split, DatasetIndex, Partition, SourceSpec, SplitFile};
use crate::evaluate::{evaluate, evaluate_other_site, Evaluation};
use crate::finetune::finetune;
use crate::metrics::Interval;
use crate::report::{escape, page};
use crate::run_dir::{load_pretrain_config, CONFIG_FILE};
use crate::runlog::{load_json, save_json};
use crate::{plots, Error, Result};

/// One finished cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Row: a pretraining name or [`SCRATCH`].
    pub pretraining: String,
    /// Label fraction.
    pub fraction: f64,
    /// Seed.
    pub seed: u64,
    /// Labelled training images used.
    pub labelled_images: usize,
    /// Test macro AUC (multi-class) or mean AUC (multi-label), with its interval.
    pub auc: Option<Interval>,
    /// Test top-1 accuracy with its interval (multi-class).
    pub accuracy: Option<Interval>,
    /// Test balanced accuracy with its interval (multi-class).
    pub balanced_accuracy: Option<Interval>,
    /// Macro AUC on the study's other dataset (`other_data`), with its interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_auc: Option<Interval>,
    /// Top-1 accuracy on the other dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_accuracy: Option<Interval>,
    /// Balanced accuracy on the other dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_balanced_accuracy: Option<Interval>,
    /// Fine-tuning + evaluation wall time.
    pub seconds: f64,
}

fn bad(path: &Path, reason: String) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason,
    }
}

fn cell_dir(out: &Path, name: &str, fraction: f64, seed: u64) -> PathBuf {
    out.join("cells")
        .join(name)
        .join(format!("f{:.4}-s{seed}", fraction))
}

/// What a study produced.
#[derive(Debug, Clone, Serialize)]
pub struct StudyResults {
    /// Every cell.
    pub cells: Vec<Cell>,
    /// The table written to `table.md` (Markdown).
    pub table: String,
}

/// Runs (or resumes) the study and writes its outputs into `out`; returns every cell and the
/// table.
pub fn run_study<B: AutodiffBackend>(
    config: &StudyConfig,
    out: &Path,
    device: &B::Device,
) -> Result<StudyResults> {
    let grid = Grid::open(config, out)?;
    let mut cells = Vec::new();
    let total = grid.rows.len() * config.fractions.len() * config.seeds.len();
    for (name, pretrained) in &grid.rows {
        for &fraction in &config.fractions {
            for &seed in &config.seeds {
                let dir = cell_dir(out, name, fraction, seed);
                let done = dir.join("cell.json");
                let request = grid.request(pretrained, fraction, seed);
                if done.is_file() {
                    check_finished_cell(&request, &dir)?;
                    cells.push(load_json::<Cell>(&done)?);
                    continue;
                }
                eprintln!(
                    "study cell {}/{total}: {name}, {:.1} % labels, seed {seed}",
                    cells.len() + 1,
                    fraction * 100.0
                );
                if dir.exists() {
                    // Interrupted before it finished: start the cell again.
                    std::fs::remove_dir_all(&dir).map_err(crate::io_error(&dir))?;
                }
                save_json(&dir.join(REQUEST_FILE), &request)?;
                let cell = grid.run_cell::<B>(name, &request, &dir, device)?;
                save_json(&done, &cell)?;
                cells.push(cell);
            }
        }
    }
    save_json(&out.join("results.json"), &cells)?;
    let table = write_outputs(config, &grid.rows, &cells, out)?;
    eprintln!(
        "{} cells; {}",
        cells.len(),
        out.join("index.html").display()
    );
    Ok(StudyResults { cells, table })
}

/// What one cell is made with; saved as `request.json` before it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CellRequest {
    finetune: FinetuneConfig,
    /// Labelled training images the fraction gives.
    labelled: usize,
    /// Bootstrap resamples of the evaluation.
    bootstrap: usize,
    /// The other dataset each cell is also evaluated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    other_data: Option<SourceSpec>,
}

const REQUEST_FILE: &str = "request.json";

/// A finished cell is reused only when it was made with the settings the study asks for now:
/// otherwise a resumed study would put cells of two configurations in one table.
fn check_finished_cell(request: &CellRequest, dir: &Path) -> Result<()> {
    let path = dir.join(REQUEST_FILE);
    let refuse = |what: String| {
        bad(
            &path,
            format!(
                "{what}; use another --out, or remove {} to run the cell again",
                dir.display()
            ),
        )
    };
    if !path.is_file() {
        return Err(refuse(
            "a finished cell without the settings it was made with".into(),
        ));
    }
    let saved: serde_json::Value = load_json(&path)?;
    // Through text, as the saved one went: an f32 read back from text is not the f32 itself.
    let now: serde_json::Value =
        serde_json::from_slice(&serde_json::to_vec(request).expect("configs serialise"))
            .expect("serde_json reads what it wrote");
    let differing = differing_fields(&saved, &now);
    if differing.is_empty() {
        return Ok(());
    }
    Err(refuse(format!(
        "this finished cell was made with other settings than the study asks for now ({})",
        differing.join(", ")
    )))
}

/// Dotted names of the leaves where two JSON values differ.
fn differing_fields(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let (u, v) = (
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    );
                    differing_fields(u, v).into_iter().map(move |sub| {
                        if sub.is_empty() {
                            k.clone()
                        } else {
                            format!("{k}.{sub}")
                        }
                    })
                })
                .collect()
        }
        _ if a == b => vec![],
        _ => vec![String::new()],
    }
}

/// A study's fixed parts: its settings, its data, its rows (a name and the pretraining run, or
/// none for scratch) and the first pretraining run, whose network the scratch row copies.
struct Grid<'a> {
    config: &'a StudyConfig,
    dataset: PathBuf,
    index: DatasetIndex,
    split: SplitFile,
    first_pretraining: Option<PretrainConfig>,
    rows: Vec<(String, Option<PathBuf>)>,
}

impl<'a> Grid<'a> {
    /// Checks the settings and the pretraining runs, saves the settings as `study.json` and
    /// opens the data.
    fn open(config: &'a StudyConfig, out: &Path) -> Result<Self> {
        config.validate().map_err(|reason| bad(out, reason))?;
        for (name, dir) in &config.pretrained {
            if !dir.join(CONFIG_FILE).is_file() {
                return Err(bad(
                    dir,
                    format!("pretraining run '{name}' has no config.json"),
                ));
            }
        }
        std::fs::create_dir_all(out).map_err(crate::io_error(out))?;
        save_json(&out.join("study.json"), config)?;
        let dataset = match &config.data {
            Some(d) => d.clone(),
            None => SplitFile::read(&config.split)?.source.path().to_path_buf(),
        };
        let (index, split) = open_split(&config.split, Some(&dataset))?;
        let first_pretraining: Option<PretrainConfig> = config
            .pretrained
            .values()
            .next()
            .map(|dir| load_pretrain_config(dir))
            .transpose()?;
        let mut rows: Vec<(String, Option<PathBuf>)> = Vec::new();
        if config.scratch {
            rows.push((SCRATCH.to_string(), None));
        }
        rows.extend(
            config
                .pretrained
                .iter()
                .map(|(n, d)| (n.clone(), Some(d.clone()))),
        );
        Ok(Self {
            config,
            dataset,
            index,
            split,
            first_pretraining,
            rows,
        })
    }

    /// The fine-tuning of one cell, and its labelled images: at least `min_steps` steps,
    /// validated ten times over the run; the scratch row gets the pretraining runs' network.
    fn finetune_config(
        &self,
        pretrained: &Option<PathBuf>,
        fraction: f64,
        seed: u64,
    ) -> (FinetuneConfig, usize) {
        let config = self.config;
        let mut fine = FinetuneConfig::new(
            self.dataset.clone(),
            config.split.clone(),
            pretrained.clone(),
        );
        fine.label_fraction = fraction;
        fine.seed = seed;
        fine.batch_size = config.batch_size;
        let labelled = self.split.labeled_subset(&self.index, fraction).len();
        let steps_per_epoch = (labelled / config.batch_size.min(labelled).max(1)).max(1);
        fine.epochs = config
            .epochs
            .max(config.min_steps.unwrap_or(0).div_ceil(steps_per_epoch));
        fine.validate_every = fine.epochs.div_ceil(10).max(1);
        if let Some(lr) = config.learning_rate {
            fine.learning_rate = lr;
        }
        fine.mode = config.mode;
        fine.class_weights = config.class_weights;
        fine.patience = config.patience;
        fine.augment = config.preset.finetune();
        if pretrained.is_none() {
            let first = self.first_pretraining.as_ref();
            fine.model = config
                .scratch_model
                .clone()
                .or_else(|| first.map(|p| p.model.clone()))
                .unwrap_or_default();
            fine.image_size = config
                .scratch_image_size
                .or_else(|| first.map(|p| p.image_size))
                .unwrap_or(fine.image_size);
        }
        (fine, labelled)
    }

    /// The settings of one cell.
    fn request(&self, pretrained: &Option<PathBuf>, fraction: f64, seed: u64) -> CellRequest {
        let (finetune, labelled) = self.finetune_config(pretrained, fraction, seed);
        CellRequest {
            finetune,
            labelled,
            bootstrap: self.config.bootstrap,
            other_data: self.config.other_data.clone(),
        }
    }

    /// Fine-tunes one cell into `dir` and evaluates it on the test partition.
    fn run_cell<B: AutodiffBackend>(
        &self,
        name: &str,
        request: &CellRequest,
        dir: &Path,
        device: &B::Device,
    ) -> Result<Cell> {
        let started = Instant::now();
        let (fine, labelled) = (&request.finetune, request.labelled);
        let (fraction, seed) = (fine.label_fraction, fine.seed);
        finetune::<B>(fine, dir, device)?;
        let settings = EvalSettings {
            bootstrap: request.bootstrap,
            seed,
            ..EvalSettings::default()
        };
        let evaluation = evaluate::<B::InnerBackend>(dir, Partition::Test, &settings, device)?;
        let (auc, accuracy, balanced_accuracy) = cell_intervals(&evaluation);
        let (other_auc, other_accuracy, other_balanced_accuracy) = match &request.other_data {
            Some(data) => {
                let report = evaluate_other_site::<B::InnerBackend>(dir, data, &settings, device)?;
                cell_intervals(&Evaluation::MultiClass(report.other))
            }
            None => (None, None, None),
        };
        Ok(Cell {
            pretraining: name.to_string(),
            fraction,
            seed,
            labelled_images: labelled,
            auc,
            accuracy,
            balanced_accuracy,
            other_auc,
            other_accuracy,
            other_balanced_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// A cell's AUC, accuracy and balanced accuracy with their intervals (the point estimate as a
/// zero-width interval when the evaluation drew none; accuracies only for multi-class runs).
fn cell_intervals(
    evaluation: &Evaluation,
) -> (Option<Interval>, Option<Interval>, Option<Interval>) {
    let point = |v: f64| Interval {
        estimate: v,
        low: v,
        high: v,
    };
    match evaluation {
        Evaluation::MultiClass(r) => {
            let i = r.intervals.as_ref();
            (
                i.and_then(|i| i.macro_auc)
                    .or(r.metrics.macro_auc.map(point)),
                i.and_then(|i| i.accuracy)
                    .or(Some(point(r.metrics.accuracy))),
                i.and_then(|i| i.balanced_accuracy)
                    .or(Some(point(r.metrics.balanced_accuracy))),
            )
        }
        Evaluation::MultiLabel(r) => (
            r.mean_auc_interval.or(r.metrics.mean_auc.map(point)),
            None,
            None,
        ),
    }
}

/// Mean over seeds of each interval's bounds, per (row, fraction).
fn averaged(
    cells: &[Cell],
    name: &str,
    fraction: f64,
    pick: fn(&Cell) -> Option<Interval>,
) -> Option<Interval> {
    let found: Vec<Interval> = cells
        .iter()
        .filter(|c| c.pretraining == name && c.fraction == fraction)
        .filter_map(pick)
        .collect();
    if found.is_empty() {
        return None;
    }
    let n = found.len() as f64;
    Some(Interval {
        estimate: found.iter().map(|i| i.estimate).sum::<f64>() / n,
        low: found.iter().map(|i| i.low).sum::<f64>() / n,
        high: found.iter().map(|i| i.high).sum::<f64>() / n,
    })
}

fn write_outputs(
    config: &StudyConfig,
    rows: &[(String, Option<PathBuf>)],
    cells: &[Cell],
    out: &Path,
) -> Result<String> {
    type Pick = fn(&Cell) -> Option<Interval>;
    let metrics: [(&str, &str, Pick); 6] = [
        (
            "auc",
            "test AUC (macro one-vs-rest; mean per finding for multi-label)",
            |c| c.auc,
        ),
        ("accuracy", "test top-1 accuracy", |c| c.accuracy),
        ("balanced-accuracy", "test balanced accuracy", |c| {
            c.balanced_accuracy
        }),
        // Present only when the study names `other_data`.
        ("other-auc", "other dataset: macro AUC", |c| c.other_auc),
        ("other-accuracy", "other dataset: top-1 accuracy", |c| {
            c.other_accuracy
        }),
        (
            "other-balanced-accuracy",
            "other dataset: balanced accuracy",
            |c| c.other_balanced_accuracy,
        ),
    ];
    let mut markdown = format!(
        "Label-efficiency study: {} fine-tuning epochs, {:?} mode, seeds {:?}; each cell the mean over \
         seeds of the estimate and of its 95 % bootstrap interval (resampled by case) on the test partition.\n",
        config.epochs, config.mode, config.seeds
    );
    let mut html = String::new();
    for (file, title, pick) in metrics {
        if !cells.iter().any(|c| pick(c).is_some()) {
            continue;
        }
        let _ = write!(markdown, "\n### {title}\n\n| pretraining |");
        for f in &config.fractions {
            let _ = write!(markdown, " {:.0} % |", f * 100.0);
        }
        markdown += "\n|---|";
        markdown += &"---|".repeat(config.fractions.len());
        markdown += "\n";
        let mut table = format!("<h2>{}</h2><table><tr><th>pretraining</th>", escape(title));
        for f in &config.fractions {
            let _ = write!(table, "<th>{:.0} %</th>", f * 100.0);
        }
        table += "</tr>";
        let mut series = Vec::new();
        for (name, _) in rows {
            let _ = write!(markdown, "| {name} |");
            let _ = write!(table, "<tr><td>{}</td>", escape(name));
            let mut points = Vec::new();
            for &f in &config.fractions {
                match averaged(cells, name, f, pick) {
                    Some(i) => {
                        let _ = write!(
                            markdown,
                            " {:.3} [{:.3}, {:.3}] |",
                            i.estimate, i.low, i.high
                        );
                        let _ = write!(
                            table,
                            "<td>{:.3} [{:.3}, {:.3}]</td>",
                            i.estimate, i.low, i.high
                        );
                        points.push((f, i.estimate, Some((i.low, i.high))));
                    }
                    None => {
                        markdown += " n/a |";
                        table += "<td>n/a</td>";
                    }
                }
            }
            markdown += "\n";
            table += "</tr>";
            series.push((name.clone(), points));
        }
        table += "</table>\n";
        let svg = plots::line_chart(
            title,
            "labelled training images (fraction, log scale)",
            title,
            &series,
            true,
        );
        scanside_runtime::persist::write_atomically(
            &out.join(format!("label-efficiency-{file}.svg")),
            svg.as_bytes(),
        )?;
        html += &table;
        html += &svg;
    }
    let mut sizes = String::from("\nLabelled images per fraction:");
    for f in &config.fractions {
        if let Some(c) = cells.iter().find(|c| c.fraction == *f) {
            let _ = write!(sizes, " {:.0} % = {};", f * 100.0, c.labelled_images);
        }
    }
    markdown += &sizes;
    markdown += "\n";
    scanside_runtime::persist::write_atomically(&out.join("table.md"), markdown.as_bytes())?;
    html += &format!("<p class=\"note\">{}</p>", escape(&sizes));
    scanside_runtime::persist::write_atomically(
        &out.join("index.html"),
        page("label-efficiency study", &html).as_bytes(),
    )?;
    Ok(markdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(epochs: usize) -> CellRequest {
        let mut finetune = FinetuneConfig::new("data".into(), "split.json".into(), None);
        finetune.epochs = epochs;
        CellRequest {
            finetune,
            labelled: 10,
            bootstrap: 200,
            other_data: None,
        }
    }

    #[test]
    fn a_resumed_study_refuses_a_cell_made_with_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        save_json(&dir.path().join(REQUEST_FILE), &request(5)).unwrap();
        assert!(check_finished_cell(&request(5), dir.path()).is_ok());
        // The bug: the finished cell was reused whatever the study now asked for.
        let err = check_finished_cell(&request(7), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(finetune.epochs)") && err.contains(REQUEST_FILE),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(REQUEST_FILE)).unwrap();
        let err = check_finished_cell(&request(5), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("without the settings"), "{err}");
    }
}
