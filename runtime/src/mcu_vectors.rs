//! `scanside mcu-vectors`: golden test vectors for the firmware — the bundle's verified int8
//! blob (`OUT/model.i8`) and, for every model input of the given images (each frame of a
//! multi-frame DICOM file under the every-frame policy, as `screen` screens them), the
//! quantised input and the host int8 engine's output (`OUT/vectors.bin`).
//!
//! Inputs come from the screening pipeline, so the firmware is checked on exactly the pixels
//! the host screens. It never runs the fp32 model.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::Bundle;
use crate::infer::{Engine, EngineKind};
use crate::pipeline::read_model_inputs;
use crate::{persist, Error, Result};

/// What `mcu-vectors` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VectorsReport {
    /// The output folder.
    pub out: PathBuf,
    /// The int8 engine's output of each vector, in order.
    pub outputs: Vec<Vec<i8>>,
    /// Number of vectors (model inputs) written.
    pub vectors: usize,
}

/// Runs the bundle's int8 model on every model input of `files` and writes the blob and the
/// vectors into `out` (created when missing).
pub fn write_vectors(bundle: &Bundle, files: &[PathBuf], out: &Path) -> Result<VectorsReport> {
    // Through `Engine::load`, like every front door: the bundle's other files are checked too.
    let Engine::Int8(model) = Engine::load(bundle, EngineKind::Int8)? else {
        unreachable!("Engine::load returns the kind it is asked for")
    };
    let mut pairs = Vec::with_capacity(files.len());
    for file in files {
        for input in read_model_inputs(file, &bundle.manifest.preprocess)? {
            pairs.push(model.vector(&input.values)?);
        }
    }
    // A vectors file without vectors would let the firmware report success having run nothing.
    if pairs.is_empty() {
        return Err(Error::Config {
            path: out.to_path_buf(),
            reason: "no model input in the given files: nothing to write vectors for".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    persist::write_atomically(&out.join("model.i8"), model.blob_bytes())?;
    persist::write_atomically(
        &out.join("vectors.bin"),
        &scanside_int8::vectors::write(&pairs),
    )?;
    Ok(VectorsReport {
        out: out.to_path_buf(),
        vectors: pairs.len(),
        outputs: pairs.into_iter().map(|(_, output)| output).collect(),
    })
}
