//! Study results: the results of a DICOM study's instances folded into one — per class the
//! highest probability over the screened instances, the union of their flags, the count of
//! each status, and the instances themselves. `watch` / `receive` keep one per study in
//! `OUT/studies/`; `screen --by-study` prints them.

use serde::{Deserialize, Serialize};

use crate::decode::{DicomIdentity, DicomStudyHeader};
use crate::report::{ScreeningResult, Status};

/// A study's result (a study is flagged when any of its screened images is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// (0020,000D) Study Instance UID.
    pub study_uid: String,
    /// The model's id.
    pub model_id: String,
    /// The study's most probable class (over the per-class maxima of its screened images;
    /// none when none was screened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_class: Option<String>,
    /// Per class, the highest probability over the study's screened images.
    #[serde(
        serialize_with = "crate::report::ordered_map",
        deserialize_with = "pairs_from_map"
    )]
    pub probabilities: Vec<(String, f32)>,
    /// Classes flagged on any screened image.
    pub flags: Vec<String>,
    /// Images screened (their answers stand and make the aggregate above).
    #[serde(default)]
    pub screened: usize,
    /// Images the model is not for (an input rule failed); not in the aggregate.
    #[serde(default)]
    pub not_applicable: usize,
    /// Images beyond the out-of-distribution threshold; not in the aggregate.
    #[serde(default)]
    pub out_of_distribution: usize,
    /// The instances, in the order they were added.
    pub instances: Vec<StudyInstance>,
    /// The Patient and General Study modules of the study's first instance, kept when a DICOM
    /// report of the study is to be written (`sr`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<DicomStudyHeader>,
}

/// One instance of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyInstance {
    /// The input file.
    pub input: String,
    /// The service's claim id (watch / receive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// (0020,000E) Series Instance UID.
    pub series_uid: Option<String>,
    /// (0008,0018) SOP Instance UID.
    pub sop_instance_uid: Option<String>,
    /// (0008,0016) SOP Class UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sop_class_uid: Option<String>,
    /// The instance's status.
    #[serde(default)]
    pub status: Status,
    /// The input rule it failed (`not_applicable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// Its top class (none when the model did not run).
    pub top_class: Option<String>,
    /// In the model's class order (empty when the model did not run).
    pub probabilities: Vec<f32>,
    /// Its flags.
    pub flags: Vec<String>,
    /// The result file written for it (watch / receive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_file: Option<String>,
}

impl StudyInstance {
    /// The instance `input` with its identifiers and result.
    pub fn of(input: String, dicom: Option<&DicomIdentity>, result: &ScreeningResult) -> Self {
        Self {
            input,
            claim_id: None,
            series_uid: dicom.and_then(|d| d.series_uid.clone()),
            sop_instance_uid: dicom.and_then(|d| d.sop_instance_uid.clone()),
            sop_class_uid: dicom.and_then(|d| d.sop_class_uid.clone()),
            status: result.status,
            refused_by: result.refused_by.clone(),
            top_class: result.top_class.clone(),
            probabilities: result.probabilities.iter().map(|(_, p)| *p).collect(),
            flags: result.flags.clone(),
            result_file: None,
        }
    }
}

impl StudyResult {
    /// An empty study.
    pub fn new(study_uid: &str) -> Self {
        Self {
            study_uid: study_uid.to_string(),
            ..Self::default()
        }
    }

    /// Adds an instance (replacing an earlier one of the same input, so a redo after a crash
    /// replaces its own entry); call [`StudyResult::aggregate`] after.
    pub fn add(&mut self, instance: StudyInstance) {
        self.instances.retain(|i| i.input != instance.input);
        self.instances.push(instance);
    }

    /// Recomputes the aggregate from the screened instances (the others are only counted);
    /// `class_names` and `model_id` are the bundle's.
    pub fn aggregate(&mut self, class_names: &[String], model_id: &str) {
        self.model_id = model_id.to_string();
        let count = |status| self.instances.iter().filter(|i| i.status == status).count();
        self.screened = count(Status::Screened);
        self.not_applicable = count(Status::NotApplicable);
        self.out_of_distribution = count(Status::OutOfDistribution);
        let folded = crate::report::fold_max(
            class_names,
            self.instances
                .iter()
                .filter(|i| i.status == Status::Screened)
                .map(|i| (i.probabilities.as_slice(), i.flags.as_slice())),
        );
        let any = self.screened > 0;
        self.top_class = any.then(|| class_names.get(folded.top).cloned()).flatten();
        self.probabilities = if any {
            folded.probabilities
        } else {
            Vec::new()
        };
        self.flags = folded.flags;
    }
}

fn pairs_from_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<(String, f32)>, D::Error> {
    // Order is rebuilt by `aggregate` from the model's class order; the map's is not needed.
    let map: std::collections::BTreeMap<String, f32> = Deserialize::deserialize(d)?;
    Ok(map.into_iter().collect())
}
