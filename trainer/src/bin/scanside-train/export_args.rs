//! Arguments of the commands that ship a run — `export`, `keygen` — and how they become the
//! library's export options; defaults are the library's (`--targets onnx`: no int8 model, as
//! in [`ExportOptions::default`]).

use std::path::PathBuf;

use clap::Args;
use scanside_runtime::decode::DicomFrames;
use scanside_trainer::config::{
    parse_bytes, parse_targets, ExportOptions, QuantizeConfig, Targets,
};

use crate::usage;

#[derive(Args)]
pub struct ExportArgs {
    /// Fine-tuning run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Validation images compared between burn and the runtime.
    #[arg(long, default_value_t = ExportOptions::default().check_images)]
    check_images: usize,
    /// Sign the manifest with this secret key (`scanside-train keygen`); the runtime
    /// refuses unsigned bundles unless told --allow-unsigned.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// What to write: `onnx` (fp32, always); `mcu` / `onnx-int8` (one quantisation, both
    /// written: the int8 blob the firmware and `scanside screen --engine int8` run, and its
    /// standard QDQ ONNX twin for onnxruntime / TensorRT).
    #[arg(long, default_value = "onnx", value_parser = parse_targets)]
    targets: Targets,
    /// Training images calibrating the int8 activation ranges.
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
}

impl ExportArgs {
    /// The export options; settings out of range are a usage error.
    pub fn options(&self) -> anyhow::Result<ExportOptions> {
        let options = ExportOptions {
            check_images: self.check_images,
            int8: self.targets.mcu,
            quantize: QuantizeConfig {
                calibration_images: self.calibration_images,
                validation_images: self.int8_val_images,
                ..QuantizeConfig::default()
            },
            flash_budget: self.flash,
            ram_budget: self.ram,
            dicom_frames: self.dicom_frames,
        };
        options.validate().map_err(usage)?;
        Ok(options)
    }
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Path stem, e.g. keys/site-a.
    #[arg(long)]
    pub out: PathBuf,
}
