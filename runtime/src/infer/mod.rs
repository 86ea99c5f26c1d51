//! Inference: a bundle's model made runnable once — fp32 on the direct engine ([`direct`]) or
//! tract, int8 on the shared int8 core ([`int8`]) — then run on each preprocessed input.
//!
//! Only the engine's own model file is read (the others are checked against their hashes
//! meanwhile). The fp32 model's ONNX protobuf is decoded and the direct engine plans from it,
//! taking the weights out as it packs them; when it declines (an operator it does not run, a
//! CPU without its kernels) tract builds from the model — decoded again when the planner had
//! begun. Why it declined is kept in the [`Engine`] ([`Engine::note`]) and logged at
//! debug level, never dropped.
//!
//! This stage never decodes, preprocesses or reports: it turns an input tensor into logits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::bundle::{Bundle, ModelFile};
use crate::{Error, Result};

pub mod direct;
pub mod int8;
mod threads;

pub use direct::DirectClassifier;
pub use int8::Int8Classifier;

/// Decodes an ONNX model's protobuf once, for the direct planner and tract alike; `path` names
/// it in errors (worded as tract words them).
pub fn decode_onnx(bytes: &[u8], path: &Path) -> Result<pb::ModelProto> {
    pb::ModelProto::decode(bytes).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        reason: format!("Reading proto model: {e}"),
    })
}

/// The cores of this machine: the default number of threads of one inference.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A runnable classifier built from a bundle's model.
#[derive(Debug, Clone)]
pub struct Classifier {
    plan: Arc<TypedRunnableModel>,
    shape: [usize; 4],
    num_classes: usize,
    model_path: PathBuf,
    /// tract's executor for one inference (single-threaded unless [`Classifier::with_threads`]).
    executor: Executor,
    threads: usize,
}

impl Classifier {
    /// Reads the bundle's fp32 model, then parses, shapes, optimises and checks it against the
    /// manifest.
    pub fn load(bundle: &Bundle) -> Result<Self> {
        let bytes = bundle.read_model(ModelFile::Fp32)?;
        Self::from_bytes(bundle, &bytes, bundle.model_path())
    }

    /// Like [`Classifier::load`] for another ONNX model of the bundle (bytes already verified
    /// against the manifest), named `model_path` in errors.
    pub fn from_bytes(bundle: &Bundle, model_bytes: &[u8], model_path: PathBuf) -> Result<Self> {
        let proto = decode_onnx(model_bytes, &model_path)?;
        Self::from_proto(bundle, &proto, model_path)
    }

    /// Like [`Classifier::from_bytes`] for a model already decoded with [`decode_onnx`].
    pub fn from_proto(
        bundle: &Bundle,
        proto: &pb::ModelProto,
        model_path: PathBuf,
    ) -> Result<Self> {
        let p = &bundle.manifest.preprocess;
        let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
        let model_err = |e: TractError| Error::Model {
            path: model_path.clone(),
            reason: format!("{e:#}"),
        };
        let plan = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .map_err(|e| e.context("Translating proto model to model"))
            .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(model_err)?;
        let output_fact = plan.model().output_fact(0).map_err(model_err)?;
        let dims: Option<Vec<usize>> = output_fact.shape.as_concrete().map(|s| s.to_vec());
        let num_classes = bundle.manifest.class_names.len();
        if dims.as_deref() != Some(&[1, num_classes][..]) {
            return Err(Error::Bundle {
                path: model_path,
                reason: format!(
                    "model output shape {:?} does not match the manifest's {num_classes} classes",
                    output_fact.shape
                ),
            });
        }
        Ok(Self {
            plan,
            shape,
            num_classes,
            model_path,
            executor: Executor::SingleThread,
            threads: 1,
        })
    }

    /// Runs each inference's matrix products on `threads` threads (tract's rayon executor).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.executor = if threads > 1 {
            Executor::multithread_with_name(threads, "scanside-tract")
        } else {
            Executor::SingleThread
        };
        self.threads = threads.max(1);
        self
    }

    /// Runs one preprocessed `C×H×W` input and returns the logits.
    pub fn logits(&self, input: &[f32]) -> Result<Vec<f32>> {
        let err = |reason: String| Error::Model {
            path: self.model_path.clone(),
            reason,
        };
        let tensor = Tensor::from_shape(&self.shape, input).map_err(|e| err(format!("{e:#}")))?;
        let outputs = multithread_tract_scope(self.executor.clone(), || {
            self.plan.run(tvec!(tensor.into()))
        })
        .map_err(|e| err(format!("{e:#}")))?;
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| err(format!("{e:#}")))?;
        let logits: Vec<f32> = view.iter().copied().collect();
        if logits.len() != self.num_classes {
            return Err(err(format!(
                "model returned {} values, {} expected",
                logits.len(),
                self.num_classes
            )));
        }
        Ok(logits)
    }
}

/// Which of a bundle's models runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The fp32 ONNX model on the direct engine where it runs fast (x86-64 with AVX2 and FMA,
    /// a graph of the operators it knows), otherwise on tract.
    #[default]
    Fp32,
    /// The fp32 ONNX model on tract, whatever the host.
    Tract,
    /// The int8 blob on the shared int8 core.
    Int8,
    /// The int8 model's QDQ ONNX twin on tract (for comparison: tract runs QDQ in float).
    Qdq,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(EngineKind::Fp32),
            "tract" => Ok(EngineKind::Tract),
            "int8" => Ok(EngineKind::Int8),
            "qdq" => Ok(EngineKind::Qdq),
            other => Err(format!(
                "unknown engine {other:?}: expected fp32, tract, int8 or qdq"
            )),
        }
    }
}

/// Why the direct engine did not take an fp32 model, which then runs on tract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectDeclined {
    /// The CPU has neither AVX2 + FMA (x86-64) nor NEON (aarch64): the plain loops would be
    /// slower than tract.
    #[error(
        "its vector kernels need AVX2 and FMA (x86-64) or NEON (aarch64), which this CPU lacks"
    )]
    NoVectorKernels,
    /// The graph holds something the direct engine does not run.
    #[error("{0}")]
    Unsupported(#[from] direct::Unsupported),
}

/// A loaded model of either kind.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The direct fp32 engine.
    Direct(DirectClassifier),
    /// tract fp32, chosen as `fp32` because the direct engine declined.
    Fp32 {
        /// The model on tract.
        tract: Classifier,
        /// Why the direct engine declined.
        declined: DirectDeclined,
    },
    /// tract fp32, asked for by name.
    Tract(Classifier),
    /// The int8 core.
    Int8(Int8Classifier),
    /// tract on the QDQ ONNX model.
    Qdq(Classifier),
}

impl Engine {
    /// Loads the bundle's model of the given kind; `Int8` needs a bundle exported with the
    /// `mcu` target. Only that model's file is read; the bundle's other model files are
    /// checked against their hashes on a second thread meanwhile (a bundle runs only whole as
    /// signed), so they cost neither memory nor, with two cores, time.
    pub fn load(bundle: &Bundle, kind: EngineKind) -> Result<Self> {
        let own = match kind {
            EngineKind::Fp32 | EngineKind::Tract => ModelFile::Fp32,
            EngineKind::Int8 => ModelFile::Int8Blob,
            EngineKind::Qdq => ModelFile::QdqOnnx,
        };
        std::thread::scope(|scope| {
            let others = scope.spawn(|| bundle.verify_models_except(own));
            let engine = match kind {
                EngineKind::Fp32 => Self::load_fp32(bundle),
                EngineKind::Tract => Classifier::load(bundle).map(Engine::Tract),
                EngineKind::Qdq => Self::load_qdq(bundle),
                EngineKind::Int8 => Int8Classifier::load(bundle).map(Engine::Int8),
            };
            let others = others
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            others.and(engine)
        })
    }

    /// The direct engine when it takes the model, else tract (which also names what is wrong
    /// with a model that neither can run).
    fn load_fp32(bundle: &Bundle) -> Result<Self> {
        let path = bundle.model_path();
        // The file's bytes are dropped once decoded: the engine keeps what it built from them.
        let mut proto = decode_onnx(&bundle.read_model(ModelFile::Fp32)?, &path)?;
        let declined = match direct_engine(bundle, &mut proto, &path) {
            Ok(model) => return Ok(Engine::Direct(model)),
            Err(declined) => declined,
        };
        log::debug!(
            "{}: direct engine declined: {declined}; running on tract",
            path.display()
        );
        if let DirectDeclined::Unsupported(_) = declined {
            // The planner may have taken weights out of the model before it declined.
            proto = decode_onnx(&bundle.read_model(ModelFile::Fp32)?, &path)?;
        }
        Ok(Engine::Fp32 {
            tract: Classifier::from_proto(bundle, &proto, path)?,
            declined,
        })
    }

    fn load_qdq(bundle: &Bundle) -> Result<Self> {
        let bytes = bundle.read_model(ModelFile::QdqOnnx)?;
        let (path, _) = bundle.model_entry(ModelFile::QdqOnnx)?;
        Ok(Engine::Qdq(Classifier::from_bytes(bundle, &bytes, path)?))
    }

    /// Runs each inference on `threads` threads: the direct engine shares each convolution's
    /// rows among them, tract its matrix products; the int8 core runs on one (its kernels
    /// have no row split yet).
    pub fn with_threads(self, threads: usize) -> Result<Self> {
        Ok(match self {
            Engine::Direct(c) => Engine::Direct(c.with_threads(threads)?),
            Engine::Fp32 { tract, declined } => Engine::Fp32 {
                tract: tract.with_threads(threads),
                declined,
            },
            Engine::Tract(c) => Engine::Tract(c.with_threads(threads)),
            Engine::Qdq(c) => Engine::Qdq(c.with_threads(threads)),
            Engine::Int8(c) => Engine::Int8(c.with_threads(threads)?),
        })
    }

    /// Threads one inference runs on.
    pub fn threads(&self) -> usize {
        match self {
            Engine::Direct(c) => c.threads(),
            Engine::Fp32 { tract: c, .. } | Engine::Tract(c) | Engine::Qdq(c) => c.threads,
            Engine::Int8(c) => c.threads(),
        }
    }

    /// Logits of one preprocessed `C×H×W` input.
    pub fn logits(&self, input: &[f32]) -> Result<Vec<f32>> {
        match self {
            Engine::Direct(c) => c.logits(input),
            Engine::Fp32 { tract: c, .. } | Engine::Tract(c) | Engine::Qdq(c) => c.logits(input),
            Engine::Int8(c) => c.logits(input),
        }
    }

    /// Which kind it is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Direct(_) | Engine::Fp32 { .. } => EngineKind::Fp32,
            Engine::Tract(_) => EngineKind::Tract,
            Engine::Int8(_) => EngineKind::Int8,
            Engine::Qdq(_) => EngineKind::Qdq,
        }
    }

    /// Why `fp32` runs on tract here, when it does: `direct engine declined: …; running on
    /// tract`.
    pub fn note(&self) -> Option<String> {
        match self {
            Engine::Fp32 { declined, .. } => Some(format!(
                "direct engine declined: {declined}; running on tract"
            )),
            _ => None,
        }
    }
}

/// The bundle's model input as `[channels, height, width]`.
fn input_chw(bundle: &Bundle) -> [usize; 3] {
    let p = &bundle.manifest.preprocess;
    [p.channels as usize, p.height as usize, p.width as usize]
}

/// The direct engine for the bundle's fp32 model, or why it declines it.
fn direct_engine(
    bundle: &Bundle,
    proto: &mut pb::ModelProto,
    path: &Path,
) -> std::result::Result<DirectClassifier, DirectDeclined> {
    if !direct::kernels::fast_path_available() {
        return Err(DirectDeclined::NoVectorKernels);
    }
    let classes = bundle.manifest.class_names.len();
    Ok(DirectClassifier::from_proto(
        proto,
        path,
        input_chw(bundle),
        classes,
    )?)
}
