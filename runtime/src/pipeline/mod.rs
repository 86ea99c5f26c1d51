//! The screening pipeline: decode → preprocess → infer → report, for one bundle.
//!
//! [`model_inputs`] turns a file's bytes into the model inputs the bundle's preprocessing asks
//! for (one per frame under the every-frame DICOM policy); every front door — `screen`,
//! `watch`, `receive`, `bench`, `mcu-vectors` — goes through it, so all of them see the same
//! frames and pixels. A [`Screener`] is prepared once per bundle (model loaded and optimised)
//! and screens many files, in parallel with the results kept in input order.
//!
//! It never takes preprocessing from flags (the bundle's settings only) and never writes:
//! results are the caller's to print or store.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bundle::{Bundle, SignatureStatus};
use crate::decode::{self, DicomFrames, SourceInfo};
use crate::infer::{Engine, EngineKind};
use crate::preprocess::{preprocess, PreprocessConfig};
use crate::report::{OutputSpec, ScreeningResult, Timings};
use crate::{Error, Result};

mod ordered;

/// One model input made from a file: the image, or one frame of a multi-frame DICOM file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// The frame (1-based, as in DICOM) when the bundle screens every frame of a DICOM file
    /// ([`DicomFrames::Every`]); `None` when the file is screened as one image.
    pub frame: Option<u32>,
    /// What was decoded.
    pub source: SourceInfo,
    /// The preprocessed `C×H×W` input.
    pub values: Vec<f32>,
    /// Milliseconds reading and decoding it took (the first input counts from when reading
    /// began, each further frame from when the one before was handed on).
    pub decode_ms: f64,
    /// Milliseconds preprocessing it took.
    pub preprocess_ms: f64,
}

/// Turns a file's bytes into the model inputs `config` asks for and hands each to `each` in
/// order as soon as it is ready (one frame in memory at a time): one input for a PNG, a JPEG
/// or a DICOM file under [`DicomFrames::First`], one per frame for a DICOM file under
/// [`DicomFrames::Every`]. `path` names the file in errors; `started` is when reading began.
pub fn model_inputs(
    path: &Path,
    bytes: &[u8],
    config: &PreprocessConfig,
    started: Instant,
    mut each: impl FnMut(ModelInput) -> Result<()>,
) -> Result<()> {
    let prepare = |image: decode::DecodedImage, frame, decoding: Instant| -> Result<ModelInput> {
        let decoded = Instant::now();
        let values = preprocess(&image, config, path)?;
        Ok(ModelInput {
            frame,
            source: image.source,
            values,
            decode_ms: ms(decoding, decoded),
            preprocess_ms: ms(decoded, Instant::now()),
        })
    };
    if config.dicom_frames == DicomFrames::Every
        && decode::sniff(bytes) == Some(decode::FileFormat::Dicom)
    {
        let mut decoding = started;
        return decode::read_dicom_frames(path, bytes, DicomFrames::Every, |values| {
            let frame = values.frame + 1;
            let image = decode::dicom_image(values, config.dicom_window);
            each(prepare(image, Some(frame), decoding)?)?;
            decoding = Instant::now();
            Ok(())
        });
    }
    let image = decode::decode_bytes_with(path, bytes, config.dicom_window)?;
    each(prepare(image, None, started)?)
}

/// [`model_inputs`] of a file read from disk, collected.
pub fn read_model_inputs(path: &Path, config: &PreprocessConfig) -> Result<Vec<ModelInput>> {
    let started = Instant::now();
    let bytes = crate::persist::read(path)?;
    let mut inputs = Vec::new();
    model_inputs(path, &bytes, config, started, |input| {
        inputs.push(input);
        Ok(())
    })?;
    Ok(inputs)
}

fn ms(from: Instant, to: Instant) -> f64 {
    (to - from).as_secs_f64() * 1e3
}

/// Decode → preprocess → infer → report for one bundle; load once, screen many.
#[derive(Debug, Clone)]
pub struct Screener {
    engine: Engine,
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
            engine: Engine::load(bundle, engine)?,
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
        ordered::for_each_in_order(
            files,
            jobs,
            |file| self.screen_file(file),
            |file, outcome| sink(file, outcome),
        );
    }

    /// Screens one image file.
    pub fn screen_file(&self, path: &Path) -> Result<ScreeningResult> {
        let t0 = Instant::now();
        let bytes = crate::persist::read(path)?;
        self.screen_bytes(path, &bytes, t0)
    }

    /// Screens an image already read into memory; `path` names it in the result and errors,
    /// `started` is when reading began (the decode timing counts from there). Under the
    /// every-frame policy a DICOM file's result folds its frames' results
    /// ([`ScreeningResult::from_frames`]).
    pub fn screen_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        started: Instant,
    ) -> Result<ScreeningResult> {
        let mut image = None;
        let mut frames = Vec::new();
        model_inputs(path, bytes, &self.preprocess, started, |input| {
            let framed = input.frame.is_some();
            let result = self.report(path, input)?;
            if framed {
                frames.push(result);
            } else {
                image = Some(result);
            }
            Ok(())
        })?;
        match image {
            Some(result) => Ok(result),
            None => ScreeningResult::from_frames(frames).ok_or_else(|| Error::Decode {
                path: path.to_path_buf(),
                reason: "no frame decoded".into(),
            }),
        }
    }

    /// Infer → report for one model input.
    fn report(&self, path: &Path, input: ModelInput) -> Result<ScreeningResult> {
        let inferring = Instant::now();
        let logits = self.engine.logits(&input.values)?;
        let infer_ms = ms(inferring, Instant::now());
        let mut result = ScreeningResult::new(
            path,
            &self.model_id,
            &self.output,
            &logits,
            input.source,
            Timings {
                decode_ms: input.decode_ms,
                preprocess_ms: input.preprocess_ms,
                infer_ms,
            },
        );
        result.model_verified = self.verified;
        result.engine = self.engine.kind();
        Ok(result)
    }
}
