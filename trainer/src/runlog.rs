//! Run directories: the resolved config saved as JSON beside the weights, checkpoints saved
//! atomically, one JSONL metrics log per run, and progress bars on long loops.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{de::DeserializeOwned, Serialize};

use crate::{io_error, Error, Result};

/// Appends one JSON object per line to `metrics.jsonl`; each line is written whole and flushed.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(Self { file, path })
    }

    /// Drops the per-step records of steps `>= step` (and health measured after it) from
    /// `dir/metrics.jsonl`, so that a resumed run's log reads as one uninterrupted run.
    pub fn truncate_after(dir: &Path, step: usize) -> Result<()> {
        let path = dir.join("metrics.jsonl");
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(());
        };
        let kept: Vec<&[u8]> = bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter(|line| {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                    return false; // a line torn by the kill
                };
                let after_step = v
                    .get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s as usize >= step);
                let later_health = v
                    .pointer("/health/after_steps")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s as usize > step);
                !(after_step || later_health)
            })
            .collect();
        let mut text = kept.join(&b'\n');
        if !text.is_empty() {
            text.push(b'\n');
        }
        scanside_runtime::persist::write_atomically(&path, &text)?;
        Ok(())
    }

    /// Writes one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(record).expect("JSON values serialise");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_error(&self.path))
    }
}

/// Writes `dir/metrics.csv` from `dir/metrics.jsonl`, for spreadsheets and plotting tools that
/// read CSV: one row per record, nested objects flattened to dotted columns
/// (`health.knn_accuracy`), columns in first-seen order (a record's keys in name order),
/// arrays and missing values left empty.
/// Rewritten whole (atomically) when a run finishes.
pub fn write_metrics_csv(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("metrics.jsonl");
    let bytes = scanside_runtime::persist::read(&source)?;
    let rows: Vec<Vec<(String, String)>> = bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .map(|record| {
            let mut cells = Vec::new();
            flatten("", &record, &mut cells);
            cells
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for (key, _) in rows.iter().flatten() {
        if !columns.contains(key) {
            columns.push(key.clone());
        }
    }
    let mut csv = columns
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    csv.push('\n');
    for row in &rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| {
                row.iter()
                    .find(|(k, _)| k == c)
                    .map_or(String::new(), |(_, v)| csv_cell(v))
            })
            .collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    let path = dir.join("metrics.csv");
    scanside_runtime::persist::write_atomically(&path, csv.as_bytes())?;
    Ok(path)
}

/// A JSON value's scalar leaves as `(dotted.key, text)`.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| flatten(&key(k), v, out)),
        Value::Array(_) | Value::Null => {}
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// RFC 4180 quoting where a cell needs it.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Saves a config as pretty JSON, atomically, creating its directory if needed.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).expect("configs serialise");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    scanside_runtime::persist::write_atomically(path, &json)?;
    Ok(())
}

/// `path` as a file in `dir` records it, so that the record works from any working directory
/// and survives moving the tree that holds both: relative to `dir` when they share more than
/// the file-system root, absolute otherwise.
pub fn recorded_path(path: &Path, dir: &Path) -> PathBuf {
    let (Ok(target), Ok(base)) = (std::path::absolute(path), std::path::absolute(dir)) else {
        return path.to_path_buf();
    };
    let target = target
        .canonicalize()
        .unwrap_or_else(|_| lexically_normal(&target));
    let base = base
        .canonicalize()
        .unwrap_or_else(|_| lexically_normal(&base));
    let common = target
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    if common <= 1 {
        return target;
    }
    let mut relative = PathBuf::new();
    base.components()
        .skip(common)
        .for_each(|_| relative.push(".."));
    target
        .components()
        .skip(common)
        .for_each(|c| relative.push(c));
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    relative
}

/// A path a file in `dir` recorded, resolved: absolute as it is; relative, against `dir` — or,
/// for files written before paths were recorded that way, against the working directory when
/// only there it exists.
pub fn resolved_path(path: &Path, dir: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let beside = lexically_normal(&dir.join(path));
    if beside.exists() || !path.exists() {
        beside
    } else {
        path.to_path_buf()
    }
}

/// `a/b/../c` → `a/c` without touching the file system (leading `..` kept).
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Loads a JSON config, naming the file on failure.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = scanside_runtime::persist::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!("malformed JSON: {e}"),
    })
}

/// Saves module weights to `path` (which must end in `.mpk`) atomically: burn writes into a
/// fresh temporary directory beside it, then the file is renamed into place.
pub fn save_weights<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempdir_in(dir)?;
    let stem = tmp.join("weights");
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    module
        .save_file(stem.clone(), &recorder)
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let written = stem.with_extension("mpk");
    let result = std::fs::rename(&written, path).map_err(io_error(path));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Loads weights saved by [`save_weights`] into `module`.
pub fn load_weights<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "file not found".into(),
        });
    }
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    module
        .load_file(path.to_path_buf(), &recorder, device)
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for attempt in 0..100 {
        let candidate = dir.join(format!(".tmp-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&candidate)(e)),
        }
    }
    Err(Error::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other("no free temp name"),
    })
}

/// Set by [`hide_progress`] (`--quiet`).
static PROGRESS_HIDDEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// No progress bars from now on (indicatif already hides them when stderr is not a terminal).
pub fn hide_progress() {
    PROGRESS_HIDDEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A progress bar for `len` steps, hidden when stderr is not a terminal (CI, tests).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if PROGRESS_HIDDEN.load(std::sync::atomic::Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{lexically_normal, recorded_path, resolved_path};

    #[test]
    fn recorded_paths_are_relative_to_the_recording_file_and_survive_moving_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let (tree, moved) = (root.path().join("a"), root.path().join("b"));
        let data = tree.join("shared/data/ham");
        let run = tree.join("project/runs/demo");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let recorded = recorded_path(&data, &run);
        assert_eq!(recorded, Path::new("../../../shared/data/ham"));
        let back = resolved_path(&recorded, &run);
        assert_eq!(back.canonicalize().unwrap(), data.canonicalize().unwrap());
        std::fs::rename(&tree, &moved).unwrap();
        let back = resolved_path(&recorded, &moved.join("project/runs/demo"));
        assert_eq!(back, moved.join("shared/data/ham"));
        assert_eq!(
            lexically_normal(Path::new("a/b/../../../c/./d")),
            Path::new("../c/d")
        );
        // An absolute record stays as it is.
        assert_eq!(resolved_path(&data, &run), data);
    }

    #[test]
    fn a_relative_record_of_an_older_file_still_resolves_against_the_working_directory() {
        // `Cargo.toml` exists relative to the test's working directory (the crate), not
        // beside a run in a temporary folder: an old record written relative to the working
        // directory is kept as it is.
        let run = tempfile::tempdir().unwrap();
        assert_eq!(
            resolved_path(Path::new("Cargo.toml"), run.path()),
            Path::new("Cargo.toml")
        );
    }

    #[test]
    fn metrics_csv_flattens_records_into_one_column_per_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":1,\"loss\":4.2}\n{\"step\":2,\"loss\":3.9,\"health\":{\"knn\":0.6}}\n\
             {\"stage\":\"pretrain, done\",\"losses\":[1,2]}\n",
        )
        .unwrap();
        let path = super::write_metrics_csv(dir.path()).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            "loss,step,health.knn,stage\n4.2,1,,\n3.9,2,0.6,\n,,,\"pretrain, done\"\n"
        );
    }
}
