//! The export of a classifier trained elsewhere: an ONNX file (PyTorch, timm, MONAI, the model
//! zoo) with its class names and preprocessing becomes the same signed bundle a scanside run
//! does — the ONNX fp32 model as given (checked by tract; only shape annotations tract cannot
//! reconcile with a batch of one are ever removed, and the report says so), and for the int8
//! targets the blob and its QDQ twin, calibrated on any supported data source with every
//! calibration method and compared with fp32 on labelled validation images when the data has
//! labels.
//!
//! The file is read into the trainer's float graph ([`crate::onnx_import`]); that graph must
//! reproduce tract's logits of the file before anything is written. A graph with operators the
//! int8 core lacks still gets its fp32 bundle and QDQ model; the blob's absence is then the one
//! error returned, naming every such operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use scanside_runtime::bundle::signing::{self, key_id};
use scanside_runtime::bundle::{
    sha256_hex, write_bundle_with_int8, Bundle, BundleManifest, ModelEntry, Provenance, SigningKey,
    Trust, FORMAT_VERSION,
};
use scanside_runtime::infer::{Engine, EngineKind};
use scanside_runtime::persist::write_atomically;
use scanside_runtime::preprocess::{normalize_in_place, PreprocessConfig};
use serde::Serialize;
use tract_onnx::prelude::{
    tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor,
    TypedRunnableModel,
};

use super::{int8_entry, int8_report, Int8Report, LOGIT_TOLERANCE, ONNX_FILE, QDQ_FILE};
use crate::config::{ExportOptions, ImportConfig, ImportSettings};
use crate::data::{
    load_images, open_split, spread, DatasetIndex, ImageSet, Partition, SourceSpec, SplitFile,
    Target,
};
use crate::onnx_import::{decode_model, import_onnx, interface, ImportedModel, OnnxInterface};
use crate::quantize::{check_budget, graph_logits, qdq_only, quantize_graph, unsupported};
use crate::{io_error, Error, Result};

/// What to export from an ONNX file trained elsewhere.
#[derive(Debug, Clone)]
pub struct OnnxExport {
    /// The ONNX classifier (`N×C×H×W` in, `N×classes` logits out).
    pub model: PathBuf,
    /// Its class names, output activation and preprocessing.
    pub settings: ImportSettings,
    /// Images the int8 activation ranges are calibrated on: a data source (`--data` layouts)
    /// or a split file (its training partition). Needed for the int8 targets.
    pub calibration_data: Option<PathBuf>,
    /// Labelled images the methods are compared on (a source, or a split file's validation
    /// partition); default: the calibration split's validation partition, or the calibration
    /// source's images not used for calibration.
    pub validation_data: Option<PathBuf>,
    /// Targets, quantisation, budgets, checks.
    pub options: ExportOptions,
}

/// What an import export wrote and measured.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The ONNX file read.
    pub source: PathBuf,
    /// The bundle's model's sha256 (the file's, unless normalised).
    pub model_sha256: String,
    /// The file's sha256.
    pub source_sha256: String,
    /// What was changed in the file for the runtime to run it (`None`: the file as given).
    pub normalised: Option<String>,
    /// Its size.
    pub model_bytes: usize,
    /// The resolved class names, output activation and preprocessing.
    pub config: ImportConfig,
    /// ONNX nodes read.
    pub onnx_nodes: usize,
    /// Layers of the float graph after folding BatchNorm and fusing activations (0: the
    /// graph was not needed, fp32 only).
    pub graph_layers: usize,
    /// Inputs the checks ran on: validation images, or seeded random inputs without data.
    pub check_inputs: String,
    /// How many.
    pub checked_images: usize,
    /// Largest logit difference between the float graph (burn) and tract on the file.
    pub import_max_abs_logit_diff: Option<f32>,
    /// Largest logit difference between the bundle screened by the runtime and tract.
    pub max_abs_logit_diff: f32,
    /// How the data's labels were used for the accuracy report.
    pub labels: Option<String>,
    /// Id of the key that signed the manifest (`None`: unsigned).
    pub signed_by: Option<String>,
    /// The int8 blob and its QDQ twin.
    pub int8: Option<Int8Report>,
    /// The QDQ model written without a blob (operators the int8 core lacks).
    pub qdq_without_blob: Option<String>,
    /// Operators the int8 core lacks (empty: none, or not imported).
    pub int8_gaps: Vec<String>,
}

/// [`export_onnx`] signed with the secret key in `key_file`, or unsigned with a note.
pub fn export_onnx_with_key_file<B: Backend>(
    export: &OnnxExport,
    bundle_dir: &Path,
    key_file: Option<&Path>,
    device: &B::Device,
) -> Result<ImportReport> {
    let key = key_file.map(signing::read_signing_key).transpose()?;
    if key.is_none() {
        eprintln!("scanside-train: note: the bundle is unsigned (--sign-key KEY to sign)");
    }
    export_onnx::<B>(export, bundle_dir, key.as_ref(), device)
}

/// The images an import export reads, already preprocessed.
struct ImportData {
    calibration: Option<ImageSet>,
    validation: Option<ImageSet>,
    labels: Option<String>,
}

/// The int8 targets' outputs.
#[derive(Default)]
struct Int8Outputs {
    blob: Option<(Vec<u8>, Int8Report)>,
    qdq: Option<Vec<u8>>,
    qdq_method: Option<String>,
    gaps: Vec<String>,
    graph: Option<ImportedModel>,
    import_diff: Option<f32>,
}

/// Exports an ONNX classifier to a bundle directory (signed with `sign_key` when given) and
/// proves it: the runtime loads the bundle and reproduces tract's logits of the file.
pub fn export_onnx<B: Backend>(
    export: &OnnxExport,
    bundle_dir: &Path,
    sign_key: Option<&SigningKey>,
    device: &B::Device,
) -> Result<ImportReport> {
    let path = &export.model;
    let source = std::fs::read(path).map_err(io_error(path))?;
    let interface = interface(&decode_model(&source, path)?, path)?;
    let config = resolve_config(export, &interface)?;
    let (bytes, plan, normalised) = runnable_model(&source, path, &config)?;
    let data = load_data(export, &config)?;
    let (inputs, check_inputs) =
        check_inputs(&data, &config.preprocess, export.options.check_images);
    let tract = tract_logits(&plan, path, &config.preprocess, &inputs)?;
    let outputs = if export.options.int8 {
        int8_targets::<B>(export, &bytes, &config, &data, (&inputs, &tract), device)?
    } else {
        Int8Outputs::default()
    };
    let manifest = manifest(
        export,
        &interface,
        &config,
        (&source, normalised.as_deref()),
        &outputs,
    )?;
    if let (Some(qdq), None) = (&outputs.qdq, &outputs.blob) {
        std::fs::create_dir_all(bundle_dir).map_err(io_error(bundle_dir))?;
        write_atomically(&bundle_dir.join(QDQ_FILE), qdq)?;
    }
    let written = write_bundle_with_int8(
        bundle_dir,
        manifest,
        &bytes,
        outputs.blob.as_ref().map(|(b, _)| b.as_slice()),
        outputs.blob.as_ref().and(outputs.qdq.as_deref()),
        sign_key,
    )?;
    let max_abs_logit_diff = check_bundle(bundle_dir, sign_key, &inputs, &tract)?;
    let report = ImportReport {
        bundle: bundle_dir.to_path_buf(),
        source: path.clone(),
        model_sha256: written.model.sha256,
        model_bytes: bytes.len(),
        source_sha256: sha256_hex(&source),
        normalised,
        config,
        onnx_nodes: outputs.graph.as_ref().map_or(0, |g| g.nodes),
        graph_layers: outputs.graph.as_ref().map_or(0, ImportedModel::layers),
        check_inputs,
        checked_images: inputs.len(),
        import_max_abs_logit_diff: outputs.import_diff,
        max_abs_logit_diff,
        labels: data.labels,
        signed_by: sign_key.map(|k| key_id(&k.verifying_key())),
        int8: outputs.blob.map(|(_, report)| report),
        qdq_without_blob: outputs.qdq_method.map(|_| QDQ_FILE.to_string()),
        int8_gaps: outputs.gaps.clone(),
    };
    if !outputs.gaps.is_empty() {
        eprintln!(
            "scanside-train: the bundle {} holds the fp32 model and the QDQ model ({QDQ_FILE}); \
             no int8 blob",
            bundle_dir.display()
        );
        return Err(unsupported(&outputs.gaps));
    }
    Ok(report)
}

/// Class names, output activation and preprocessing, the model's input filling the gaps.
fn resolve_config(export: &OnnxExport, interface: &OnnxInterface) -> Result<ImportConfig> {
    let dim = |axis: usize| interface.input_dims.get(axis).copied().flatten();
    let mut config = export
        .settings
        .clone()
        .build([dim(1), dim(2), dim(3)])
        .map_err(|reason| Error::Config {
            path: export.model.clone(),
            reason,
        })?;
    config.preprocess.dicom_frames = export.options.dicom_frames;
    Ok(config)
}

/// The model the bundle holds and tract's plan of it: the file as given; or, when tract cannot
/// unify the intermediate shape annotations (`value_info`) with a batch of one — torch's
/// dynamo exporter writes them with a symbolic batch — the file without those annotations,
/// which only describe shapes and change no computation.
fn runnable_model(
    source: &[u8],
    path: &Path,
    config: &ImportConfig,
) -> Result<(Vec<u8>, Arc<TypedRunnableModel>, Option<String>)> {
    let first = match tract_plan(source, path, config) {
        Ok(plan) => return Ok((source.to_vec(), plan, None)),
        Err(e) => e,
    };
    let mut model = decode_model(source, path)?;
    let Some(graph) = model.graph.as_mut().filter(|g| !g.value_info.is_empty()) else {
        return Err(first);
    };
    let dropped = graph.value_info.len();
    graph.value_info.clear();
    let bytes = prost::Message::encode_to_vec(&model);
    let plan = tract_plan(&bytes, path, config).map_err(|_| first)?;
    let note = format!(
        "{dropped} intermediate shape annotations (value_info) removed: tract could not unify \
         their symbolic batch with the runtime's batch of one; the computation is the file's"
    );
    eprintln!("scanside-train: note: {}: {note}", path.display());
    Ok((bytes, plan, Some(note)))
}

/// The file as tract runs it on one `1×C×H×W` image, its output checked against the classes.
fn tract_plan(bytes: &[u8], path: &Path, config: &ImportConfig) -> Result<Arc<TypedRunnableModel>> {
    let p = &config.preprocess;
    let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
    let model_err = |e: tract_onnx::prelude::TractError| Error::Import {
        path: path.to_path_buf(),
        reason: format!("tract cannot run it: {e:#}"),
    };
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(model_err)?;
    let output = plan.model().output_fact(0).map_err(model_err)?;
    let dims: Option<Vec<usize>> = output.shape.as_concrete().map(<[usize]>::to_vec);
    let classes = config.classes.len();
    if dims.as_deref() != Some(&[1, classes][..]) {
        return Err(Error::Import {
            path: path.to_path_buf(),
            reason: format!(
                "the output is {:?} for one image; {classes} class names were given",
                output.shape
            ),
        });
    }
    Ok(plan)
}

/// Logits of normalised `C×H×W` inputs, one row each.
fn tract_logits(
    plan: &Arc<TypedRunnableModel>,
    path: &Path,
    p: &PreprocessConfig,
    inputs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>> {
    let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
    let err = |e: tract_onnx::prelude::TractError| Error::Import {
        path: path.to_path_buf(),
        reason: format!("tract: {e:#}"),
    };
    inputs
        .iter()
        .map(|x| {
            let tensor = Tensor::from_shape(&shape, x).map_err(err)?;
            let out = plan.run(tvec!(tensor.into_tvalue())).map_err(err)?;
            let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
            Ok(view.iter().copied().collect())
        })
        .collect()
}

/// A data source, or a split file (`.json`) with the source it names.
fn open_data(path: &Path) -> Result<(DatasetIndex, Option<SplitFile>)> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        let (index, split) = open_split(path, None)?;
        Ok((index, Some(split)))
    } else {
        Ok((SourceSpec::detect(path)?.open()?, None))
    }
}

/// Calibration images (a split's training partition, or the source spread evenly) and
/// validation images (`--validation-data`, else the split's validation partition, else the
/// calibration source's other images), labels mapped onto the model's classes by name.
fn load_data(export: &OnnxExport, config: &ImportConfig) -> Result<ImportData> {
    let q = &export.options.quantize;
    let Some(cal_path) = &export.calibration_data else {
        if export.options.int8 {
            return Err(Error::Config {
                path: export.model.clone(),
                reason: "the int8 targets need calibration images (--calibration-data DIR, \
                         dataset file or split file)"
                    .into(),
            });
        }
        return Ok(ImportData {
            calibration: None,
            validation: None,
            labels: None,
        });
    };
    let (index, split) = open_data(cal_path)?;
    let pool: Vec<usize> = match &split {
        Some(s) => s.indices(&index, Partition::Train),
        None => (0..index.samples.len()).collect(),
    };
    let cal = spread(&pool, q.calibration_images);
    let calibration = load_images(&index, &cal, &config.preprocess)?;
    let (val_index, val) = match (&export.validation_data, &split) {
        (Some(path), _) => {
            let (vi, vs) = open_data(path)?;
            let pool = match &vs {
                Some(s) => s.indices(&vi, Partition::Val),
                None => (0..vi.samples.len()).collect(),
            };
            (vi, pool)
        }
        (None, Some(s)) => (index.clone(), s.indices(&index, Partition::Val)),
        (None, None) => {
            let rest: Vec<usize> = pool.iter().copied().filter(|i| !cal.contains(i)).collect();
            (index.clone(), rest)
        }
    };
    let val = spread(&val, q.validation_images);
    let mut validation = if val.is_empty() {
        None
    } else {
        Some(load_images(&val_index, &val, &config.preprocess)?)
    };
    let labels = validation
        .as_mut()
        .map(|v| relabel(v, &val_index.class_names, &config.classes));
    Ok(ImportData {
        calibration: Some(calibration),
        validation,
        labels,
    })
}

/// Maps the data's class indices onto the model's class order by name; when some class of
/// the data is not one of the model's (or the data is multi-label), the labels are dropped
/// and the comparison reports agreement and logit differences only.
fn relabel(images: &mut ImageSet, data_classes: &[String], model_classes: &[String]) -> String {
    let map: Vec<Option<usize>> = data_classes
        .iter()
        .map(|c| model_classes.iter().position(|m| m == c))
        .collect();
    let mapped: Option<Vec<Target>> = images
        .targets
        .iter()
        .map(|t| match t {
            Target::Class(c) => map.get(*c).copied().flatten().map(Target::Class),
            Target::Findings(_) => None,
        })
        .collect();
    match mapped {
        Some(targets) => {
            images.targets = targets;
            format!("labelled: the data's classes {data_classes:?} mapped by name onto the model's")
        }
        None => {
            images.targets = vec![Target::Findings(vec![]); images.targets.len()];
            format!(
                "not used: the data's classes {data_classes:?} (or its multi-label targets) do \
                 not map onto the model's {model_classes:?}; int8 is compared with fp32 only"
            )
        }
    }
}

/// Normalised inputs for the equivalence checks: validation (else calibration) images, or —
/// without data — seeded pseudo-random inputs, which check the arithmetic, not accuracy.
fn check_inputs(data: &ImportData, p: &PreprocessConfig, n: usize) -> (Vec<Vec<f32>>, String) {
    let n = n.max(1);
    if let Some(images) = data.validation.as_ref().or(data.calibration.as_ref()) {
        let inputs = (0..images.len().min(n))
            .map(|i| {
                let mut x = images.image(i).to_vec();
                normalize_in_place(&mut x, p);
                x
            })
            .collect();
        return (inputs, "images of the validation data".into());
    }
    let mut state = 0x5eed_u32;
    let inputs = (0..n.min(4))
        .map(|_| {
            let mut x: Vec<f32> = (0..p.input_len())
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1 << 24) as f32
                })
                .collect();
            normalize_in_place(&mut x, p);
            x
        })
        .collect();
    (
        inputs,
        "seeded random inputs (no data given: arithmetic checked, not accuracy)".into(),
    )
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0_f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The largest logit difference allowed against tract: [`LOGIT_TOLERANCE`] relative to the
/// logits' magnitude (imported models with large logits round differently in the last bits).
fn tolerance(reference: &[Vec<f32>]) -> f32 {
    let scale = reference
        .iter()
        .flatten()
        .fold(1.0_f32, |m, v| m.max(v.abs()));
    LOGIT_TOLERANCE * scale
}

/// Imports the graph, proves it reproduces tract, and makes the int8 blob (or, for a graph
/// the core cannot run, the QDQ model alone).
fn int8_targets<B: Backend>(
    export: &OnnxExport,
    bytes: &[u8],
    config: &ImportConfig,
    data: &ImportData,
    (inputs, tract): (&[Vec<f32>], &[Vec<f32>]),
    device: &B::Device,
) -> Result<Int8Outputs> {
    let p = &config.preprocess;
    let chw = [p.channels as usize, p.height as usize, p.width as usize];
    let imported = import_onnx(bytes, &export.model, chw)?;
    let burn = graph_logits::<B>(&imported.graph, &normalised_set(inputs, p), p, device);
    let diff = max_abs_diff(&burn, tract);
    if diff > tolerance(tract) {
        return Err(Error::ExportMismatch(format!(
            "{}: the imported graph's logits differ from tract's by {diff:e} (> {:e}); the \
             importer misread the model",
            export.model.display(),
            tolerance(tract)
        )));
    }
    let calibration = data.calibration.as_ref().expect("checked by load_data");
    let q = &export.options.quantize;
    let mut outputs = Int8Outputs {
        gaps: imported.int8_gaps(),
        import_diff: Some(diff),
        ..Int8Outputs::default()
    };
    if outputs.gaps.is_empty() {
        let validation = data.validation.as_ref().ok_or_else(|| Error::Config {
            path: export.model.clone(),
            reason: "no validation images are left for comparing the int8 methods (give \
                     --validation-data, or more calibration data than --calibration-images)"
                .into(),
        })?;
        let quantized =
            quantize_graph::<B>(&imported.graph, calibration, validation, p, q, device)?;
        check_budget(
            &quantized,
            export.options.flash_budget,
            export.options.ram_budget,
        )?;
        let report = int8_report(&quantized, q);
        outputs.qdq = Some(quantized.qdq_onnx);
        outputs.blob = Some((quantized.blob, report));
    } else {
        let (qdq, method) = qdq_only::<B>(&imported.graph, calibration, p, q, device)?;
        outputs.qdq = Some(qdq);
        outputs.qdq_method = Some(method);
    }
    outputs.graph = Some(imported);
    Ok(outputs)
}

/// Normalised inputs back as an image set whose preprocessing is the identity for
/// [`graph_logits`] (it normalises again): each value `x` stored as `x·σ + μ`.
fn normalised_set(inputs: &[Vec<f32>], p: &PreprocessConfig) -> ImageSet {
    let plane = (p.height * p.width) as usize;
    let pixels = inputs
        .iter()
        .flat_map(|x| {
            x.iter().enumerate().map(move |(i, v)| {
                let c = i / plane;
                v * p.std[c] + p.mean[c]
            })
        })
        .collect();
    ImageSet {
        pixels,
        targets: vec![Target::Findings(vec![]); inputs.len()],
        ids: (0..inputs.len()).map(|i| i.to_string()).collect(),
        groups: (0..inputs.len()).map(|i| i.to_string()).collect(),
        sources: vec![String::new(); inputs.len()],
        sample_len: p.input_len(),
        skipped: vec![],
    }
}

/// What the bundle records of the import: the file, its hash and size, what was normalised,
/// the settings, the graph's int8 gaps and — when there is no blob — the QDQ model's hash (the
/// manifest, and so the signature, pins it).
#[derive(Serialize)]
struct ImportRecord<'a> {
    imported_onnx: &'a Path,
    sha256: String,
    bytes: usize,
    normalised: Option<&'a str>,
    settings: &'a ImportConfig,
    calibration_data: Option<&'a Path>,
    validation_data: Option<&'a Path>,
    qdq_profile: &'static str,
    int8_gaps: &'a [String],
    qdq_without_blob: Option<serde_json::Value>,
}

fn manifest(
    export: &OnnxExport,
    interface: &OnnxInterface,
    config: &ImportConfig,
    (source, normalised): (&[u8], Option<&str>),
    outputs: &Int8Outputs,
) -> Result<BundleManifest> {
    let record = ImportRecord {
        imported_onnx: &export.model,
        sha256: sha256_hex(source),
        bytes: source.len(),
        normalised,
        settings: config,
        calibration_data: export.calibration_data.as_deref(),
        validation_data: export.validation_data.as_deref(),
        qdq_profile: export.options.quantize.profile.name(),
        int8_gaps: &outputs.gaps,
        qdq_without_blob: match (&outputs.qdq, &outputs.blob, &outputs.qdq_method) {
            (Some(qdq), None, Some(method)) => Some(serde_json::json!({
                "file": QDQ_FILE,
                "sha256": sha256_hex(qdq),
                "calibration_method": method,
            })),
            _ => None,
        },
    };
    Ok(BundleManifest {
        format_version: FORMAT_VERSION,
        model: ModelEntry {
            file: ONNX_FILE.into(),
            sha256: String::new(),
            opset: interface.opset,
            input_name: interface.input_name.clone(),
            output_name: interface.output_name.clone(),
        },
        preprocess: config.preprocess.clone(),
        class_names: config.classes.clone(),
        output: config.output,
        calibration: None,
        provenance: Provenance {
            created_by: format!("scanside-train {}", env!("CARGO_PKG_VERSION")),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            training_config: serde_json::to_value(&record).expect("record serialises"),
            evaluation: None,
        },
        int8: outputs.blob.as_ref().map(|(_, report)| int8_entry(report)),
        input_rules: super::rules::accepted_only(&export.options.accept),
        ood: None,
    })
}

/// Loads the bundle as `scanside screen` does (signature checked), screens the check inputs
/// with its fp32 engine and compares with tract's logits of the file; runs the int8 blob when
/// there is one. Returns the largest fp32 difference.
fn check_bundle(
    dir: &Path,
    sign_key: Option<&SigningKey>,
    inputs: &[Vec<f32>],
    tract: &[Vec<f32>],
) -> Result<f32> {
    let trust = match sign_key {
        Some(key) => Trust::Keys(vec![key.verifying_key()]),
        None => Trust::AllowUnsigned,
    };
    let bundle = Bundle::load(dir, &trust)?;
    let fp32 = Engine::load(&bundle, EngineKind::Fp32)?;
    let got = inputs
        .iter()
        .map(|x| fp32.logits(x))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let diff = max_abs_diff(&got, tract);
    if diff > tolerance(tract) {
        return Err(Error::ExportMismatch(format!(
            "{}: the runtime's logits differ from tract's by {diff:e} (> {:e})",
            dir.display(),
            tolerance(tract)
        )));
    }
    if bundle.manifest.int8.is_some() {
        let int8 = Engine::load(&bundle, EngineKind::Int8)?;
        for x in inputs {
            int8.logits(x)?;
        }
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use scanside_runtime::preprocess::PreprocessConfig;
    use tract_onnx::pb;

    fn info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Some(v) => Value::DimValue(*v),
                    None => Value::DimParam("batch".into()),
                }),
                ..Default::default()
            })
            .collect();
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Regression: torch's dynamo exporter annotates intermediate tensors with a symbolic
    /// batch, which tract could not unify with the runtime's batch of one; the bundle gets
    /// the model without those annotations, and says so.
    #[test]
    fn dynamo_exports_value_info_with_a_symbolic_batch_is_dropped_and_reported() {
        let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        };
        let weight = pb::TensorProto {
            name: "w".into(),
            dims: vec![2, 3, 1, 1],
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: vec![0.5, -0.25, 1.0, 0.1, 0.2, 0.3],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 18,
            }],
            graph: Some(pb::GraphProto {
                node: vec![
                    node("Conv", &["input", "w"], "conv"),
                    node("GlobalAveragePool", &["conv"], "pooled"),
                    node("Flatten", &["pooled"], "logits"),
                ],
                initializer: vec![weight],
                input: vec![info("input", &[None, Some(3), Some(4), Some(4)])],
                output: vec![info("logits", &[None, Some(2)])],
                value_info: vec![info("conv", &[None, Some(2), Some(4), Some(4)])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let source = model.encode_to_vec();
        let config = ImportConfig {
            classes: vec!["a".into(), "b".into()],
            output: Default::default(),
            preprocess: PreprocessConfig::new(4, 3, vec![0.5; 3], vec![0.25; 3]),
        };
        let path = Path::new("dynamo.onnx");
        let (bytes, _plan, note) = runnable_model(&source, path, &config).unwrap();
        let note = note.expect("tract refuses the annotated file, so it is normalised");
        assert!(
            note.contains("1 intermediate shape annotations (value_info)"),
            "{note}"
        );
        assert!(decode_model(&bytes, path)
            .unwrap()
            .graph
            .unwrap()
            .value_info
            .is_empty());
        assert!(tract_plan(&source, path, &config).is_err());
    }
}
