//! Export: writes a fine-tuned classifier as an ONNX fp32 model (see [`crate::onnx`]) inside a
//! bundle directory with its manifest — and, for the `mcu` / `onnx-int8` targets, the int8 blob
//! and its QDQ ONNX twin from [`crate::quantize`] — then proves the export: the runtime loads the
//! bundle and reproduces the burn model's logits on real images.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use scanside_runtime::bundle::signing::{self, key_id};
use scanside_runtime::bundle::{
    write_bundle_with_int8, Bundle, BundleManifest, Calibration, FileEntry, Int8Entry, ModelEntry,
    OutputActivation, Provenance, FORMAT_VERSION,
};
use scanside_runtime::bundle::{SigningKey, Trust};
use scanside_runtime::infer::Classifier as RuntimeClassifier;
use scanside_runtime::preprocess::normalize_in_place;
use serde::Serialize;

use crate::config::{ExportOptions, FinetuneConfig};
use crate::data::{load_images_with, open_split, spread, Partition, Task};
use crate::model::{input_tensor, to_vec, Classifier};
use crate::onnx::{onnx_bytes, INPUT_NAME, OPSET, OUTPUT_NAME};
use crate::quantize::{check_budget, quantize, MethodReport};
use crate::run_dir::{evaluation_file, load_finetuned};
use crate::runlog::load_json;
use crate::{Error, Result};

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
}

/// What the int8 export chose and measured.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Report {
    /// The blob's file in the bundle.
    pub file: String,
    /// The calibration method kept.
    pub method: String,
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
    let manifest = BundleManifest {
        format_version: FORMAT_VERSION,
        model: ModelEntry {
            file: ONNX_FILE.into(),
            sha256: String::new(),
            opset: OPSET,
            input_name: INPUT_NAME.into(),
            output_name: OUTPUT_NAME.into(),
        },
        preprocess: scanside_runtime::preprocess::PreprocessConfig {
            dicom_frames: options.dicom_frames,
            ..preprocess.clone()
        },
        class_names: config.class_names.clone(),
        calibration: evaluation.as_ref().and_then(calibration_of),
        output: if index.task == Task::MultiLabel {
            OutputActivation::Sigmoid
        } else {
            OutputActivation::Softmax
        },
        provenance: Provenance {
            created_by: format!("scanside-train {}", env!("CARGO_PKG_VERSION")),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            training_config: serde_json::to_value(&config).expect("config serialises"),
            evaluation,
        },
        int8: None,
    };
    let (int8, int8_report) = if options.int8 {
        let (blob, qdq, report) = export_int8(
            &model,
            &index,
            &split,
            &config,
            &preprocess,
            options,
            device,
        )?;
        (Some((blob, qdq)), Some(report))
    } else {
        (None, None)
    };
    let mut manifest = manifest;
    manifest.int8 = int8_report.as_ref().map(|r| Int8Entry {
        file: r.file.clone(),
        sha256: String::new(),
        calibration_method: r.method.clone(),
        arena_bytes: r.arena_bytes,
        blob_bytes: r.blob_bytes,
        report: Some(serde_json::to_value(&r.methods).expect("reports serialise")),
        qdq_onnx: Some(FileEntry {
            file: QDQ_FILE.into(),
            sha256: String::new(),
        }),
    });
    let manifest = write_bundle_with_int8(
        bundle_dir,
        manifest,
        &onnx,
        int8.as_ref().map(|(blob, _)| blob.as_slice()),
        int8.as_ref().map(|(_, qdq)| qdq.as_slice()),
        sign_key,
    )?;

    // Prove it: the runtime loads the bundle and matches burn on real validation images.
    let trust = match sign_key {
        Some(key) => Trust::Keys(vec![key.verifying_key()]),
        None => Trust::AllowUnsigned,
    };
    let bundle = Bundle::load(bundle_dir, &trust)?;
    let runtime = RuntimeClassifier::load(&bundle)?;
    let val = split.indices(&index, Partition::Val);
    let take: Vec<usize> = val
        .iter()
        .copied()
        .take(options.check_images.max(1))
        .collect();
    let images = load_images_with(&index, &take, &preprocess, config.skip_bad)?;
    let burn_logits = to_vec(model.forward(input_tensor::<B>(
        images.pixels.clone(),
        &preprocess,
        device,
    )));
    let classes = config.class_names.len();
    let mut max_diff = 0.0_f32;
    for i in 0..images.len() {
        let mut input = images.image(i).to_vec();
        normalize_in_place(&mut input, &preprocess);
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
    Ok(ExportReport {
        bundle: bundle_dir.to_path_buf(),
        model_sha256: manifest.model.sha256,
        model_bytes: onnx.len(),
        checked_images: images.len(),
        max_abs_logit_diff: max_diff,
        signed_by: sign_key.map(|k| key_id(&k.verifying_key())),
        int8: int8_report,
    })
}

/// Quantises the model (calibration on training images, methods compared on validation),
/// checks the device budget and returns the chosen blob with its report.
#[allow(clippy::too_many_arguments)]
fn export_int8<B: Backend>(
    model: &Classifier<B>,
    index: &crate::data::DatasetIndex,
    split: &crate::data::SplitFile,
    config: &FinetuneConfig,
    preprocess: &scanside_runtime::preprocess::PreprocessConfig,
    options: &ExportOptions,
    device: &B::Device,
) -> Result<(Vec<u8>, Vec<u8>, Int8Report)> {
    let q = &options.quantize;
    let train = spread(
        &split.indices(index, Partition::Train),
        q.calibration_images,
    );
    let val = spread(&split.indices(index, Partition::Val), q.validation_images);
    let calibration = load_images_with(index, &train, preprocess, config.skip_bad)?;
    let validation = load_images_with(index, &val, preprocess, config.skip_bad)?;
    let quantized = quantize(model, &calibration, &validation, preprocess, q, device)?;
    check_budget(&quantized, options.flash_budget, options.ram_budget)?;
    let best = &quantized.reports[0];
    let warning = (best.drop_points() > q.warn_drop_points).then(|| {
        format!(
            "int8 ({}) loses {:.2} points against fp32 on validation (more than {}); consider \
             more calibration images, or quantisation-aware training (`scanside-train finetune \
             --qat RUN`) and exporting that run",
            best.method,
            best.drop_points(),
            q.warn_drop_points
        )
    });
    if let Some(w) = &warning {
        eprintln!("scanside-train: WARNING: {w}");
    }
    let report = Int8Report {
        file: INT8_FILE.into(),
        method: quantized.method.clone(),
        blob_bytes: quantized.blob.len(),
        arena_bytes: quantized.plan.arena_bytes,
        unplanned_arena_bytes: quantized.plan.unplanned_bytes,
        macs: quantized.macs,
        methods: quantized.reports.clone(),
        warning,
    };
    Ok((quantized.blob, quantized.qdq_onnx, report))
}
