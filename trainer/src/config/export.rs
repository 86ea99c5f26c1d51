//! Export settings: the targets, the int8 quantisation and the device budgets it must fit,
//! and the DICOM frame policy that travels in the bundle. Nothing here reads a run or writes
//! a bundle.

use scanside_runtime::decode::DicomFrames;
use serde::{Deserialize, Serialize};

use crate::int8_calibration::{CalibrationMethod, QdqProfile};
use crate::metrics::OodMethod;
use scanside_runtime::bundle::guard::DicomAttribute;

/// What to export besides the fp32 ONNX model.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Validation images compared between burn and the runtime (at least one).
    pub check_images: usize,
    /// Also write the int8 blob (the `mcu` target), run on the host by the int8 core.
    pub int8: bool,
    /// Quantisation settings.
    pub quantize: QuantizeConfig,
    /// Refuse an int8 model whose blob exceeds this many bytes.
    pub flash_budget: Option<usize>,
    /// Refuse an int8 model whose arena exceeds this many bytes.
    pub ram_budget: Option<usize>,
    /// Which frames of multi-frame DICOM files the runtime screens (a deployment choice: the
    /// model sees one frame at a time either way).
    pub dicom_frames: DicomFrames,
    /// Input rules laid over the ones derived from the training data (`--accept`).
    pub accept: Vec<AcceptSetting>,
    /// The out-of-distribution guard fitted on validation images.
    pub ood: OodOptions,
}

/// How the out-of-distribution guard is fitted at export.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OodOptions {
    /// The score (`none`: no guard).
    pub method: OodMethod,
    /// The share of in-distribution validation images the threshold rejects.
    pub false_rejection: f32,
    /// Validation images fitted on (spread over the partition; 0: all).
    pub images: usize,
}

impl Default for OodOptions {
    fn default() -> Self {
        Self {
            method: OodMethod::default(),
            false_rejection: 0.01,
            images: 2000,
        }
    }
}

/// One `--accept` setting: replaces the derived rule of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptSetting {
    /// `ATTRIBUTE=V1,V2` (DICOM keyword; `*` and `?` wildcards; the value `(missing)` lets
    /// files without the attribute pass; `ATTRIBUTE=*` drops the rule).
    Attribute {
        /// The attribute.
        attribute: DicomAttribute,
        /// Accepted values (empty: no rule on this attribute).
        values: Vec<String>,
        /// Whether files without the attribute pass.
        allow_missing: bool,
    },
    /// `channels=3`, `channels=1,3` or `channels=*`.
    Channels(Vec<u32>),
    /// `min-side=200` or `min-side=*`.
    MinSide(Option<u32>),
    /// `any`: no input rules at all.
    Any,
}

impl AcceptSetting {
    /// Parses one `--accept` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "any" {
            return Ok(Self::Any);
        }
        let (key, value) = text.split_once('=').ok_or_else(|| {
            format!("--accept {text:?}: expected KEY=VALUE[,VALUE] (e.g. Modality=XC,DMS) or any")
        })?;
        let (key, value) = (key.trim(), value.trim());
        let values: Vec<String> = value
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let any = values.iter().any(|v| v == "*");
        let number = |v: &String| {
            v.parse::<u32>()
                .map_err(|_| format!("--accept {key}={v}: expected a whole number"))
        };
        match key {
            "channels" if any => Ok(Self::Channels(Vec::new())),
            "channels" => {
                let channels = values.iter().map(number).collect::<Result<Vec<_>, _>>()?;
                if channels.is_empty() || channels.iter().any(|c| *c != 1 && *c != 3) {
                    return Err(format!("--accept channels={value}: expected 1, 3 or 1,3"));
                }
                Ok(Self::Channels(channels))
            }
            "min-side" if any => Ok(Self::MinSide(None)),
            "min-side" => match values.as_slice() {
                [v] if number(v)? > 0 => Ok(Self::MinSide(Some(number(v)?))),
                _ => Err(format!(
                    "--accept min-side={value}: expected one positive number"
                )),
            },
            _ => {
                let attribute = DicomAttribute::from_keyword(key).ok_or_else(|| {
                    format!(
                        "--accept {key}: not a rule this runtime knows (channels, min-side, any, \
                         or a DICOM keyword: Modality, BodyPartExamined, SOPClassUID, \
                         PhotometricInterpretation, ImageType, ViewPosition)"
                    )
                })?;
                let allow_missing = values.iter().any(|v| v == "(missing)");
                let values: Vec<String> = values.into_iter().filter(|v| v != "(missing)").collect();
                if values.is_empty() && !allow_missing {
                    return Err(format!("--accept {key}=: give at least one value"));
                }
                Ok(Self::Attribute {
                    attribute,
                    values: if any { Vec::new() } else { values },
                    allow_missing,
                })
            }
        }
    }
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            check_images: 16,
            int8: false,
            quantize: QuantizeConfig::default(),
            flash_budget: None,
            ram_budget: None,
            dicom_frames: DicomFrames::default(),
            accept: Vec::new(),
            ood: OodOptions::default(),
        }
    }
}

impl ExportOptions {
    /// Checks the quantisation settings when the int8 targets are exported.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..0.5).contains(&self.ood.false_rejection) {
            return Err(format!(
                "--ood-false-rejection {}: expected a share in [0, 0.5)",
                self.ood.false_rejection
            ));
        }
        if self.int8 {
            self.quantize.validate()?;
        }
        Ok(())
    }
}

/// Export targets named on the command line (`onnx`, `onnx,onnx-int8,mcu`, `onnx,tensorrt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// The int8 models (`mcu`, `onnx-int8` and/or `tensorrt`: the blob and its QDQ ONNX twin).
    pub mcu: bool,
    /// TensorRT was named: the QDQ model must use its profile (symmetric, zero point 0).
    pub tensorrt: bool,
}

impl Targets {
    /// The QDQ profile: the one asked for, else TensorRT's when TensorRT is a target, else
    /// onnxruntime's. Asking for onnxruntime's with the TensorRT target is a contradiction.
    pub fn qdq_profile(&self, asked: Option<QdqProfile>) -> Result<QdqProfile, String> {
        match (asked, self.tensorrt) {
            (Some(QdqProfile::Onnxruntime), true) => Err(
                "the tensorrt target needs the tensorrt QDQ profile (TensorRT accepts only zero \
                 point 0); drop --qdq-profile onnxruntime"
                    .into(),
            ),
            (Some(profile), _) => Ok(profile),
            (None, true) => Ok(QdqProfile::Tensorrt),
            (None, false) => Ok(QdqProfile::default()),
        }
    }
}

/// Parses `--targets`.
pub fn parse_targets(text: &str) -> Result<Targets, String> {
    let mut int8 = false;
    let mut onnx = false;
    let mut tensorrt = false;
    for t in text.split(',').map(str::trim) {
        match t {
            "onnx" => onnx = true,
            // One quantisation serves both int8 targets, and both are written: the blob
            // (the firmware's, and the runtime's --engine int8) and its QDQ ONNX twin.
            "mcu" | "onnx-int8" => int8 = true,
            // The QDQ model is what TensorRT builds an int8 engine from.
            "tensorrt" => {
                int8 = true;
                tensorrt = true;
            }
            other => {
                return Err(format!(
                    "unknown export target {other:?}: expected onnx, onnx-int8, mcu or tensorrt"
                ))
            }
        }
    }
    if !onnx {
        return Err("the onnx target is required (the bundle's reference model)".into());
    }
    Ok(Targets {
        mcu: int8,
        tensorrt,
    })
}

/// Quantisation settings (saved in the bundle's report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizeConfig {
    /// Training images whose activations set the ranges (0: all).
    pub calibration_images: usize,
    /// Methods tried; the best on validation is kept.
    pub methods: Vec<CalibrationMethod>,
    /// Validation images the methods are compared on (0: all).
    pub validation_images: usize,
    /// Accuracy drop (fp32 − int8, in points) above which the export warns.
    pub warn_drop_points: f64,
    /// The activation grid: asymmetric (onnxruntime) or symmetric with every zero point 0
    /// (TensorRT); the blob and its QDQ twin share it.
    pub profile: QdqProfile,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            calibration_images: 256,
            methods: vec![
                CalibrationMethod::MinMax,
                CalibrationMethod::Percentile(99.99),
                CalibrationMethod::Entropy,
            ],
            validation_images: 0,
            warn_drop_points: 0.5,
            profile: QdqProfile::default(),
        }
    }
}

impl QuantizeConfig {
    /// At least one method, percentiles in (0, 100], a finite warning threshold.
    pub fn validate(&self) -> Result<(), String> {
        if self.methods.is_empty() {
            return Err("quantisation needs at least one calibration method".into());
        }
        for method in &self.methods {
            if let CalibrationMethod::Percentile(p) = method {
                if !(*p > 0.0 && *p <= 100.0) {
                    return Err(format!("calibration percentile {p} must be in (0, 100]"));
                }
            }
        }
        if !self.warn_drop_points.is_finite() {
            return Err(format!(
                "warn_drop_points {} must be a number",
                self.warn_drop_points
            ));
        }
        Ok(())
    }
}

/// A memory budget from `--flash` / `--ram` (`1M`, `256K`, `65536`).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "{text:?}: expected a byte count such as 65536, 256K or 1M"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|d| d.checked_mul(factor))
        .ok_or_else(|| format!("{text:?}: expected a byte count such as 65536, 256K or 1M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_unknown_ones_are_named() {
        let (none, int8, trt) = (
            Targets {
                mcu: false,
                tensorrt: false,
            },
            Targets {
                mcu: true,
                tensorrt: false,
            },
            Targets {
                mcu: true,
                tensorrt: true,
            },
        );
        assert_eq!(parse_targets("onnx"), Ok(none));
        assert_eq!(parse_targets("onnx,onnx-int8,mcu"), Ok(int8));
        assert_eq!(parse_targets("onnx, mcu"), Ok(int8));
        assert_eq!(parse_targets("onnx,tensorrt"), Ok(trt));
        // TensorRT named: its profile is the default, and the other one a contradiction.
        assert_eq!(trt.qdq_profile(None), Ok(QdqProfile::Tensorrt));
        assert_eq!(int8.qdq_profile(None), Ok(QdqProfile::Onnxruntime));
        assert_eq!(
            int8.qdq_profile(Some(QdqProfile::Tensorrt)),
            Ok(QdqProfile::Tensorrt)
        );
        assert!(trt
            .qdq_profile(Some(QdqProfile::Onnxruntime))
            .unwrap_err()
            .contains("zero point 0"));
        assert!(parse_targets("mcu")
            .unwrap_err()
            .contains("onnx target is required"));
        assert!(parse_targets("onnx,tflite")
            .unwrap_err()
            .contains("\"tflite\""));
    }

    #[test]
    fn quantisation_settings_need_a_method_and_sane_percentiles() {
        assert!(QuantizeConfig::default().validate().is_ok());
        let none = QuantizeConfig {
            methods: vec![],
            ..QuantizeConfig::default()
        };
        assert!(none.validate().is_err());
        let options = ExportOptions {
            int8: true,
            quantize: QuantizeConfig {
                methods: vec![CalibrationMethod::Percentile(120.0)],
                ..QuantizeConfig::default()
            },
            ..ExportOptions::default()
        };
        assert!(options.validate().unwrap_err().contains("120"));
    }
}
