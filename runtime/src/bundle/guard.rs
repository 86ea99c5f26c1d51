//! What a model is for, and how the runtime tells an input it is not for. Two guards travel in
//! the signed manifest, both set at export:
//!
//! - [`InputRules`]: DICOM attribute rules (Modality, Body Part Examined, SOP Class, …: a set of
//!   accepted values with `*` / `?` wildcards, like MONAI Deploy's series selection rules) and
//!   plain-image rules (channels, smallest side). An input failing one is `not_applicable`: it
//!   never reaches the model.
//! - [`OodGuard`]: a data-driven score on the model's logits (cheap enough for the int8 engine
//!   and a microcontroller), its threshold fitted on in-distribution validation images for a
//!   stated false-rejection rate. An input beyond it is `out_of_distribution`: probabilities
//!   kept for audit, nothing flagged.

use serde::{Deserialize, Serialize};

use crate::decode::DicomAttributes;

/// A DICOM attribute an input rule can test, named by its DICOM keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DicomAttribute {
    /// (0008,0060).
    Modality,
    /// (0018,0015).
    BodyPartExamined,
    /// (0008,0016).
    #[serde(rename = "SOPClassUID")]
    SopClassUid,
    /// (0028,0004).
    PhotometricInterpretation,
    /// (0008,0008), its values joined by backslashes (`ORIGINAL\PRIMARY*`).
    ImageType,
    /// (0018,5101).
    ViewPosition,
}

impl DicomAttribute {
    /// Every attribute, in keyword order of the list above.
    pub const ALL: [DicomAttribute; 6] = [
        DicomAttribute::Modality,
        DicomAttribute::BodyPartExamined,
        DicomAttribute::SopClassUid,
        DicomAttribute::PhotometricInterpretation,
        DicomAttribute::ImageType,
        DicomAttribute::ViewPosition,
    ];

    /// The DICOM keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DicomAttribute::Modality => "Modality",
            DicomAttribute::BodyPartExamined => "BodyPartExamined",
            DicomAttribute::SopClassUid => "SOPClassUID",
            DicomAttribute::PhotometricInterpretation => "PhotometricInterpretation",
            DicomAttribute::ImageType => "ImageType",
            DicomAttribute::ViewPosition => "ViewPosition",
        }
    }

    /// The attribute named by `keyword` (case-insensitive).
    pub fn from_keyword(keyword: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.keyword().eq_ignore_ascii_case(keyword))
    }

    fn value(self, attributes: &DicomAttributes) -> Option<&str> {
        match self {
            DicomAttribute::Modality => attributes.modality.as_deref(),
            DicomAttribute::BodyPartExamined => attributes.body_part_examined.as_deref(),
            DicomAttribute::SopClassUid => attributes.sop_class_uid.as_deref(),
            DicomAttribute::PhotometricInterpretation => {
                attributes.photometric_interpretation.as_deref()
            }
            DicomAttribute::ImageType => attributes.image_type.as_deref(),
            DicomAttribute::ViewPosition => attributes.view_position.as_deref(),
        }
    }
}

/// One DICOM attribute rule: the attribute's value must match one of `accept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeRule {
    /// The attribute tested.
    pub attribute: DicomAttribute,
    /// Accepted values, compared without regard to case; `*` matches any run of characters,
    /// `?` one character.
    pub accept: Vec<String>,
    /// Whether a file without the attribute passes (Body Part Examined and View Position are
    /// often left empty by modalities).
    #[serde(default)]
    pub allow_missing: bool,
}

/// The inputs a model is for, tested before inference.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRules {
    /// DICOM attribute rules; every one must pass (PNG and JPEG files have no attributes and
    /// are not tested by them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dicom: Vec<AttributeRule>,
    /// Content channels of the decoded image accepted: `[1]` grey (also grey stored as three
    /// equal channels), `[3]` colour; empty: either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<u32>,
    /// Smallest accepted image side in pixels (an image this small holds less detail than
    /// the training images did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_side: Option<u32>,
    /// Where the rules came from (`derived from 64 training images: …`, or `--accept`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
}

/// Why an input is not one the model is for: the rule it failed, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl InputRules {
    /// Tests a DICOM file's attributes against every attribute rule.
    pub fn check_dicom(&self, attributes: &DicomAttributes) -> Result<(), Refusal> {
        for rule in &self.dicom {
            let keyword = rule.attribute.keyword();
            match rule.attribute.value(attributes) {
                None if rule.allow_missing => {}
                None => {
                    return Err(Refusal(format!(
                        "{keyword} is missing; the model accepts {}",
                        rule.accept.join(", ")
                    )))
                }
                Some(value) if rule.accept.iter().any(|p| wildcard_match(p, value)) => {}
                Some(value) => {
                    return Err(Refusal(format!(
                        "{keyword} {value:?} is not one the model accepts ({})",
                        rule.accept.join(", ")
                    )))
                }
            }
        }
        Ok(())
    }

    /// Tests a decoded image's channels and size.
    pub fn check_image(&self, channels: u32, width: u32, height: u32) -> Result<(), Refusal> {
        let kind = |c: u32| if c == 1 { "grey" } else { "colour" };
        if !self.channels.is_empty() && !self.channels.contains(&channels) {
            let wanted: Vec<&str> = self.channels.iter().map(|&c| kind(c)).collect();
            return Err(Refusal(format!(
                "a {} image where the model takes {} images",
                kind(channels),
                wanted.join(" or ")
            )));
        }
        if let Some(min) = self.min_side {
            if width.min(height) < min {
                return Err(Refusal(format!(
                    "{width}×{height} pixels: smaller than the {min}-pixel side the model accepts"
                )));
            }
        }
        Ok(())
    }

    /// Checks the rules themselves; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for rule in &self.dicom {
            if rule.accept.is_empty() || rule.accept.iter().any(|p| p.trim().is_empty()) {
                return Err(format!(
                    "input_rules: {} needs at least one non-empty accepted value",
                    rule.attribute.keyword()
                ));
            }
        }
        if self.channels.iter().any(|c| *c != 1 && *c != 3) {
            return Err("input_rules.channels may hold only 1 and 3".into());
        }
        if self.min_side == Some(0) {
            return Err("input_rules.min_side must be at least 1".into());
        }
        Ok(())
    }
}

/// `pattern` (with `*` and `?`) against `value`, ASCII case-insensitive. Iterative with one
/// backtracking point, so a long pattern cannot take exponential time.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_uppercase().chars().collect(),
        value.to_ascii_uppercase().chars().collect(),
    );
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// How the out-of-distribution score is computed from a model's logits (and, for the
/// Mahalanobis score, simple statistics of its input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OodScore {
    /// Energy (Liu et al. 2020): `-log Σ exp(z)`; high when no class is strongly indicated.
    Energy,
    /// Mahalanobis distance (Lee et al. 2018) of a small feature vector — the logits, then
    /// each input channel's mean and standard deviation ([`ood_features`]) — to the nearest
    /// class mean of the validation images' features under their shared covariance: high for
    /// inputs unlike the validation images in what the model answers (too unsure, or too sure)
    /// or in their colours and contrast.
    Mahalanobis {
        /// Mean feature vector of each class seen on validation.
        means: Vec<Vec<f32>>,
        /// The inverse of the shared covariance (ridge added), `d × d`, row-major.
        precision: Vec<f32>,
        /// Input channels whose statistics follow the logits in the features (0: logits only).
        #[serde(default)]
        input_channels: usize,
    },
}

/// The Mahalanobis score's features: the logits, then for each of `channels` planes of the
/// `C×H×W` model input its mean and standard deviation.
pub fn ood_features(logits: &[f32], input: &[f32], channels: usize) -> Vec<f32> {
    let mut features = logits.to_vec();
    let plane = input.len().checked_div(channels).unwrap_or(0);
    for c in 0..channels {
        let values = &input[c * plane..(c + 1) * plane];
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        // An empty plane gives NaN, which the guard never trusts.
        let (mean, std) = if values.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (mean, var.sqrt())
        };
        features.extend([mean as f32, std as f32]);
    }
    features
}

impl OodScore {
    /// The score of an input from its model `input` (`C×H×W`) and the model's `logits`
    /// (larger: less like the validation images).
    pub fn of(&self, logits: &[f32], input: &[f32]) -> f32 {
        match self {
            OodScore::Energy => self.of_features(logits),
            OodScore::Mahalanobis { input_channels, .. } => {
                self.of_features(&ood_features(logits, input, *input_channels))
            }
        }
    }

    /// The score of features already made: the logits for the energy, [`ood_features`] with
    /// this score's `input_channels` for the Mahalanobis distance.
    pub fn of_features(&self, features: &[f32]) -> f32 {
        match self {
            OodScore::Energy => {
                let max = features.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = features.iter().map(|z| (z - max).exp()).sum();
                -(max + sum.ln())
            }
            OodScore::Mahalanobis {
                means, precision, ..
            } => means
                .iter()
                .map(|mean| squared_distance(features, mean, precision))
                .fold(f32::INFINITY, f32::min),
        }
    }
}

/// `(x - mean)ᵀ P (x - mean)`.
fn squared_distance(x: &[f32], mean: &[f32], precision: &[f32]) -> f32 {
    let d: Vec<f32> = x.iter().zip(mean).map(|(v, m)| v - m).collect();
    d.iter()
        .enumerate()
        .map(|(r, dr)| {
            let row = &precision[r * d.len()..(r + 1) * d.len()];
            dr * row.iter().zip(&d).map(|(p, dc)| p * dc).sum::<f32>()
        })
        .sum()
}

/// The out-of-distribution guard of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodGuard {
    /// The score.
    pub score: OodScore,
    /// Inputs scoring above this are out of distribution.
    pub threshold: f32,
    /// The share of in-distribution validation images the threshold was chosen to reject.
    pub target_false_rejection: f32,
    /// Validation images the threshold was fitted on.
    pub fitted_on_images: usize,
}

impl OodGuard {
    /// The input's score, and whether it is beyond the threshold.
    pub fn assess(&self, logits: &[f32], input: &[f32]) -> (f32, bool) {
        let score = self.score.of(logits, input);
        // A NaN score (NaN logits) is never trusted as in-distribution.
        (score, score.is_nan() || score > self.threshold)
    }

    /// Checks the guard against the model's class count and input channels; the error says
    /// what is wrong.
    pub fn validate(&self, classes: usize, channels: usize) -> Result<(), String> {
        if !self.threshold.is_finite() {
            return Err("ood.threshold must be finite".into());
        }
        if !(0.0..1.0).contains(&self.target_false_rejection) {
            return Err("ood.target_false_rejection must be in [0, 1)".into());
        }
        if let OodScore::Mahalanobis {
            means,
            precision,
            input_channels,
        } = &self.score
        {
            if *input_channels != 0 && *input_channels != channels {
                return Err(format!(
                    "ood.score.input_channels {input_channels} is not the model's {channels}"
                ));
            }
            let d = classes + 2 * input_channels;
            if means.is_empty() || means.iter().any(|m| m.len() != d) {
                return Err(format!("ood.score.means must hold vectors of {d} features"));
            }
            if precision.len() != d * d || precision.iter().any(|p| !p.is_finite()) {
                return Err(format!(
                    "ood.score.precision must hold {d}×{d} finite values"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derm_rules() -> InputRules {
        InputRules {
            dicom: vec![
                AttributeRule {
                    attribute: DicomAttribute::Modality,
                    accept: vec!["XC".into(), "DMS".into()],
                    allow_missing: false,
                },
                AttributeRule {
                    attribute: DicomAttribute::ImageType,
                    accept: vec!["ORIGINAL\\*".into()],
                    allow_missing: true,
                },
            ],
            channels: vec![3],
            min_side: Some(200),
            derived_from: None,
        }
    }

    #[test]
    fn wildcards_match_like_series_selection_rules() {
        assert!(wildcard_match("CR", "cr"));
        assert!(wildcard_match("ORIGINAL\\*", "ORIGINAL\\PRIMARY\\AXIAL"));
        assert!(wildcard_match(
            "1.2.840.10008.5.1.4.1.1.?",
            "1.2.840.10008.5.1.4.1.1.7"
        ));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("DERIVED*", "ORIGINAL\\PRIMARY"));
        assert!(!wildcard_match("C?", "CTX"));
        assert!(wildcard_match("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!wildcard_match(&"*a".repeat(40), &"a".repeat(39)));
    }

    #[test]
    fn a_chest_film_fails_the_dermatology_modality_rule_and_names_it() {
        let chest = DicomAttributes {
            modality: Some("CR".into()),
            ..DicomAttributes::default()
        };
        let refusal = derm_rules().check_dicom(&chest).unwrap_err();
        assert!(refusal.0.contains("Modality \"CR\""), "{}", refusal.0);
        let photo = DicomAttributes {
            modality: Some("XC".into()),
            image_type: Some("ORIGINAL\\PRIMARY".into()),
            ..DicomAttributes::default()
        };
        assert_eq!(derm_rules().check_dicom(&photo), Ok(()));
        let unlabelled = DicomAttributes::default();
        assert!(derm_rules()
            .check_dicom(&unlabelled)
            .unwrap_err()
            .0
            .contains("missing"));
    }

    #[test]
    fn grey_and_small_images_fail_the_image_rules() {
        let rules = derm_rules();
        assert!(rules
            .check_image(1, 1024, 1024)
            .unwrap_err()
            .0
            .contains("grey"));
        assert!(rules
            .check_image(3, 28, 28)
            .unwrap_err()
            .0
            .contains("28×28"));
        assert_eq!(rules.check_image(3, 600, 450), Ok(()));
    }

    #[test]
    fn rules_without_values_or_with_odd_channels_are_invalid() {
        let mut rules = derm_rules();
        rules.dicom[0].accept.clear();
        assert!(rules.validate().is_err());
        let rules = InputRules {
            channels: vec![2],
            ..InputRules::default()
        };
        assert!(rules.validate().is_err());
    }

    #[test]
    fn energy_is_high_when_no_class_stands_out() {
        let (sure, unsure) = (
            OodScore::Energy.of(&[8.0, 0.0], &[]),
            OodScore::Energy.of(&[0.0, 0.0], &[]),
        );
        assert!(unsure > sure);
        assert!((unsure + 2.0_f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn mahalanobis_takes_the_nearest_class_mean_under_the_precision() {
        let score = OodScore::Mahalanobis {
            means: vec![vec![2.0, -2.0], vec![-2.0, 2.0]],
            precision: vec![1.0, 0.0, 0.0, 4.0],
            input_channels: 0,
        };
        assert_eq!(score.of(&[2.0, -2.0], &[]), 0.0);
        assert_eq!(score.of(&[-2.0, 3.0], &[]), 4.0);
        // Too sure is as unusual as too unsure.
        assert!(score.of(&[20.0, -20.0], &[]) > 100.0);
        let guard = OodGuard {
            score,
            threshold: 9.0,
            target_false_rejection: 0.01,
            fitted_on_images: 100,
        };
        assert!(!guard.assess(&[2.0, -1.0], &[]).1);
        assert!(guard.assess(&[20.0, -20.0], &[]).1);
        assert!(guard.assess(&[f32::NAN, 0.0], &[]).1);
        assert!(guard.validate(2, 3).is_ok());
        assert!(guard.validate(3, 3).is_err());
    }

    #[test]
    fn input_statistics_join_the_logits_and_an_unusual_contrast_is_out_of_distribution() {
        // Two channels of 2×2: means 0.5 and 0; standard deviations 0.5 and 0.
        let input = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(
            ood_features(&[3.0], &input, 2),
            vec![3.0, 0.5, 0.5, 0.0, 0.0]
        );
        let guard = OodGuard {
            score: OodScore::Mahalanobis {
                means: vec![vec![0.0, 0.5, 0.5, 0.0, 0.0]],
                precision: (0..25)
                    .map(|i| if i % 6 == 0 { 1.0 } else { 0.0 })
                    .collect(),
                input_channels: 2,
            },
            threshold: 1.0,
            target_false_rejection: 0.01,
            fitted_on_images: 10,
        };
        assert!(!guard.assess(&[0.0], &input).1);
        let flat = [0.5; 8];
        assert!(guard.assess(&[0.0], &flat).0 > 0.24);
        let bright = [5.0; 8];
        assert!(guard.assess(&[0.0], &bright).1);
        // No input where statistics are expected: never trusted.
        assert!(guard.assess(&[0.0], &[]).1);
        assert!(guard.validate(1, 2).is_ok());
        assert!(guard.validate(1, 3).is_err());
    }
}
