//! Screening results: one JSON object per image, with per-class probabilities in the model's
//! class order, the top class, the model's id and where the time went.

use std::path::Path;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::bundle::guard::Refusal;
use crate::bundle::{BundleManifest, Calibration, OodGuard, OutputActivation};
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
    /// Whether the model's answer stands: `screened`, `not_applicable` (an input rule
    /// failed: the model did not run) or `out_of_distribution` (probabilities kept for audit,
    /// nothing flagged).
    pub status: Status,
    /// The input rule an input failed (`not_applicable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The out-of-distribution score and the bundle's threshold, when the bundle has a guard
    /// and the model ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodAssessment>,
    /// The most probable class (none when the model did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_class: Option<String>,
    /// Its probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_probability: Option<f32>,
    /// Every class's probability, in the model's class order (empty when the model did not
    /// run).
    #[serde(serialize_with = "ordered_map", skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<(String, f32)>,
    /// Classes whose calibrated probability reached the bundle's screening threshold (always
    /// empty unless `screened`).
    pub flags: Vec<String>,
    /// Whether the probabilities are temperature-scaled (the bundle carries a calibration).
    pub calibrated: bool,
    /// Whether the bundle's signature was verified with a trusted key.
    pub model_verified: bool,
    /// Which of the bundle's models produced the result.
    pub engine: crate::infer::EngineKind,
    /// The raw model outputs (empty when the model did not run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
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

/// Whether a result's answer stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The model ran on an input it is for; flags stand.
    #[default]
    Screened,
    /// The input failed one of the bundle's input rules; the model did not run.
    NotApplicable,
    /// The input scored beyond the bundle's out-of-distribution threshold: probabilities
    /// kept for audit, nothing flagged.
    OutOfDistribution,
}

/// An input's out-of-distribution score against the bundle's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OodAssessment {
    /// The score (larger: less like the validation images).
    pub score: f32,
    /// The bundle's threshold.
    pub threshold: f32,
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
    /// The frame's out-of-distribution score, when the bundle has a guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood_score: Option<f32>,
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
    /// The out-of-distribution guard, when the bundle has one.
    pub ood: Option<OodGuard>,
}

impl OutputSpec {
    /// The output description of a bundle's manifest.
    pub fn of(manifest: &BundleManifest) -> Self {
        Self {
            class_names: manifest.class_names.clone(),
            activation: manifest.output,
            calibration: manifest.calibration.clone(),
            ood: manifest.ood.clone(),
        }
    }
}

impl ScreeningResult {
    /// Builds a result from the model's input (`C×H×W`) and logits: probabilities, flags at
    /// the thresholds, and the out-of-distribution guard's verdict (beyond it: nothing flagged).
    pub fn new(
        path: &Path,
        model_id: &str,
        spec: &OutputSpec,
        (input, logits): (&[f32], &[f32]),
        source: SourceInfo,
        timings: Timings,
    ) -> Self {
        let (class_names, calibration) = (&spec.class_names, spec.calibration.as_ref());
        let temperature = calibration.map_or(1.0, |c| c.temperature);
        let scaled: Vec<f32> = logits.iter().map(|z| z / temperature).collect();
        let probs = spec.activation.probabilities(&scaled);
        let assessed = spec.ood.as_ref().map(|guard| {
            let (score, beyond) = guard.assess(logits, input);
            let assessment = OodAssessment {
                score,
                threshold: guard.threshold,
            };
            (assessment, beyond)
        });
        let out_of_distribution = assessed.is_some_and(|(_, beyond)| beyond);
        let flags = match calibration {
            Some(c) if !out_of_distribution => c
                .flags(class_names, &probs)
                .into_iter()
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        let top = argmax(&probs);
        Self {
            file: path.display().to_string(),
            model_id: model_id.to_string(),
            status: if out_of_distribution {
                Status::OutOfDistribution
            } else {
                Status::Screened
            },
            refused_by: None,
            ood: assessed.map(|(a, _)| a),
            top_class: Some(class_names[top].clone()),
            top_probability: Some(probs[top]),
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

    /// The result of an input that failed the bundle's input rule `refusal`: the model did
    /// not run, so no probabilities and no flags.
    pub fn not_applicable(
        path: &Path,
        model_id: &str,
        refusal: Refusal,
        source: SourceInfo,
        timings: Timings,
    ) -> Self {
        Self {
            file: path.display().to_string(),
            model_id: model_id.to_string(),
            status: Status::NotApplicable,
            refused_by: Some(refusal.0),
            ood: None,
            top_class: None,
            top_probability: None,
            probabilities: Vec::new(),
            flags: Vec::new(),
            calibrated: false,
            model_verified: false,
            engine: crate::infer::EngineKind::Fp32,
            logits: Vec::new(),
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
            if frame.status == Status::OutOfDistribution {
                file.status = Status::OutOfDistribution;
            }
            if let (Some(a), Some(b)) = (&mut file.ood, frame.ood) {
                a.score = a.score.max(b.score);
            }
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
        file.top_class = Some(names[folded.top].clone());
        file.top_probability = Some(folded.probabilities[folded.top].1);
        file.probabilities = folded.probabilities;
        // One frame unlike the validation images puts the file's answer in doubt.
        file.flags = match file.status {
            Status::Screened => folded.flags,
            _ => Vec::new(),
        };
        Some(file)
    }

    fn frame_result(&self, frame: u32) -> FrameResult {
        FrameResult {
            frame,
            top_class: self.top_class.clone().unwrap_or_default(),
            top_probability: self.top_probability.unwrap_or(f32::NAN),
            probabilities: self.probabilities.clone(),
            flags: self.flags.clone(),
            logits: self.logits.clone(),
            ood_score: self.ood.map(|a| a.score),
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
            ood: None,
        };
        let r = ScreeningResult::new(
            Path::new("x.png"),
            "abc",
            &spec(OutputActivation::Softmax, None),
            (&[], &[0.0, 2.0]),
            SourceInfo::Jpeg,
            t,
        );
        assert_eq!(r.top_class.as_deref(), Some("a"));
        assert_eq!((r.status, r.ood), (Status::Screened, None));
        assert!(r.flags.is_empty() && !r.calibrated);
        assert!((r.probabilities.iter().map(|(_, p)| p).sum::<f32>() - 1.0).abs() < 1e-6);
        // Findings are independent: sigmoid(0) = 0.5, sigmoid(2) ≈ 0.881.
        let findings = ScreeningResult::new(
            Path::new("x.png"),
            "abc",
            &spec(OutputActivation::Sigmoid, None),
            (&[], &[0.0, 2.0]),
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
            (&[], &[0.0, 2.0]),
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

    #[test]
    fn beyond_the_ood_threshold_probabilities_stay_and_flags_go() {
        use crate::bundle::guard::OodScore;
        let spec = OutputSpec {
            class_names: vec!["nv".into(), "mel".into()],
            activation: OutputActivation::Softmax,
            calibration: Some(Calibration {
                temperature: 1.0,
                target_sensitivity: 0.9,
                thresholds: vec![Some(0.5), Some(0.5)],
            }),
            ood: Some(OodGuard {
                score: OodScore::Energy,
                threshold: -3.0,
                target_false_rejection: 0.01,
                fitted_on_images: 10,
            }),
        };
        let t = Timings {
            decode_ms: 0.0,
            preprocess_ms: 0.0,
            infer_ms: 0.0,
        };
        let result = |logits: &[f32]| {
            ScreeningResult::new(
                Path::new("x.png"),
                "m",
                &spec,
                (&[], logits),
                SourceInfo::Jpeg,
                t,
            )
        };
        let sure = result(&[0.0, 6.0]);
        assert_eq!(sure.status, Status::Screened);
        assert_eq!(sure.flags, vec!["mel".to_string()]);
        let unsure = result(&[0.5, 0.6]);
        assert_eq!(unsure.status, Status::OutOfDistribution);
        assert!(unsure.flags.is_empty());
        assert_eq!(unsure.top_class.as_deref(), Some("mel"));
        assert!(unsure.ood.unwrap().score > -3.0);
        // A multi-frame file with one such frame is out of distribution as a whole.
        let file = ScreeningResult::from_frames(vec![sure, unsure]).unwrap();
        assert_eq!(file.status, Status::OutOfDistribution);
        assert!(file.flags.is_empty() && file.frames.len() == 2);
        let refused = ScreeningResult::not_applicable(
            Path::new("cxr.png"),
            "m",
            Refusal("1 channel(s) (grey) where the model takes 3 (colour)".into()),
            SourceInfo::Png { bit_depth: 8 },
            t,
        );
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["status"], "not_applicable");
        assert!(json.get("probabilities").is_none() && json.get("top_class").is_none());
        assert_eq!(json["flags"], serde_json::json!([]));
    }
}
