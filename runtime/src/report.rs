//! Screening results: one JSON object per image, with per-class probabilities in the model's
//! class order, the top class, the model's id and where the time went.

use std::path::Path;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::bundle::{BundleManifest, Calibration, OutputActivation};
use crate::decode::SourceInfo;

/// Milliseconds spent in each stage for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Timings {
    /// Reading and decoding the file.
    pub decode_ms: f64,
    /// Resizing and normalising.
    pub preprocess_ms: f64,
    /// Running the model.
    pub infer_ms: f64,
}

/// The result of screening one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScreeningResult {
    /// The input file as given.
    pub file: String,
    /// [`crate::bundle::Bundle::model_id`] of the model used.
    pub model_id: String,
    /// The most probable class.
    pub top_class: String,
    /// Its probability.
    pub top_probability: f32,
    /// Every class's probability, in the model's class order.
    #[serde(serialize_with = "ordered_map")]
    pub probabilities: Vec<(String, f32)>,
    /// Classes whose calibrated probability reached the bundle's screening threshold.
    pub flags: Vec<String>,
    /// Whether the probabilities are temperature-scaled (the bundle carries a calibration).
    pub calibrated: bool,
    /// Whether the bundle's signature was verified with a trusted key.
    pub model_verified: bool,
    /// Which of the bundle's models produced the result.
    pub engine: crate::infer::EngineKind,
    /// The raw model outputs.
    pub logits: Vec<f32>,
    /// What was decoded.
    pub source: SourceInfo,
    /// Per-stage timings (summed over frames).
    pub timings: Timings,
    /// Each frame's result, when the bundle screens every frame of a multi-frame DICOM file
    /// (`preprocess.dicom_frames = "every"`); the fields above are then the per-class maximum
    /// over frames (probabilities and logits), the union of their flags and its top class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FrameResult>,
}

/// One frame of a multi-frame result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameResult {
    /// Frame number, 1-based as in DICOM.
    pub frame: u32,
    /// The frame's most probable class.
    pub top_class: String,
    /// Its probability.
    pub top_probability: f32,
    /// Every class's probability for this frame.
    #[serde(serialize_with = "ordered_map")]
    pub probabilities: Vec<(String, f32)>,
    /// Classes flagged on this frame.
    pub flags: Vec<String>,
    /// The frame's raw model outputs.
    pub logits: Vec<f32>,
}

/// How a bundle's logits are reported: class names, activation, calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// Class names in output order.
    pub class_names: Vec<String>,
    /// Softmax or sigmoid.
    pub activation: OutputActivation,
    /// Temperature and thresholds, when the bundle has them.
    pub calibration: Option<Calibration>,
}

impl OutputSpec {
    /// The output description of a bundle's manifest.
    pub fn of(manifest: &BundleManifest) -> Self {
        Self {
            class_names: manifest.class_names.clone(),
            activation: manifest.output,
            calibration: manifest.calibration.clone(),
        }
    }
}

impl ScreeningResult {
    /// Builds a result from the model's logits.
    pub fn new(
        path: &Path,
        model_id: &str,
        spec: &OutputSpec,
        logits: &[f32],
        source: SourceInfo,
        timings: Timings,
    ) -> Self {
        let (class_names, calibration) = (&spec.class_names, spec.calibration.as_ref());
        let temperature = calibration.map_or(1.0, |c| c.temperature);
        let scaled: Vec<f32> = logits.iter().map(|z| z / temperature).collect();
        let probs = spec.activation.probabilities(&scaled);
        let flags = calibration
            .map(|c| {
                c.flags(class_names, &probs)
                    .into_iter()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let top = argmax(&probs);
        Self {
            file: path.display().to_string(),
            model_id: model_id.to_string(),
            top_class: class_names[top].clone(),
            top_probability: probs[top],
            probabilities: class_names.iter().cloned().zip(probs).collect(),
            flags,
            calibrated: calibration.is_some(),
            model_verified: false,
            engine: crate::infer::EngineKind::Fp32,
            logits: logits.to_vec(),
            source,
            timings,
            frames: Vec::new(),
        }
    }

    /// Folds per-frame results (each from [`ScreeningResult::new`], in frame order, at least
    /// one) into the file's result with [`fold_max`], the logits' per-class maximum beside it,
    /// timings summed and the first frame's source.
    pub fn from_frames(frames: Vec<ScreeningResult>) -> Option<Self> {
        let mut it = frames.into_iter();
        let first = it.next()?;
        let mut file = Self {
            frames: vec![first.frame_result(1)],
            ..first
        };
        for (i, frame) in it.enumerate() {
            for (z, w) in file.logits.iter_mut().zip(&frame.logits) {
                *z = z.max(*w);
            }
            file.timings.decode_ms += frame.timings.decode_ms;
            file.timings.preprocess_ms += frame.timings.preprocess_ms;
            file.timings.infer_ms += frame.timings.infer_ms;
            file.frames.push(frame.frame_result(i as u32 + 2));
        }
        let names: Vec<String> = file.probabilities.iter().map(|(n, _)| n.clone()).collect();
        let values: Vec<Vec<f32>> = file
            .frames
            .iter()
            .map(|f| f.probabilities.iter().map(|(_, p)| *p).collect())
            .collect();
        let folded = fold_max(
            &names,
            values
                .iter()
                .zip(&file.frames)
                .map(|(v, f)| (v.as_slice(), f.flags.as_slice())),
        );
        file.top_class = names[folded.top].clone();
        file.top_probability = folded.probabilities[folded.top].1;
        file.probabilities = folded.probabilities;
        file.flags = folded.flags;
        Some(file)
    }

    fn frame_result(&self, frame: u32) -> FrameResult {
        FrameResult {
            frame,
            top_class: self.top_class.clone(),
            top_probability: self.top_probability,
            probabilities: self.probabilities.clone(),
            flags: self.flags.clone(),
            logits: self.logits.clone(),
        }
    }
}

/// Several results summarised as one by [`fold_max`].
pub(crate) struct Folded {
    /// Per class (in class order), the highest probability.
    pub(crate) probabilities: Vec<(String, f32)>,
    /// Classes flagged in any of the results, in class order.
    pub(crate) flags: Vec<String>,
    /// Index of the top class of the maxima (0 when there are no classes).
    pub(crate) top: usize,
}

/// How several results are summarised as one — a multi-frame file's frames, a study's
/// images: per class the highest probability (each part's probabilities in the model's class
/// order), the union of flags, and the top class of the maxima.
pub(crate) fn fold_max<'a>(
    class_names: &[String],
    parts: impl IntoIterator<Item = (&'a [f32], &'a [String])>,
) -> Folded {
    let mut max = vec![0.0_f32; class_names.len()];
    let mut flagged = vec![false; class_names.len()];
    for (probabilities, flags) in parts {
        for (m, p) in max.iter_mut().zip(probabilities) {
            *m = m.max(*p);
        }
        for (f, name) in flagged.iter_mut().zip(class_names) {
            *f |= flags.contains(name);
        }
    }
    Folded {
        top: argmax(&max),
        flags: class_names
            .iter()
            .zip(&flagged)
            .filter(|(_, f)| **f)
            .map(|(n, _)| n.clone())
            .collect(),
        probabilities: class_names.iter().cloned().zip(max).collect(),
    }
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
pub(crate) fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// Serialises `(name, value)` pairs as a JSON object in their order (not sorted).
pub(crate) fn ordered_map<S: Serializer>(pairs: &[(String, f32)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_each_class_maximum_and_the_union_of_flags_in_class_order() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let (p1, p2) = ([0.7_f32, 0.2, 0.1], [0.1_f32, 0.3, 0.6]);
        let (f1, f2) = (vec!["c".to_string()], vec!["a".to_string()]);
        let folded = fold_max(&names, [(&p1[..], &f1[..]), (&p2[..], &f2[..])]);
        assert_eq!(
            folded.probabilities,
            vec![("a".into(), 0.7), ("b".into(), 0.3), ("c".into(), 0.6)]
        );
        assert_eq!(folded.flags, vec!["a".to_string(), "c".to_string()]);
        assert_eq!(folded.top, 0);
        // Nothing to fold: zeros, no flags, index 0.
        let empty = fold_max(&names, std::iter::empty());
        assert!(empty.flags.is_empty() && empty.probabilities.iter().all(|(_, p)| *p == 0.0));
    }

    #[test]
    fn json_keeps_class_order_and_picks_the_top_class() {
        let names = vec!["b".to_string(), "a".to_string()];
        let t = Timings {
            decode_ms: 1.0,
            preprocess_ms: 0.5,
            infer_ms: 2.0,
        };
        let spec = |activation, calibration| OutputSpec {
            class_names: names.clone(),
            activation,
            calibration,
        };
        let r = ScreeningResult::new(
            Path::new("x.png"),
            "abc",
            &spec(OutputActivation::Softmax, None),
            &[0.0, 2.0],
            SourceInfo::Jpeg,
            t,
        );
        assert_eq!(r.top_class, "a");
        assert!(r.flags.is_empty() && !r.calibrated);
        assert!((r.probabilities.iter().map(|(_, p)| p).sum::<f32>() - 1.0).abs() < 1e-6);
        // Findings are independent: sigmoid(0) = 0.5, sigmoid(2) ≈ 0.881.
        let findings = ScreeningResult::new(
            Path::new("x.png"),
            "abc",
            &spec(OutputActivation::Sigmoid, None),
            &[0.0, 2.0],
            SourceInfo::Jpeg,
            t,
        );
        assert_eq!(findings.probabilities[0].1, 0.5);
        assert!((findings.probabilities[1].1 - 0.880_797).abs() < 1e-5);
        // Temperature 2 halves the logits before the sigmoid; flags follow the thresholds.
        let calibration = Calibration {
            temperature: 2.0,
            target_sensitivity: 0.95,
            thresholds: vec![Some(0.6), Some(0.7)],
        };
        let screened = ScreeningResult::new(
            Path::new("x.png"),
            "abc",
            &spec(OutputActivation::Sigmoid, Some(calibration)),
            &[0.0, 2.0],
            SourceInfo::Jpeg,
            t,
        );
        assert!((screened.probabilities[1].1 - 0.731_059).abs() < 1e-5);
        assert_eq!(screened.flags, vec!["a".to_string()]);
        assert!(screened.calibrated);
        let json = serde_json::to_string(&r).unwrap();
        let b = json.find("\"b\":").unwrap();
        let a = json.find("\"a\":").unwrap();
        assert!(b < a, "{json}");
    }
}
