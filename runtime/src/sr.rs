//! DICOM Structured Reports of screening results: the object a PACS files beside the images and
//! a viewer shows the radiologist (MONAI Deploy's SR writer and IHE AI Results do the same).
//!
//! One Comprehensive SR (PS3.3 A.35.3) per study result: the Patient and General Study modules
//! copied from the source, a new series and instance under a configurable UID root, the source
//! instances referenced (evidence sequence and IMAGE items), and content items for each class's
//! probability, its threshold and whether it is flagged, the model id and sha256, the signature
//! status, the status counts and a "not for diagnostic use" statement.
//!
//! The UIDs are derived from what the report says (study, model, instances and their results),
//! not drawn at random: writing the same study result again — after a crash, say — yields the
//! same object under the same UID, never a second copy, and a report of a study that gained an
//! instance is a new object in the same series.

use std::path::Path;
use std::time::SystemTime;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::DicomStudyHeader;
use crate::study::StudyResult;
use crate::{Error, Result};

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// The private coding scheme of the report's own concepts (PS3.16 8.2: "99" + an
/// organisation), declared in the Coding Scheme Identification Sequence.
const SCHEME: &str = "99SCANSIDE";
/// The longest UID root: the derived suffix (`.` and up to 20 digits) must fit in 64.
const MAX_ROOT_LEN: usize = 40;

/// What the SR writer is told: where its UIDs live, what it says, when it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrConfig {
    /// The organisation's UID root for the report's series and instances; empty: UUID-derived
    /// UIDs under `2.25` (PS3.5 B.2), unique without a registered root.
    pub uid_root: String,
    /// The statement every report carries.
    pub disclaimer: String,
    /// Also write one report per screened instance, as soon as it is screened.
    pub per_instance: bool,
    /// Seconds a study must go without a new instance before its report is written (DICOM has
    /// no end-of-study signal; a study that gains an instance later gets a new report).
    pub stable_seconds: u64,
}

impl Default for SrConfig {
    fn default() -> Self {
        Self {
            uid_root: String::new(),
            disclaimer: "Not for diagnostic use. Screening result of an automated model; a \
                         clinician must review the images."
                .into(),
            per_instance: false,
            stable_seconds: 60,
        }
    }
}

impl SrConfig {
    /// Checks the UID root (digits and dots, no empty or zero-led components, at most 40
    /// characters) and the disclaimer (1–1024 characters: a TEXT item of one line or a few).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                reason,
            })
        };
        if !self.uid_root.is_empty() && !is_valid_uid(&self.uid_root, MAX_ROOT_LEN) {
            return bad(format!(
                "sr.uid_root {:?} is not a UID root (digits and dots, components without \
                 leading zeros, at most {MAX_ROOT_LEN} characters)",
                self.uid_root
            ));
        }
        if self.disclaimer.trim().is_empty() || self.disclaimer.len() > 1024 {
            return bad("sr.disclaimer must be 1-1024 characters".into());
        }
        Ok(())
    }
}

/// The model a report names, as the service knows it.
#[derive(Debug, Clone)]
pub struct ReportedModel<'a> {
    /// The bundle's model id.
    pub id: &'a str,
    /// SHA-256 of the model file.
    pub sha256: &'a str,
    /// Whether the bundle's signature was verified.
    pub verified: bool,
    /// Class names in output order.
    pub class_names: &'a [String],
    /// Per class, the screening threshold (`None`: never flagged; no calibration: empty).
    pub thresholds: &'a [Option<f32>],
}

/// A written report: its SOP Instance UID and Part-10 bytes.
#[derive(Debug, Clone)]
pub struct SrDocument {
    /// (0008,0018) of the report.
    pub sop_instance_uid: String,
    /// (0020,000E) of the report's series.
    pub series_uid: String,
    /// The file: preamble, file meta information, data set (explicit VR little endian).
    pub bytes: Vec<u8>,
}

/// Builds the report of `study` (its `header` must be set: the modules the report copies).
/// `now` dates the content.
pub fn study_report(
    study: &StudyResult,
    model: &ReportedModel,
    config: &SrConfig,
    now: SystemTime,
) -> std::result::Result<SrDocument, String> {
    let header = study
        .header
        .as_ref()
        .ok_or("the study result has no patient and study header")?;
    let study_uid = header.study_uid.as_deref().unwrap_or(&study.study_uid);
    let series_uid = derive_uid(&config.uid_root, &["series", study_uid, model.sha256]);
    let sop_instance_uid = derive_uid(&config.uid_root, &identity_parts(study, model));
    let (date, time) = date_time(now);
    let mut obj = InMemDicomObject::new_empty();
    for element in sop_common(&sop_instance_uid)
        .into_iter()
        .chain(patient_and_study(header, study_uid))
        .chain(series_and_equipment(&series_uid, model))
        .chain(document_general(study, study_uid, &date, &time))
        .chain(content(study, model, config))
    {
        obj.put(element);
    }
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_version_name(concat!("SCANSIDE_", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(|e| format!("file meta information: {e}"))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| format!("encoding the report: {e}"))?;
    Ok(SrDocument {
        sop_instance_uid,
        series_uid,
        bytes,
    })
}

/// What makes two reports the same object: study, model, and each instance with its result.
fn identity_parts<'a>(study: &'a StudyResult, model: &'a ReportedModel) -> Vec<&'a str> {
    let mut parts = vec!["report", study.study_uid.as_str(), model.sha256];
    for instance in &study.instances {
        parts.push(
            instance
                .sop_instance_uid
                .as_deref()
                .unwrap_or(&instance.input),
        );
        parts.push(instance.top_class.as_deref().unwrap_or("-"));
        parts.extend(instance.flags.iter().map(String::as_str));
    }
    parts
}

/// A UID under `root` (or `2.25`) from the SHA-256 of `parts`: 64 bits under a root (a site
/// makes far fewer than 2^32 reports), 128 under `2.25`, as a decimal integer, which has no
/// leading zero.
pub fn derive_uid(root: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    if root.is_empty() {
        let value = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        format!("2.25.{value}")
    } else {
        let value = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        format!("{root}.{}", value.max(1))
    }
}

/// PS3.5 9.1: components of digits without leading zeros, separated by single dots.
pub fn is_valid_uid(uid: &str, max_len: usize) -> bool {
    uid.len() <= max_len
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// DICOM DA and TM values (UTC) of `now`.
fn date_time(now: SystemTime) -> (String, String) {
    // "2026-12-03T15:30:00Z"
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    (digits[..8].to_string(), digits[8..14].to_string())
}

type Element = DataElement<InMemDicomObject>;

fn text(tag: dicom_core::Tag, vr: VR, value: &str) -> Element {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

/// A type 2 attribute: present, empty when the source has no value.
fn copied(tag: dicom_core::Tag, vr: VR, value: Option<&String>) -> Element {
    match value {
        Some(v) => text(tag, vr, v),
        None => DataElement::new(tag, vr, PrimitiveValue::Empty),
    }
}

fn sequence(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> Element {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn item(elements: Vec<Element>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn sop_common(sop_instance_uid: &str) -> Vec<Element> {
    vec![
        // UTF-8: names are kept as the decoder read them, whatever the source's character set.
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        text(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid),
    ]
}

fn patient_and_study(header: &DicomStudyHeader, study_uid: &str) -> Vec<Element> {
    let mut elements = vec![
        copied(tags::PATIENT_NAME, VR::PN, header.patient_name.as_ref()),
        copied(tags::PATIENT_ID, VR::LO, header.patient_id.as_ref()),
        copied(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            header.patient_birth_date.as_ref(),
        ),
        copied(tags::PATIENT_SEX, VR::CS, header.patient_sex.as_ref()),
        text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        copied(tags::STUDY_DATE, VR::DA, header.study_date.as_ref()),
        copied(tags::STUDY_TIME, VR::TM, header.study_time.as_ref()),
        copied(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            header.referring_physician_name.as_ref(),
        ),
        copied(tags::STUDY_ID, VR::SH, header.study_id.as_ref()),
        copied(
            tags::ACCESSION_NUMBER,
            VR::SH,
            header.accession_number.as_ref(),
        ),
    ];
    if let Some(issuer) = &header.issuer_of_patient_id {
        elements.push(text(tags::ISSUER_OF_PATIENT_ID, VR::LO, issuer));
    }
    if let Some(description) = &header.study_description {
        elements.push(text(tags::STUDY_DESCRIPTION, VR::LO, description));
    }
    elements
}

fn series_and_equipment(series_uid: &str, model: &ReportedModel) -> Vec<Element> {
    vec![
        text(tags::MODALITY, VR::CS, "SR"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        text(tags::SERIES_NUMBER, VR::IS, "9901"),
        text(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &truncate(&format!("scanside screening: {}", model.id), 64),
        ),
        sequence(
            tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
            Vec::new(),
        ),
        text(tags::MANUFACTURER, VR::LO, "scanside"),
        text(
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            &truncate(model.id, 64),
        ),
        text(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
    ]
}

fn document_general(study: &StudyResult, study_uid: &str, date: &str, time: &str) -> Vec<Element> {
    vec![
        text(
            tags::INSTANCE_NUMBER,
            VR::IS,
            &(study.instances.len().max(1)).to_string(),
        ),
        text(tags::CONTENT_DATE, VR::DA, date),
        text(tags::CONTENT_TIME, VR::TM, time),
        text(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000"),
        // A model's output is complete for what it was given, and no clinician verified it.
        text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        sequence(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new()),
        sequence(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence(study, study_uid)],
        ),
        sequence(
            tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
            vec![item(vec![
                text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, SCHEME),
                text(
                    tags::CODING_SCHEME_NAME,
                    VR::ST,
                    "scanside screening report concepts",
                ),
                text(
                    tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                    VR::ST,
                    "scanside",
                ),
            ])],
        ),
    ]
}

/// The source instances, grouped by series (the Hierarchical SOP Instance Reference Macro).
fn evidence(study: &StudyResult, study_uid: &str) -> InMemDicomObject {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for (class, instance_uid, series_uid) in referenced(study) {
        let reference = item(vec![
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
            text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance_uid),
        ]);
        match series.iter_mut().find(|(uid, _)| *uid == series_uid) {
            Some((_, refs)) => refs.push(reference),
            None => series.push((series_uid, vec![reference])),
        }
    }
    let series = series
        .into_iter()
        .map(|(uid, refs)| {
            item(vec![
                text(tags::SERIES_INSTANCE_UID, VR::UI, uid),
                sequence(tags::REFERENCED_SOP_SEQUENCE, refs),
            ])
        })
        .collect();
    item(vec![
        text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        sequence(tags::REFERENCED_SERIES_SEQUENCE, series),
    ])
}

/// The study's instances that can be referenced: (SOP class, SOP instance, series) UIDs.
fn referenced(study: &StudyResult) -> impl Iterator<Item = (&str, &str, &str)> {
    study.instances.iter().filter_map(|i| {
        Some((
            i.sop_class_uid.as_deref()?,
            i.sop_instance_uid.as_deref()?,
            i.series_uid.as_deref()?,
        ))
    })
}

fn content(study: &StudyResult, model: &ReportedModel, config: &SrConfig) -> Vec<Element> {
    let mut items = vec![
        text_item("121106", "DCM", "Comment", &config.disclaimer),
        text_item("111001", "DCM", "Algorithm Name", model.id),
        text_item(
            "111003",
            "DCM",
            "Algorithm Version",
            &format!("sha256:{}", model.sha256),
        ),
        text_item(
            "SIGNATURE",
            SCHEME,
            "Bundle signature",
            if model.verified {
                "verified"
            } else {
                "not verified (unsigned bundle run with allow_unsigned)"
            },
        ),
        text_item("SUMMARY", SCHEME, "Screening summary", &summary(study)),
    ];
    if study.screened > 0 {
        items.extend(
            model
                .class_names
                .iter()
                .enumerate()
                .map(|(index, name)| class_item(study, model, index, name)),
        );
    }
    items.extend(referenced(study).map(|(class, instance, _)| image_item(class, instance)));
    vec![
        text(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        sequence(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("18748-4", "LN", "Diagnostic imaging report")],
        ),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        sequence(tags::CONTENT_SEQUENCE, items),
    ]
}

/// One line a reader of the report sees first.
fn summary(study: &StudyResult) -> String {
    let mut line = format!("{} image(s) screened", study.screened);
    if study.not_applicable > 0 {
        line += &format!(
            ", {} not applicable (the model is not for them)",
            study.not_applicable
        );
    }
    if study.out_of_distribution > 0 {
        line += &format!(
            ", {} out of distribution (not screened)",
            study.out_of_distribution
        );
    }
    line += &if study.screened == 0 {
        ". No result.".to_string()
    } else if study.flags.is_empty() {
        ". Nothing flagged.".to_string()
    } else {
        format!(". Flagged: {}.", study.flags.join(", "))
    };
    line
}

fn content_item(relationship: &str, value_type: &str, concept: InMemDicomObject) -> Vec<Element> {
    vec![
        text(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        text(tags::VALUE_TYPE, VR::CS, value_type),
        sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]),
    ]
}

fn text_item(value: &str, scheme: &str, meaning: &str, body: &str) -> InMemDicomObject {
    let mut elements = content_item("CONTAINS", "TEXT", code(value, scheme, meaning));
    elements.push(text(tags::TEXT_VALUE, VR::UT, body));
    item(elements)
}

fn num_item(value: &str, meaning: &str, number: f32) -> InMemDicomObject {
    let mut elements = content_item("CONTAINS", "NUM", code(value, SCHEME, meaning));
    elements.push(sequence(
        tags::MEASURED_VALUE_SEQUENCE,
        vec![item(vec![
            sequence(
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![code("1", "UCUM", "no units")],
            ),
            text(tags::NUMERIC_VALUE, VR::DS, &format!("{number:.4}")),
        ])],
    ));
    item(elements)
}

/// A class: its highest probability over the study's screened images, its threshold, whether
/// it is flagged. The code value is the class's index (SH holds 16 characters; names can be
/// longer), the meaning its name.
fn class_item(
    study: &StudyResult,
    model: &ReportedModel,
    index: usize,
    name: &str,
) -> InMemDicomObject {
    let probability = study
        .probabilities
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0.0, |(_, p)| *p);
    let threshold = model.thresholds.get(index).copied().flatten();
    let flagged = study.flags.iter().any(|f| f == name);
    let mut children = vec![num_item("PROBABILITY", "Probability", probability)];
    if let Some(t) = threshold {
        children.push(num_item("THRESHOLD", "Screening threshold", t));
    }
    children.push(text_item(
        "FLAGGED",
        SCHEME,
        "Flagged",
        match (flagged, threshold) {
            (true, _) => "yes",
            (false, Some(_)) => "no",
            (false, None) => "no (the model has no threshold for this class)",
        },
    ));
    let mut elements = content_item(
        "CONTAINS",
        "CONTAINER",
        code(&format!("CLASS{index}"), SCHEME, &truncate(name, 64)),
    );
    elements.push(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    elements.push(sequence(tags::CONTENT_SEQUENCE, children));
    item(elements)
}

fn image_item(class: &str, instance: &str) -> InMemDicomObject {
    let mut elements = content_item(
        "CONTAINS",
        "IMAGE",
        code("121112", "DCM", "Source of Measurement"),
    );
    elements.push(sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![item(vec![
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
            text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
        ])],
    ));
    item(elements)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_valid_stable_and_differ_by_content() {
        let a = derive_uid("", &["x", "y"]);
        assert!(a.starts_with("2.25.") && is_valid_uid(&a, 64), "{a}");
        assert_eq!(a, derive_uid("", &["x", "y"]));
        assert_ne!(a, derive_uid("", &["xy"]), "parts are separated");
        let root = "1.2.826.0.1.3680043.10.1234567890.12345";
        let b = derive_uid(root, &["x"]);
        assert!(b.starts_with(root) && is_valid_uid(&b, 64), "{b}");
    }

    #[test]
    fn uid_roots_are_checked() {
        for good in ["1.2.3", "2.25", "1.0.5"] {
            assert!(is_valid_uid(good, MAX_ROOT_LEN), "{good}");
        }
        for bad in ["", "1..2", "1.02", "1.2.", "a.1", "1.2 ", &"1.".repeat(30)] {
            assert!(!is_valid_uid(bad, MAX_ROOT_LEN), "{bad}");
        }
        let config = SrConfig {
            uid_root: "1.02".into(),
            ..SrConfig::default()
        };
        let err = config
            .validate(Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml") && err.contains("uid_root"), "{err}");
    }

    fn study(flags: &[&str]) -> StudyResult {
        let names = ["benign".to_string(), "melanoma".to_string()];
        let mut study = StudyResult::new("1.2.3");
        study.header = Some(DicomStudyHeader {
            patient_name: Some("Doe^Jane".into()),
            study_uid: Some("1.2.3".into()),
            ..Default::default()
        });
        study.add(crate::study::StudyInstance {
            input: "a.dcm".into(),
            claim_id: None,
            series_uid: Some("1.2.3.1".into()),
            sop_instance_uid: Some("1.2.3.1.1".into()),
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.7".into()),
            status: crate::report::Status::Screened,
            refused_by: None,
            top_class: Some("melanoma".into()),
            probabilities: vec![0.3, 0.7],
            flags: flags.iter().map(|f| f.to_string()).collect(),
            result_file: None,
        });
        study.aggregate(&names, "m");
        study
    }

    #[test]
    fn a_report_reads_back_and_the_same_result_gives_the_same_uid() {
        let names = ["benign".to_string(), "melanoma".to_string()];
        let model = ReportedModel {
            id: "m",
            sha256: "ab",
            verified: true,
            class_names: &names,
            thresholds: &[None, Some(0.5)],
        };
        let config = SrConfig::default();
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let first = study_report(&study(&["melanoma"]), &model, &config, at(1)).unwrap();
        let later = study_report(&study(&["melanoma"]), &model, &config, at(99)).unwrap();
        assert_eq!(first.sop_instance_uid, later.sop_instance_uid);
        let other = study_report(&study(&[]), &model, &config, at(1)).unwrap();
        assert_ne!(first.sop_instance_uid, other.sop_instance_uid);
        assert_eq!(
            first.series_uid, other.series_uid,
            "one series per study and model"
        );

        let obj = dicom_object::from_reader(&first.bytes[128..]).unwrap();
        let text = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(text(tags::SOP_INSTANCE_UID), first.sop_instance_uid);
        assert_eq!(text(tags::PATIENT_NAME), "Doe^Jane");
        assert_eq!(text(tags::COMPLETION_FLAG), "COMPLETE");
        let content = obj
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let value_type = |i: &InMemDicomObject| text_in(i, tags::VALUE_TYPE);
        let classes: Vec<_> = content
            .iter()
            .filter(|i| value_type(i) == "CONTAINER")
            .collect();
        assert_eq!(classes.len(), 2, "one container per class");
        assert_eq!(
            content.iter().filter(|i| value_type(i) == "IMAGE").count(),
            1
        );
        let melanoma = classes[1];
        let children = melanoma
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let measured = &children[0]
            .element(tags::MEASURED_VALUE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(text_in(measured, tags::NUMERIC_VALUE), "0.7000");
        assert_eq!(
            text_in(&children[1], tags::VALUE_TYPE),
            "NUM",
            "the threshold"
        );
        assert_eq!(text_in(&children[2], tags::TEXT_VALUE), "yes");
        let summary = text_in(&content[4], tags::TEXT_VALUE);
        assert!(summary.contains("Flagged: melanoma"), "{summary}");
    }

    fn text_in(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn content_date_and_time_are_dicom_da_and_tm() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_775_800);
        assert_eq!(date_time(t), ("20251203".into(), "153000".into()));
    }
}
