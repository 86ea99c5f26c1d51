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

/// Saves a config as pretty JSON, atomically, creating its directory if needed.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).expect("configs serialise");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    scanside_runtime::persist::write_atomically(path, &json)?;
    Ok(())
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

/// A progress bar for `len` steps, hidden when stderr is not a terminal (CI, tests).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
