//! Inference with tract: the bundle's ONNX model is parsed from the verified bytes, given its
//! fixed input shape, optimised and made runnable once; then each image runs through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use crate::bundle::{Bundle, SignatureStatus};
use crate::decode::DicomFrames;
use crate::preprocess::{preprocess, PreprocessConfig};
use crate::report::{OutputSpec, ScreeningResult, Timings};
use crate::{decode, Error, Result};

pub mod direct;
pub mod int8;

pub use direct::DirectClassifier;
pub use int8::Int8Classifier;

/// A runnable classifier built from a bundle's model.
#[derive(Debug, Clone)]
pub struct Classifier {
    plan: Arc<TypedRunnableModel>,
    shape: [usize; 4],
    num_classes: usize,
    model_path: PathBuf,
}

impl Classifier {
    /// Parses, shapes, optimises and checks the bundle's model against its manifest.
    pub fn load(bundle: &Bundle) -> Result<Self> {
        Self::from_bytes(bundle, &bundle.model_bytes, bundle.model_path())
    }

    /// Like [`Classifier::load`] for another ONNX model of the bundle (bytes already verified
    /// against the manifest), named `model_path` in errors.
    pub fn from_bytes(bundle: &Bundle, model_bytes: &[u8], model_path: PathBuf) -> Result<Self> {
        let p = &bundle.manifest.preprocess;
        let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
        let model_err = |e: TractError| Error::Model {
            path: model_path.clone(),
            reason: format!("{e:#}"),
        };
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &model_bytes[..])
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
        })
    }

    /// Runs one preprocessed `C×H×W` input and returns the logits.
    pub fn logits(&self, input: &[f32]) -> Result<Vec<f32>> {
        let err = |reason: String| Error::Model {
            path: self.model_path.clone(),
            reason,
        };
        let tensor = Tensor::from_shape(&self.shape, input).map_err(|e| err(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into()))
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

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
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

/// A loaded model of either kind.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The direct fp32 engine.
    Direct(DirectClassifier),
    /// tract fp32, chosen as `fp32` where the direct engine does not run.
    Fp32(Classifier),
    /// tract fp32, asked for by name.
    Tract(Classifier),
    /// The int8 core.
    Int8(Int8Classifier),
    /// tract on the QDQ ONNX model.
    Qdq(Classifier),
}

impl Engine {
    /// Loads the bundle's model of the given kind; `Int8` needs a bundle exported with the
    /// `mcu` target.
    pub fn load(bundle: &Bundle, kind: EngineKind) -> Result<Self> {
        match kind {
            EngineKind::Fp32 => {
                if direct::kernels::fast_path_available() {
                    let p = &bundle.manifest.preprocess;
                    let chw = [p.channels as usize, p.height as usize, p.width as usize];
                    let classes = bundle.manifest.class_names.len();
                    // A graph the direct engine does not know runs on tract, which also names
                    // what is wrong with a model that neither can run.
                    if let Ok(model) = DirectClassifier::from_onnx(
                        &bundle.model_bytes,
                        &bundle.model_path(),
                        chw,
                        classes,
                    ) {
                        return Ok(Engine::Direct(model));
                    }
                }
                Ok(Engine::Fp32(Classifier::load(bundle)?))
            }
            EngineKind::Tract => Ok(Engine::Tract(Classifier::load(bundle)?)),
            EngineKind::Qdq => {
                let (Some(entry), Some(bytes)) = (
                    bundle
                        .manifest
                        .int8
                        .as_ref()
                        .and_then(|e| e.qdq_onnx.as_ref()),
                    &bundle.qdq_bytes,
                ) else {
                    return Err(Error::Bundle {
                        path: bundle.dir.clone(),
                        reason: "the bundle has no QDQ ONNX model (export with --targets onnx,onnx-int8)"
                            .into(),
                    });
                };
                Ok(Engine::Qdq(Classifier::from_bytes(
                    bundle,
                    bytes,
                    bundle.dir.join(&entry.file),
                )?))
            }
            EngineKind::Int8 => {
                let (Some(entry), Some(bytes)) = (&bundle.manifest.int8, &bundle.int8_bytes) else {
                    return Err(Error::Bundle {
                        path: bundle.dir.clone(),
                        reason: "the bundle has no int8 model (export with --targets onnx,mcu)"
                            .into(),
                    });
                };
                let p = &bundle.manifest.preprocess;
                Ok(Engine::Int8(Int8Classifier::from_bytes(
                    bytes,
                    &bundle.dir.join(&entry.file),
                    [p.channels as usize, p.height as usize, p.width as usize],
                    bundle.manifest.class_names.len(),
                )?))
            }
        }
    }

    /// Logits of one preprocessed `C×H×W` input.
    pub fn logits(&self, input: &[f32]) -> Result<Vec<f32>> {
        match self {
            Engine::Direct(c) => c.logits(input),
            Engine::Fp32(c) | Engine::Tract(c) | Engine::Qdq(c) => c.logits(input),
            Engine::Int8(c) => c.logits(input),
        }
    }

    /// Which kind it is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Direct(_) | Engine::Fp32(_) => EngineKind::Fp32,
            Engine::Tract(_) => EngineKind::Tract,
            Engine::Int8(_) => EngineKind::Int8,
            Engine::Qdq(_) => EngineKind::Qdq,
        }
    }
}

/// Decode → preprocess → infer → report for one bundle; load once, screen many.
#[derive(Debug, Clone)]
pub struct Screener {
    classifier: Engine,
    preprocess: PreprocessConfig,
    output: OutputSpec,
    model_id: String,
    verified: bool,
}

impl Screener {
    /// Prepares a screener from a verified bundle.
    pub fn new(bundle: &Bundle) -> Result<Self> {
        Self::with_engine(bundle, EngineKind::Fp32)
    }

    /// Prepares a screener running the bundle's model of the given kind.
    pub fn with_engine(bundle: &Bundle, engine: EngineKind) -> Result<Self> {
        Ok(Self {
            classifier: Engine::load(bundle, engine)?,
            preprocess: bundle.manifest.preprocess.clone(),
            output: OutputSpec::of(&bundle.manifest),
            verified: matches!(bundle.signature, SignatureStatus::Verified(_)),
            model_id: bundle.model_id().to_string(),
        })
    }

    /// Screens `files` on `jobs` threads (each image is independent; the model is shared
    /// read-only) and hands every outcome to `sink` in input order, as soon as it and all
    /// before it are done. `sink` returns `false` to stop early (e.g. stdout closed).
    pub fn screen_files(
        &self,
        files: &[PathBuf],
        jobs: usize,
        mut sink: impl FnMut(&Path, Result<ScreeningResult>) -> bool,
    ) {
        let jobs = jobs.clamp(1, files.len().max(1));
        if jobs == 1 {
            for file in files {
                if !sink(file, self.screen_file(file)) {
                    return;
                }
            }
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (send, receive) = std::sync::mpsc::sync_channel(2 * jobs);
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                let send = send.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= files.len() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if send.send((i, self.screen_file(&files[i]))).is_err() {
                        break;
                    }
                });
            }
            drop(send);
            // Reorder: results wait here until every earlier one has been handed on.
            let mut pending = std::collections::BTreeMap::new();
            let mut emit = 0;
            for (i, result) in receive.iter() {
                pending.insert(i, result);
                while let Some(result) = pending.remove(&emit) {
                    if !sink(&files[emit], result) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    emit += 1;
                }
            }
        });
    }

    /// Screens one image file.
    pub fn screen_file(&self, path: &Path) -> Result<ScreeningResult> {
        let t0 = Instant::now();
        let bytes = crate::persist::read(path)?;
        self.screen_bytes(path, &bytes, t0)
    }

    /// Screens an image already read into memory; `path` names it in the result and errors,
    /// `started` is when reading began (the decode timing counts from there).
    pub fn screen_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        started: Instant,
    ) -> Result<ScreeningResult> {
        if self.preprocess.dicom_frames == DicomFrames::Every
            && decode::sniff(bytes) == Some(decode::FileFormat::Dicom)
        {
            let mut frames = Vec::new();
            let mut t0 = started;
            decode::read_dicom_frames(path, bytes, DicomFrames::Every, |values| {
                let image = decode::dicom_image(values, self.preprocess.dicom_window);
                frames.push(self.screen_image(path, image, t0, Instant::now())?);
                t0 = Instant::now();
                Ok(())
            })?;
            return ScreeningResult::from_frames(frames).ok_or_else(|| Error::Decode {
                path: path.to_path_buf(),
                reason: "no frame decoded".into(),
            });
        }
        let image = decode::decode_bytes_with(path, bytes, self.preprocess.dicom_window)?;
        self.screen_image(path, image, started, Instant::now())
    }

    /// Preprocess → infer → report for one decoded image (or frame); `started` and `decoded`
    /// time its decoding.
    fn screen_image(
        &self,
        path: &Path,
        image: decode::DecodedImage,
        started: Instant,
        decoded: Instant,
    ) -> Result<ScreeningResult> {
        let input = preprocess(&image, &self.preprocess, path)?;
        let t2 = Instant::now();
        let logits = self.classifier.logits(&input)?;
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let mut result = ScreeningResult::new(
            path,
            &self.model_id,
            &self.output,
            &logits,
            image.source,
            Timings {
                decode_ms: ms(started, decoded),
                preprocess_ms: ms(decoded, t2),
                infer_ms: ms(t2, t3),
            },
        );
        result.model_verified = self.verified;
        result.engine = self.classifier.kind();
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::softmax;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }
}
