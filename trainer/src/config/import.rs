//! Settings of a model trained elsewhere: its class names, output activation and
//! preprocessing, which a scanside run would have recorded but an ONNX file does not carry.
//! Given as a TOML file (`--import-config`), flags (`--classes`, `--preprocess`, `--output`)
//! or both, flags overriding the file; what neither gives comes from the model (input size and
//! channels) or the defaults here (ImageNet normalisation, stretch-bilinear resizing).

use serde::{Deserialize, Serialize};

use scanside_runtime::bundle::OutputActivation;
use scanside_runtime::decode::{DicomFrames, DicomWindow};
use scanside_runtime::preprocess::{PreprocessConfig, ResizeMethod};

/// ImageNet's per-channel mean, what torchvision and timm models are trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What a person writes about an imported model; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSettings {
    /// Class names in the order of the model's outputs.
    pub classes: Option<Vec<String>>,
    /// How logits become probabilities (`softmax` or `sigmoid`).
    pub output: Option<OutputActivation>,
    /// How images become the model's input.
    pub preprocess: PreprocessSettings,
}

/// The preprocessing of an imported model; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessSettings {
    /// Input height (default: the model's fixed input height).
    pub height: Option<u32>,
    /// Input width (default: the model's).
    pub width: Option<u32>,
    /// 1 or 3 (default: the model's).
    pub channels: Option<u32>,
    /// Per-channel mean in `[0, 1]` units (default: ImageNet's; one value is repeated).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation (default: ImageNet's; one value is repeated).
    pub std: Option<Vec<f32>>,
    /// Resizing (default: stretch-bilinear, the only one the runtime has).
    pub resize: Option<ResizeMethod>,
    /// DICOM windowing (default: the file's).
    pub dicom_window: Option<DicomWindow>,
}

/// The resolved settings of an imported model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportConfig {
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Output activation.
    pub output: OutputActivation,
    /// Preprocessing.
    pub preprocess: PreprocessConfig,
}

impl ImportSettings {
    /// `self` with every field `flags` sets replaced by the flag's value.
    pub fn overridden_by(self, flags: ImportSettings) -> ImportSettings {
        let p = flags.preprocess;
        let q = self.preprocess;
        ImportSettings {
            classes: flags.classes.or(self.classes),
            output: flags.output.or(self.output),
            preprocess: PreprocessSettings {
                height: p.height.or(q.height),
                width: p.width.or(q.width),
                channels: p.channels.or(q.channels),
                mean: p.mean.or(q.mean),
                std: p.std.or(q.std),
                resize: p.resize.or(q.resize),
                dicom_window: p.dicom_window.or(q.dicom_window),
            },
        }
    }

    /// The complete settings, with the model's input `[C, H, W]` (`None` where symbolic)
    /// filling what the settings leave open; a contradiction or a missing value is an error
    /// naming the setting.
    pub fn build(self, model_chw: [Option<usize>; 3]) -> Result<ImportConfig, String> {
        let classes = self
            .classes
            .filter(|c| !c.is_empty())
            .ok_or("the class names are needed (--classes a,b,c or classes = [...] in the file)")?;
        let p = self.preprocess;
        let pick = |given: Option<u32>, model: Option<usize>, what: &str| match (given, model) {
            (Some(g), Some(m)) if g as usize != m => Err(format!(
                "the preprocessing's {what} {g} is not the model's fixed {what} {m}"
            )),
            (Some(g), _) => Ok(g),
            (None, Some(m)) => Ok(m as u32),
            (None, None) => Err(format!(
                "the model's input {what} is not fixed; give it (--preprocess size=HxW, \
                 channels=C, or [preprocess] {what} = … in the file)"
            )),
        };
        let channels = pick(p.channels, model_chw[0], "channels")?;
        let height = pick(p.height, model_chw[1], "height")?;
        let width = pick(p.width, model_chw[2], "width")?;
        let per_channel = |given: Option<Vec<f32>>, imagenet: [f32; 3], what: &str| {
            let values = given.unwrap_or_else(|| match channels {
                3 => imagenet.to_vec(),
                _ => vec![imagenet.iter().sum::<f32>() / 3.0],
            });
            match values.len() {
                1 => Ok(vec![values[0]; channels as usize]),
                n if n == channels as usize => Ok(values),
                n => Err(format!("{what} has {n} values for {channels} channels")),
            }
        };
        let preprocess = PreprocessConfig {
            height,
            width,
            channels,
            mean: per_channel(p.mean, IMAGENET_MEAN, "mean")?,
            std: per_channel(p.std, IMAGENET_STD, "std")?,
            resize: p.resize.unwrap_or_default(),
            dicom_window: p.dicom_window.unwrap_or_default(),
            dicom_frames: DicomFrames::default(),
        };
        preprocess
            .validate(std::path::Path::new("preprocess"))
            .map_err(|e| e.to_string())?;
        Ok(ImportConfig {
            classes,
            output: self.output.unwrap_or_default(),
            preprocess,
        })
    }
}

/// Parses `--preprocess`: `imagenet` (the defaults), `none` (mean 0, std 1: the model
/// normalises itself), or comma-separated `size=224` / `size=HxW`, `channels=3`,
/// `mean=0.5/0.5/0.5` (or one value), `std=…`.
pub fn parse_preprocess(text: &str) -> Result<PreprocessSettings, String> {
    let mut s = PreprocessSettings::default();
    let floats = |v: &str| -> Result<Vec<f32>, String> {
        v.split('/')
            .map(|x| {
                x.trim()
                    .parse::<f32>()
                    .map_err(|_| format!("{x:?} is not a number"))
            })
            .collect()
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None if part == "imagenet" => {}
            None if part == "none" => {
                s.mean = Some(vec![0.0]);
                s.std = Some(vec![1.0]);
            }
            Some(("size", v)) => {
                let (h, w) = v.split_once('x').unwrap_or((v, v));
                let n = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("size {v:?}"));
                s.height = Some(n(h)?);
                s.width = Some(n(w)?);
            }
            Some(("channels", v)) => {
                s.channels = Some(v.trim().parse().map_err(|_| format!("channels {v:?}"))?)
            }
            Some(("mean", v)) => s.mean = Some(floats(v)?),
            Some(("std", v)) => s.std = Some(floats(v)?),
            _ => {
                return Err(format!(
                    "--preprocess {part:?}: expected imagenet, none, size=224 (or HxW), \
                     channels=C, mean=a/b/c, std=a/b/c"
                ))
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_fills_the_size_and_imagenet_the_normalisation() {
        let settings = ImportSettings {
            classes: Some(vec!["a".into(), "b".into()]),
            ..ImportSettings::default()
        };
        let config = settings.build([Some(3), Some(224), Some(224)]).unwrap();
        assert_eq!(
            (config.preprocess.height, config.preprocess.channels),
            (224, 3)
        );
        assert_eq!(config.preprocess.mean, IMAGENET_MEAN.to_vec());
        assert_eq!(config.output, OutputActivation::Softmax);
    }

    #[test]
    fn flags_override_the_file_and_contradictions_are_named() {
        let file: ImportSettings = toml::from_str(
            "classes = [\"nv\", \"mel\"]\noutput = \"sigmoid\"\n[preprocess]\nheight = 32\nwidth = 32\nmean = [0.5]\nstd = [0.25]\n",
        )
        .unwrap();
        let flags = ImportSettings {
            preprocess: parse_preprocess("size=64, std=0.5/0.5/0.5").unwrap(),
            ..ImportSettings::default()
        };
        let config = file
            .clone()
            .overridden_by(flags)
            .build([Some(3), None, None])
            .unwrap();
        assert_eq!(
            (config.preprocess.height, config.preprocess.width),
            (64, 64)
        );
        assert_eq!(config.preprocess.mean, vec![0.5; 3]);
        assert_eq!(config.preprocess.std, vec![0.5; 3]);
        assert_eq!(config.output, OutputActivation::Sigmoid);
        let e = file
            .clone()
            .build([Some(3), Some(224), Some(224)])
            .unwrap_err();
        assert!(e.contains("height 32") && e.contains("224"), "{e}");
        let e = ImportSettings::default()
            .build([Some(3), Some(8), Some(8)])
            .unwrap_err();
        assert!(e.contains("class names"), "{e}");
        let e = ImportSettings {
            classes: Some(vec!["a".into()]),
            ..ImportSettings::default()
        }
        .build([Some(3), None, None])
        .unwrap_err();
        assert!(e.contains("height is not fixed"), "{e}");
        assert!(parse_preprocess("scale=2").unwrap_err().contains("scale=2"));
        assert!(toml::from_str::<ImportSettings>("colour = 1").is_err());
    }
}
