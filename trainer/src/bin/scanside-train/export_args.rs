//! Arguments of the commands that ship a model — `export`, `keygen` — and how they become the
//! library's export plans; defaults are the library's (`--targets onnx`: no int8 model, as
//! in [`ExportOptions::default`]). `export` takes a scanside run (`--run`) or an ONNX
//! classifier trained elsewhere (`--onnx`, with its classes and preprocessing).

use std::path::PathBuf;

use clap::{ArgGroup, Args};
use scanside_runtime::bundle::OutputActivation;
use scanside_runtime::decode::DicomFrames;
use scanside_trainer::config::{
    parse_bytes, parse_preprocess, parse_targets, read_settings_file, AcceptSetting, ExportOptions,
    ImportSettings, OodOptions, PreprocessSettings, QuantizeConfig, Targets,
};
use scanside_trainer::export::imported::OnnxExport;
use scanside_trainer::int8_calibration::QdqProfile;
use scanside_trainer::metrics::OodMethod;

use crate::usage;

/// Shown after `scanside-train export --help`.
pub const EXPORT_EXAMPLES: &str = "\
Examples:
  # a run scanside fine-tuned: ONNX fp32, int8 blob and QDQ model, signed
  scanside-train export --run runs/ft --out runs/bundle --targets onnx,mcu --sign-key keys/site.key

  # the same, for dermoscopy the site stores as VL photographs or secondary captures, and an
  # out-of-distribution threshold rejecting 2 % of validation images
  scanside-train export --run runs/ft --out runs/bundle --accept Modality=XC,DMS,OT \\
      --ood-false-rejection 0.02 --sign-key keys/site.key

  # a classifier trained elsewhere (torch.onnx.export, timm, MONAI): classes in output order,
  # ImageNet normalisation, size from the model; calibrated on a class folder, compared with
  # fp32 on a labelled split's validation images; TensorRT's symmetric QDQ profile
  scanside-train export --onnx resnet18.onnx --classes akiec,bcc,bkl,df,mel,nv,vasc \\
      --preprocess imagenet --calibration-data ../shared/data/ham10000 \\
      --validation-data runs/split.json --targets onnx,mcu,tensorrt --out runs/rn18 --sign-key keys/site.key

  # the same settings from a file (classes, output, [preprocess] height/width/channels/mean/std)
  scanside-train export --onnx model.onnx --import-config model.toml --calibration-data images/ \\
      --targets onnx,onnx-int8 --qdq-profile onnxruntime --flash 2M --ram 512K --out runs/bundle
";

#[derive(Args)]
#[command(group(ArgGroup::new("model").required(true).args(["run", "onnx"])))]
pub struct ExportArgs {
    /// Fine-tuning run directory (a model scanside trained).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// An ONNX classifier trained elsewhere (N×C×H×W in, N×classes logits out); the bundle
    /// holds it as given.
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Validation images compared between the model and the runtime.
    #[arg(long, default_value_t = ExportOptions::default().check_images)]
    check_images: usize,
    /// Sign the manifest with this secret key (`scanside-train keygen`); the runtime
    /// refuses unsigned bundles unless told --allow-unsigned.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// What to write: `onnx` (fp32, always); `mcu` / `onnx-int8` (one quantisation, both
    /// written: the int8 blob the firmware and `scanside screen --engine int8` run, and its
    /// standard QDQ ONNX twin for onnxruntime); `tensorrt` (the same, with the QDQ model in
    /// TensorRT's profile).
    #[arg(long, default_value = "onnx", value_parser = parse_targets)]
    targets: Targets,
    /// The int8 grid of the blob and the QDQ model: `onnxruntime` (asymmetric activations)
    /// or `tensorrt` (symmetric, every zero point 0, per-channel weights on axis 0) [default:
    /// tensorrt when the tensorrt target is named, else onnxruntime].
    #[arg(long, value_parser = QdqProfile::parse)]
    qdq_profile: Option<QdqProfile>,
    /// Images calibrating the int8 activation ranges.
    #[arg(long, default_value_t = QuantizeConfig::default().calibration_images)]
    calibration_images: usize,
    /// Validation images the calibration methods are compared on (0: all).
    #[arg(long, default_value_t = QuantizeConfig::default().validation_images)]
    int8_val_images: usize,
    /// Refuse an int8 model whose blob does not fit this flash budget (e.g. 1M).
    #[arg(long, value_parser = parse_bytes)]
    flash: Option<usize>,
    /// Refuse an int8 model whose activation arena does not fit this RAM budget (e.g. 256K).
    #[arg(long, value_parser = parse_bytes)]
    ram: Option<usize>,
    /// Multi-frame DICOM files: screen the `first` frame, or `every` frame (the result is
    /// the per-class maximum, each frame's result beside it).
    #[arg(long, value_enum, default_value_t = ExportOptions::default().dicom_frames)]
    dicom_frames: DicomFrames,
    /// Input rules, laid over the ones derived from the training images (channels, smallest
    /// side, DICOM attributes seen or known for the source): `Modality=XC,DMS`,
    /// `BodyPartExamined=CHEST,(missing)`, `SOPClassUID=1.2.840.10008.5.1.4.1.1.1*`,
    /// `PhotometricInterpretation=…`, `ImageType=ORIGINAL*`, `ViewPosition=PA,AP`,
    /// `channels=1,3`, `min-side=128`; `KEY=*` drops a rule, `any` drops them all. Inputs
    /// failing a rule are reported not_applicable and never reach the model. Repeatable.
    #[arg(long, value_parser = AcceptSetting::parse)]
    accept: Vec<AcceptSetting>,
    /// Out-of-distribution score fitted on validation images: `mahalanobis` (of the logits,
    /// to the nearest class mean), `energy`, or `none`.
    #[arg(long, value_parser = OodMethod::parse, default_value = "mahalanobis")]
    ood: OodMethod,
    /// The share of in-distribution validation images the out-of-distribution threshold
    /// rejects.
    #[arg(long, default_value_t = OodOptions::default().false_rejection)]
    ood_false_rejection: f32,
    /// Validation images the guard is fitted on (0: all).
    #[arg(long, default_value_t = OodOptions::default().images)]
    ood_images: usize,
    #[command(flatten)]
    import: ImportArgs,
}

/// What an ONNX file does not say about itself.
#[derive(Args)]
#[command(next_help_heading = "Models trained elsewhere (--onnx)")]
struct ImportArgs {
    /// Class names in the order of the model's outputs (a,b,c).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Preprocessing: `imagenet` (ImageNet mean/std), `none` (mean 0, std 1), or
    /// `size=224` (or HxW), `channels=3`, `mean=a/b/c`, `std=a/b/c`, comma-separated; input
    /// size and channels default to the model's [default: imagenet].
    #[arg(long, value_parser = parse_preprocess)]
    preprocess: Option<PreprocessSettings>,
    /// How logits become probabilities: `softmax` (one class) or `sigmoid` (findings)
    /// [default: softmax].
    #[arg(long, value_parser = parse_output)]
    output: Option<OutputActivation>,
    /// A TOML file with `classes`, `output` and a `[preprocess]` table (height, width,
    /// channels, mean, std, resize, dicom_window); the flags above override it.
    #[arg(long)]
    import_config: Option<PathBuf>,
    /// Calibration images: a dataset (HAM10000 or NIH folder, MedMNIST .npz, class
    /// folders) or a split file (its training partition; CSV manifests through `data split`).
    #[arg(long)]
    calibration_data: Option<PathBuf>,
    /// Labelled images the int8 methods are compared on (a dataset, or a split file's
    /// validation partition) [default: the calibration split's validation partition, or the
    /// calibration data's images not calibrated on].
    #[arg(long)]
    validation_data: Option<PathBuf>,
}

impl ImportArgs {
    fn given(&self) -> bool {
        !self.classes.is_empty()
            || self.preprocess.is_some()
            || self.output.is_some()
            || self.import_config.is_some()
            || self.calibration_data.is_some()
            || self.validation_data.is_some()
    }

    /// The file's settings with the flags laid over them.
    fn settings(&self) -> anyhow::Result<ImportSettings> {
        let file: ImportSettings = match &self.import_config {
            Some(path) => read_settings_file(path)?,
            None => ImportSettings::default(),
        };
        let flags = ImportSettings {
            classes: (!self.classes.is_empty()).then(|| self.classes.clone()),
            output: self.output,
            preprocess: self.preprocess.clone().unwrap_or_default(),
        };
        Ok(file.overridden_by(flags))
    }
}

fn parse_output(text: &str) -> Result<OutputActivation, String> {
    match text {
        "softmax" => Ok(OutputActivation::Softmax),
        "sigmoid" => Ok(OutputActivation::Sigmoid),
        other => Err(format!("--output {other:?}: expected softmax or sigmoid")),
    }
}

/// What `export` will do.
pub enum ExportPlan {
    /// A scanside run.
    Run(PathBuf, ExportOptions),
    /// An ONNX file trained elsewhere.
    Onnx(Box<OnnxExport>),
}

impl ExportArgs {
    /// The export options; settings out of range are a usage error.
    fn options(&self) -> anyhow::Result<ExportOptions> {
        let options = ExportOptions {
            check_images: self.check_images,
            int8: self.targets.mcu,
            quantize: QuantizeConfig {
                calibration_images: self.calibration_images,
                validation_images: self.int8_val_images,
                profile: self.targets.qdq_profile(self.qdq_profile).map_err(usage)?,
                ..QuantizeConfig::default()
            },
            flash_budget: self.flash,
            ram_budget: self.ram,
            dicom_frames: self.dicom_frames,
            accept: self.accept.clone(),
            ood: OodOptions {
                method: self.ood,
                false_rejection: self.ood_false_rejection,
                images: self.ood_images,
            },
        };
        options.validate().map_err(usage)?;
        Ok(options)
    }

    /// The validated plan: a run's export, or an ONNX file's with its settings.
    pub fn plan(&self) -> anyhow::Result<ExportPlan> {
        let options = self.options()?;
        match (&self.run, &self.onnx) {
            (Some(run), None) => {
                if self.import.given() {
                    return Err(usage(
                        "--classes, --preprocess, --output, --import-config, --calibration-data \
                         and --validation-data are for --onnx (a run records its own)",
                    ));
                }
                Ok(ExportPlan::Run(run.clone(), options))
            }
            (None, Some(model)) => Ok(ExportPlan::Onnx(Box::new(OnnxExport {
                model: model.clone(),
                settings: self.import.settings()?,
                calibration_data: self.import.calibration_data.clone(),
                validation_data: self.import.validation_data.clone(),
                options,
            }))),
            _ => Err(usage("give either --run or --onnx")),
        }
    }
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Path stem, e.g. keys/site-a.
    #[arg(long)]
    pub out: PathBuf,
}
