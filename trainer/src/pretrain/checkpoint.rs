//! Resumable checkpoints: model and optimiser every `checkpoint_every` steps with the step state
//! (losses, health, MICLe pair counts), written so that a kill at any moment leaves the previous
//! checkpoint usable, and read back to resume. Augmentation and batch order derive from the seed
//! and the step, so that is all the state a run has. Nothing here decides when to save.

use std::path::Path;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::health::Health;
use crate::model::SimClr;
use crate::runlog::{load_json, save_json};
use crate::{Error, Result};

/// Where a checkpoint is and what it holds besides the weights.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    /// Steps completed.
    pub(super) step: usize,
    /// Folder under `checkpoints/`.
    pub(super) dir: String,
    /// Loss of every completed step.
    pub(super) losses: Vec<f32>,
    /// Health measurements so far.
    pub(super) health: Vec<Health>,
    /// MICLe pairs so far: (cross-image, total).
    pub(super) pairs: (usize, usize),
}

const LATEST: &str = "checkpoints/latest.json";

/// The state of the run's latest checkpoint.
pub(super) fn latest(out: &Path) -> Result<CheckpointState> {
    load_json(&out.join(LATEST)).map_err(|e| Error::Checkpoint {
        path: out.join(LATEST),
        reason: format!("no checkpoint to resume from ({e})"),
    })
}

fn checkpoint_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

/// Writes `checkpoints/step-N/` (model + optimiser), then points `latest.json` at it, then
/// removes older ones: a kill at any moment leaves the previous checkpoint usable.
pub(super) fn save_checkpoint<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    out: &Path,
    model: &SimClr<B>,
    optimizer: &O,
    state: &mut CheckpointState,
) -> Result<()> {
    let root = out.join("checkpoints");
    let name = format!("step-{:08}", state.step);
    let partial = root.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(crate::io_error(&partial))?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    model
        .clone()
        .save_file(partial.join("model"), &recorder)
        .map_err(|e| checkpoint_error(&partial)(e.to_string()))?;
    Recorder::<B>::record(&recorder, optimizer.to_record(), partial.join("optimizer"))
        .map_err(|e| checkpoint_error(&partial)(e.to_string()))?;
    let done = root.join(&name);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done).map_err(crate::io_error(&done))?;
    state.dir = name.clone();
    save_json(&out.join(LATEST), state)?;
    for entry in std::fs::read_dir(&root)
        .map_err(crate::io_error(&root))?
        .flatten()
    {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with("step-") && file_name != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The model and optimiser of the checkpoint `state` names.
pub(super) fn load_checkpoint<B: AutodiffBackend, O: Optimizer<SimClr<B>, B>>(
    out: &Path,
    model: SimClr<B>,
    optimizer: O,
    state: &CheckpointState,
    device: &B::Device,
) -> Result<(SimClr<B>, O)> {
    let dir = out.join("checkpoints").join(&state.dir);
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let model = model
        .load_file(dir.join("model"), &recorder, device)
        .map_err(|e| checkpoint_error(&dir)(e.to_string()))?;
    let record = Recorder::<B>::load(&recorder, dir.join("optimizer"), device)
        .map_err(|e| checkpoint_error(&dir)(e.to_string()))?;
    Ok((model, optimizer.load_record(record)))
}
