//! Export: writes a fine-tuned classifier as an ONNX fp32 model (see [`crate::onnx`]) inside a
//! bundle directory with its manifest — and, for the `mcu` / `onnx-int8` targets, the int8 blob
//! and its QDQ ONNX twin from [`crate::quantize`] — then proves the export: the runtime loads the
//! bundle and reproduces the burn model's logits on real images. [`imported`] does the same for
//! an ONNX classifier trained elsewhere.

pub mod imported;
mod rules;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use scanside_runtime::bundle::signing::{self, key_id};
use scanside_runtime::bundle::{
    write_bundle_with_int8, Bundle, BundleManifest, Calibration, FileEntry, Int8Entry, ModelEntry,
    OutputActivation, Provenance, FORMAT_VERSION,
};
use scanside_runtime::bundle::{SigningKey, Trust};
use scanside_runtime::infer::Classifier as RuntimeClassifier;
use scanside_runtime::preprocess::{normalize_in_place, PreprocessConfig};
use serde::Serialize;

use crate::config::QuantizeConfig;
use crate::config::{ExportOptions, FinetuneConfig, OodOptions};
use crate::data::{load_images_with, open_split, spread, DatasetIndex, Partition, SplitFile, Task};
use crate::metrics::{fit_ood_guard, predict_logits, OodFeatures, OodMethod};
use crate::model::{input_tensor, to_vec, Classifier};
use crate::onnx::{onnx_bytes, INPUT_NAME, OPSET, OUTPUT_NAME};
use crate::quantize::{check_budget, quantize, MethodReport, Quantized};
use crate::run_dir::{evaluation_file, load_finetuned};
use crate::runlog::load_json;
use crate::{Error, Result};
use scanside_runtime::bundle::{InputRules, OodGuard};

/// Largest logit difference accepted between burn and the exported model.
pub const LOGIT_TOLERANCE: f32 = 1e-4;
const ONNX_FILE: &str = "model.onnx";

/// What an export wrote and how closely the runtime reproduced the model.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The model's sha256.
    pub model_sha256: String,
    /// Size of the ONNX file.
    pub model_bytes: usize,
    /// Images compared between burn and the runtime.
    pub checked_images: usize,
    /// Largest absolute logit difference seen.
    pub max_abs_logit_diff: f32,
    /// Id of the key that signed the manifest (`None`: unsigned).
    pub signed_by: Option<String>,
    /// The int8 model, when the `mcu` target was exported.
    pub int8: Option<Int8Report>,
    /// The input rules written into the bundle (none after `--accept any`).
    pub input_rules: Option<InputRules>,
    /// The out-of-distribution guard written into the bundle (none with `--ood none`).
    pub ood: Option<OodReport>,
}

/// The out-of-distribution guard an export fitted.
#[derive(Debug, Clone, Serialize)]
pub struct OodReport {
    /// The score (`mahalanobis`, `energy`).
    pub method: OodMethod,
    /// The threshold.
    pub threshold: f32,
    /// Validation images it was fitted on.
    pub validation_images: usize,
    /// The share of them beyond the threshold (the target is `--ood-false-rejection`).
    pub validation_rejection: f64,
}

/// What the int8 export chose and measured.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Report {
    /// The blob's file in the bundle.
    pub file: String,
    /// The calibration method kept.
    pub method: String,
    /// The activation grid shared by the blob and the QDQ model (`onnxruntime`: asymmetric;
    /// `tensorrt`: symmetric, every zero point 0).
    pub qdq_profile: String,
    /// Blob bytes (flash).
    pub blob_bytes: usize,
    /// Arena bytes (activation RAM, the memory plan's peak).
    pub arena_bytes: usize,
    /// What one buffer per tensor would take (without the memory plan).
    pub unplanned_arena_bytes: usize,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Every method against fp32 on validation, the kept one first.
    pub methods: Vec<MethodReport>,
    /// Set when the int8 model loses more than the configured points against fp32.
    pub warning: Option<String>,
}

const INT8_FILE: &str = "model.i8";
const QDQ_FILE: &str = "model.qdq.onnx";

/// The temperature and thresholds of an evaluation report (fitted on validation), for the
/// bundle; `None` when the report has no operating points.
fn calibration_of(evaluation: &serde_json::Value) -> Option<Calibration> {
    let points = evaluation.get("operating_points")?.as_array()?;
    if points.is_empty() {
        return None;
    }
    Some(Calibration {
        temperature: evaluation
            .pointer("/calibration/temperature")
            .and_then(|t| t.as_f64())
            .unwrap_or(1.0) as f32,
        target_sensitivity: evaluation.get("target_sensitivity")?.as_f64()? as f32,
        thresholds: points
            .iter()
            .map(|p| {
                p.get("threshold")
                    .and_then(|t| t.as_f64())
                    .map(|t| t as f32)
            })
            .collect(),
    })
}

/// [`export_run`] signed with the secret key in `key_file` (`keygen`), or unsigned — with a
/// note on stderr — without one.
pub fn export_run_with_key_file<B: Backend>(
    run: &Path,
    bundle_dir: &Path,
    options: &ExportOptions,
    key_file: Option<&Path>,
    device: &B::Device,
) -> Result<ExportReport> {
    let key = key_file.map(signing::read_signing_key).transpose()?;
    if key.is_none() {
        eprintln!("scanside-train: note: the bundle is unsigned (--sign-key KEY to sign)");
    }
    export_run::<B>(run, bundle_dir, options, key.as_ref(), device)
}

/// A new key pair for signing bundles.
#[derive(Debug, Clone)]
pub struct NewKeyPair {
    /// The public key's id.
    pub id: String,
    /// The secret key's file (owner-only).
    pub secret: PathBuf,
    /// The public key's file, for the runtime's `--public-key`.
    pub public: PathBuf,
}

impl std::fmt::Display for NewKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {}: secret {} (keep private), public {}",
            self.id,
            self.secret.display(),
            self.public.display()
        )
    }
}

/// Makes an ed25519 key pair for signing bundles: `stem.key` (secret) and `stem.pub`; an
/// existing key is never overwritten.
pub fn write_new_key_pair(stem: &Path) -> Result<NewKeyPair> {
    let key = signing::generate_key()?;
    let (secret, public) = signing::write_key_pair(stem, &key)?;
    Ok(NewKeyPair {
        id: key_id(&key.verifying_key()),
        secret,
        public,
    })
}

/// Exports a fine-tuned run to a bundle directory, signed with `sign_key` when given, and
/// checks it (signature included) on `check_images` validation images (at least one).
pub fn export_run<B: Backend>(
    run: &Path,
    bundle_dir: &Path,
    options: &ExportOptions,
    sign_key: Option<&SigningKey>,
    device: &B::Device,
) -> Result<ExportReport> {
    // Loading validation images, fitting the guard, quantising and checking take minutes on
    // large models: one bar over the steps, each named.
    let bar = crate::runlog::progress(5, "export");
    let started = std::time::Instant::now();
    bar.set_message("ONNX");
    let (config, model) = load_finetuned::<B>(run, device)?;
    let preprocess = config
        .preprocess
        .clone()
        .expect("checked by load_finetuned");
    let chw = [
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    ];
    let onnx = onnx_bytes(&model, chw);
    let (index, split) = open_split(&config.split, Some(&config.dataset))?;
    let evaluation: Option<serde_json::Value> =
        evaluation_file(run).map(|p| load_json(&p)).transpose()?;
    let source = ExportSource {
        model: &model,
        config: &config,
        preprocess: &preprocess,
        index: &index,
        split: &split,
        device,
    };
    let mut manifest = source.manifest(options, evaluation);
    let train = split.indices(&index, Partition::Train);
    let side = preprocess.height.min(preprocess.width);
    bar.inc(1);
    log::debug!(
        "export: {} starts at {:.1} s",
        "input rules",
        started.elapsed().as_secs_f64()
    );
    bar.set_message("input rules");
    manifest.input_rules = rules::input_rules(&index, &train, side, &options.accept)?;
    bar.inc(1);
    log::debug!(
        "export: {} starts at {:.1} s",
        "out-of-distribution guard",
        started.elapsed().as_secs_f64()
    );
    bar.set_message("out-of-distribution guard");
    let ood = source.fit_ood(&options.ood)?;
    manifest.ood = ood.as_ref().map(|(guard, _)| guard.clone());
    bar.inc(1);
    log::debug!(
        "export: {} starts at {:.1} s",
        "int8",
        started.elapsed().as_secs_f64()
    );
    bar.set_message("int8");
    let int8 = options.int8.then(|| source.int8(options)).transpose()?;
    bar.inc(1);
    log::debug!(
        "export: {} starts at {:.1} s",
        "write and check",
        started.elapsed().as_secs_f64()
    );
    bar.set_message("write and check");
    manifest.int8 = int8.as_ref().map(|(_, _, report)| int8_entry(report));
    let manifest = write_bundle_with_int8(
        bundle_dir,
        manifest,
        &onnx,
        int8.as_ref().map(|(blob, _, _)| blob.as_slice()),
        int8.as_ref().map(|(_, qdq, _)| qdq.as_slice()),
        sign_key,
    )?;
    let (checked_images, max_abs_logit_diff) =
        source.check_bundle(bundle_dir, sign_key, options.check_images)?;
    bar.finish_and_clear();
    Ok(ExportReport {
        bundle: bundle_dir.to_path_buf(),
        model_sha256: manifest.model.sha256,
        model_bytes: onnx.len(),
        checked_images,
        max_abs_logit_diff,
        signed_by: sign_key.map(|k| key_id(&k.verifying_key())),
        int8: int8.map(|(_, _, report)| report),
        input_rules: manifest.input_rules,
        ood: ood.map(|(_, report)| report),
    })
}

/// What the int8 export kept and measured, with a warning (also on stderr) when int8 loses
/// more than `q.warn_drop_points` against fp32.
fn int8_report(quantized: &Quantized, q: &QuantizeConfig) -> Int8Report {
    let best = &quantized.reports[0];
    let warning = (best.drop_points() > q.warn_drop_points).then(|| {
        format!(
            "int8 ({}) loses {:.2} points against fp32 on validation (more than {}); \
             consider more calibration images, or quantisation-aware training \
             (`scanside-train finetune --qat RUN`) and exporting that run",
            best.method,
            best.drop_points(),
            q.warn_drop_points
        )
    });
    if let Some(w) = &warning {
        eprintln!("scanside-train: WARNING: {w}");
    }
    Int8Report {
        file: INT8_FILE.into(),
        method: quantized.method.clone(),
        qdq_profile: q.profile.name().into(),
        blob_bytes: quantized.blob.len(),
        arena_bytes: quantized.plan.arena_bytes,
        unplanned_arena_bytes: quantized.plan.unplanned_bytes,
        macs: quantized.macs,
        methods: quantized.reports.clone(),
        warning,
    }
}

/// The manifest's entry of the int8 blob and its QDQ ONNX twin.
fn int8_entry(report: &Int8Report) -> Int8Entry {
    Int8Entry {
        file: report.file.clone(),
        sha256: String::new(),
        calibration_method: report.method.clone(),
        arena_bytes: report.arena_bytes,
        blob_bytes: report.blob_bytes,
        report: Some(serde_json::to_value(&report.methods).expect("reports serialise")),
        qdq_onnx: Some(FileEntry {
            file: QDQ_FILE.into(),
            sha256: String::new(),
        }),
    }
}

/// The fine-tuned run being exported: its model, config and data.
struct ExportSource<'a, B: Backend> {
    model: &'a Classifier<B>,
    config: &'a FinetuneConfig,
    preprocess: &'a PreprocessConfig,
    index: &'a DatasetIndex,
    split: &'a SplitFile,
    device: &'a B::Device,
}

impl<B: Backend> ExportSource<'_, B> {
    /// The bundle's manifest for the fp32 model: preprocessing (with the DICOM frame policy),
    /// classes, the evaluation's calibration, the output activation and the provenance.
    fn manifest(
        &self,
        options: &ExportOptions,
        evaluation: Option<serde_json::Value>,
    ) -> BundleManifest {
        BundleManifest {
            format_version: FORMAT_VERSION,
            model: ModelEntry {
                file: ONNX_FILE.into(),
                sha256: String::new(),
                opset: OPSET,
                input_name: INPUT_NAME.into(),
                output_name: OUTPUT_NAME.into(),
            },
            preprocess: PreprocessConfig {
                dicom_frames: options.dicom_frames,
                ..self.preprocess.clone()
            },
            class_names: self.config.class_names.clone(),
            calibration: evaluation.as_ref().and_then(calibration_of),
            output: if self.index.task == Task::MultiLabel {
                OutputActivation::Sigmoid
            } else {
                OutputActivation::Softmax
            },
            provenance: Provenance {
                created_by: format!("scanside-train {}", env!("CARGO_PKG_VERSION")),
                created_unix_s: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                training_config: serde_json::to_value(self.config).expect("config serialises"),
                evaluation,
            },
            int8: None,
            input_rules: None,
            ood: None,
        }
    }

    /// Proves the bundle: the runtime loads it (checking the signature) and reproduces burn's
    /// logits on the first `check_images` validation images (at least one); returns how many
    /// were compared and the largest logit difference.
    fn check_bundle(
        &self,
        bundle_dir: &Path,
        sign_key: Option<&SigningKey>,
        check_images: usize,
    ) -> Result<(usize, f32)> {
        let trust = match sign_key {
            Some(key) => Trust::Keys(vec![key.verifying_key()]),
            None => Trust::AllowUnsigned,
        };
        let bundle = Bundle::load(bundle_dir, &trust)?;
        let runtime = RuntimeClassifier::load(&bundle)?;
        let val = self.split.indices(self.index, Partition::Val);
        let take: Vec<usize> = val.iter().copied().take(check_images.max(1)).collect();
        let images = load_images_with(self.index, &take, self.preprocess, self.config.skip_bad)?;
        let burn_logits = to_vec(self.model.forward(input_tensor::<B>(
            images.pixels.clone(),
            self.preprocess,
            self.device,
        )));
        let classes = self.config.class_names.len();
        let mut max_diff = 0.0_f32;
        for i in 0..images.len() {
            let mut input = images.image(i).to_vec();
            normalize_in_place(&mut input, self.preprocess);
            let logits = runtime.logits(&input)?;
            for (a, b) in logits
                .iter()
                .zip(&burn_logits[i * classes..(i + 1) * classes])
            {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        if max_diff > LOGIT_TOLERANCE {
            return Err(Error::ExportMismatch(format!(
                "{}: tract's logits differ from burn's by {max_diff:e} (> {LOGIT_TOLERANCE:e})",
                bundle_dir.display()
            )));
        }
        Ok((images.len(), max_diff))
    }

    /// Fits the out-of-distribution guard on the model's logits over validation images
    /// (spread over the partition), with its report; `None` with `--ood none`.
    fn fit_ood(&self, options: &OodOptions) -> Result<Option<(OodGuard, OodReport)>> {
        if options.method == OodMethod::None {
            return Ok(None);
        }
        let val = self.split.indices(self.index, Partition::Val);
        let take = if options.images == 0 {
            val.len()
        } else {
            options.images
        };
        let images = load_images_with(
            self.index,
            &spread(&val, take),
            self.preprocess,
            self.config.skip_bad,
        )?;
        let logits = predict_logits(self.model, &images, self.preprocess, self.device);
        let labels: Option<Vec<usize>> = images.targets.iter().map(|t| t.class()).collect();
        // What the runtime computes the score on: the logits and the normalised model input.
        let mut features = OodFeatures::new(
            self.config.class_names.len(),
            self.preprocess.channels as usize,
        );
        for (i, z) in logits.iter().enumerate() {
            let mut input = images.image(i).to_vec();
            normalize_in_place(&mut input, self.preprocess);
            features.push(z, &input);
        }
        let Some(guard) = fit_ood_guard(
            options.method,
            &features,
            labels.as_deref(),
            options.false_rejection,
        ) else {
            return Ok(None);
        };
        let rejected = features.rejected_by(&guard);
        let report = OodReport {
            method: options.method,
            threshold: guard.threshold,
            validation_images: logits.len(),
            validation_rejection: rejected as f64 / logits.len() as f64,
        };
        Ok(Some((guard, report)))
    }

    /// Quantises the model (calibration on training images, methods compared on
    /// validation), checks the device budget and returns the chosen blob, its QDQ ONNX twin and
    /// the report.
    fn int8(&self, options: &ExportOptions) -> Result<(Vec<u8>, Vec<u8>, Int8Report)> {
        let (index, split, preprocess) = (self.index, self.split, self.preprocess);
        let q = &options.quantize;
        let train = spread(
            &split.indices(index, Partition::Train),
            q.calibration_images,
        );
        let val = spread(&split.indices(index, Partition::Val), q.validation_images);
        let calibration = load_images_with(index, &train, preprocess, self.config.skip_bad)?;
        let validation = load_images_with(index, &val, preprocess, self.config.skip_bad)?;
        let quantized = quantize(
            self.model,
            &calibration,
            &validation,
            preprocess,
            q,
            self.device,
        )?;
        check_budget(&quantized, options.flash_budget, options.ram_budget)?;
        let report = int8_report(&quantized, q);
        Ok((quantized.blob, quantized.qdq_onnx, report))
    }
}
