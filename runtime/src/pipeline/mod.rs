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

use crate::bundle::guard::Refusal;
use crate::bundle::{Bundle, InputRules, SignatureStatus};
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
    /// The decoded image's content channels ([`decode::DecodedImage::content_channels`]),
    /// width and height (before resizing), for the bundle's input rules.
    pub decoded: (u32, u32, u32),
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
            decoded: (image.content_channels(), image.width, image.height),
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
    rules: Option<InputRules>,
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
            rules: bundle.manifest.input_rules.clone(),
            output: OutputSpec::of(&bundle.manifest),
            verified: matches!(bundle.signature, SignatureStatus::Verified(_)),
            model_id: bundle.model_id().to_string(),
        })
    }

    /// Runs each inference on `threads` threads ([`Engine::with_threads`]).
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.engine = self.engine.with_threads(threads)?;
        Ok(self)
    }

    /// The model's class names, in output order.
    pub fn class_names(&self) -> &[String] {
        &self.output.class_names
    }

    /// Per class, the screening threshold (`None`: never flagged); empty without calibration.
    pub fn thresholds(&self) -> &[Option<f32>] {
        self.output
            .calibration
            .as_ref()
            .map_or(&[], |c| c.thresholds.as_slice())
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
    /// `started` is when reading began (the decode timing counts from there). The bundle's
    /// input rules come first: a DICOM file whose attributes fail them is not decoded, an
    /// image whose channels or size fail them is not inferred — either is `not_applicable`.
    /// Under the every-frame policy a DICOM file's result folds its frames' results
    /// ([`ScreeningResult::from_frames`]).
    pub fn screen_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        started: Instant,
    ) -> Result<ScreeningResult> {
        if let Some(refused) = self.check_dicom_rules(path, bytes, started)? {
            return Ok(refused);
        }
        let mut image = None;
        let mut frames = Vec::new();
        model_inputs(path, bytes, &self.preprocess, started, |input| {
            if image.is_some() {
                return Ok(()); // refused on an earlier frame: every frame has its size
            }
            if let Some(refused) = self.check_image_rules(path, &input) {
                image = Some(refused);
                return Ok(());
            }
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

    /// A DICOM file's attributes against the bundle's attribute rules: the `not_applicable`
    /// result when they fail, `None` when they pass (or there are none, or it is no DICOM).
    fn check_dicom_rules(
        &self,
        path: &Path,
        bytes: &[u8],
        started: Instant,
    ) -> Result<Option<ScreeningResult>> {
        let Some(rules) = self.rules.as_ref().filter(|r| !r.dicom.is_empty()) else {
            return Ok(None);
        };
        if decode::sniff(bytes) != Some(decode::FileFormat::Dicom) {
            return Ok(None);
        }
        let attributes = decode::dicom_attributes_from_bytes(path, bytes)?;
        let Err(refusal) = rules.check_dicom(&attributes) else {
            return Ok(None);
        };
        let source = SourceInfo::Dicom {
            modality: attributes.modality.clone(),
            photometric: attributes
                .photometric_interpretation
                .clone()
                .unwrap_or_default(),
            bits_stored: attributes.bits_stored.unwrap_or(0) as u16,
            windowing: "not decoded (input rule)".into(),
        };
        let timings = Timings {
            decode_ms: ms(started, Instant::now()),
            preprocess_ms: 0.0,
            infer_ms: 0.0,
        };
        Ok(Some(self.refused(path, refusal, source, timings)))
    }

    /// A decoded input's channels and size against the bundle's image rules.
    fn check_image_rules(&self, path: &Path, input: &ModelInput) -> Option<ScreeningResult> {
        let (channels, width, height) = input.decoded;
        let refusal = self
            .rules
            .as_ref()?
            .check_image(channels, width, height)
            .err()?;
        let timings = Timings {
            decode_ms: input.decode_ms,
            preprocess_ms: input.preprocess_ms,
            infer_ms: 0.0,
        };
        Some(self.refused(path, refusal, input.source.clone(), timings))
    }

    fn refused(
        &self,
        path: &Path,
        refusal: Refusal,
        source: SourceInfo,
        timings: Timings,
    ) -> ScreeningResult {
        let mut result =
            ScreeningResult::not_applicable(path, &self.model_id, refusal, source, timings);
        result.model_verified = self.verified;
        result.engine = self.engine.kind();
        result
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
            (&input.values, &logits),
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
