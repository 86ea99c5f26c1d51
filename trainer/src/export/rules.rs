//! The bundle's input rules: derived from a sample of the training images (content channels —
//! grey stored as RGB counts as grey, as the runtime counts it —, the
//! smallest side, and for DICOM the attributes seen), with what a source is known to hold
//! where its images are not DICOM (HAM10000 is dermoscopy; the NIH sample chest radiographs),
//! then `--accept` laid over them.

use std::collections::BTreeSet;

use scanside_runtime::bundle::guard::{AttributeRule, DicomAttribute, InputRules};
use scanside_runtime::decode::{self, DicomAttributes, FileFormat};

use crate::config::AcceptSetting;
use crate::data::{spread, DatasetIndex, ImageRef, SourceSpec};
use crate::Result;

/// Training images whose headers and sizes the derived rules are read from.
const SAMPLED_IMAGES: usize = 64;

/// The input rules of a model trained on `train` (indices into `index`) taking `input_side`
/// pixels, with `accept` laid over them; `None` after `--accept any`.
pub fn input_rules(
    index: &DatasetIndex,
    train: &[usize],
    input_side: u32,
    accept: &[AcceptSetting],
) -> Result<Option<InputRules>> {
    if accept.contains(&AcceptSetting::Any) {
        return Ok(None);
    }
    let mut rules = derive(index, &spread(train, SAMPLED_IMAGES), input_side)?;
    for setting in accept {
        overlay(&mut rules, setting);
    }
    Ok(Some(rules))
}

/// The rules `--accept` names alone, for a model trained elsewhere (its training images are
/// not known); `None` when it names none or says `any`.
pub fn accepted_only(accept: &[AcceptSetting]) -> Option<InputRules> {
    if accept.is_empty() || accept.contains(&AcceptSetting::Any) {
        return None;
    }
    let mut rules = InputRules {
        derived_from: Some("--accept".into()),
        ..InputRules::default()
    };
    for setting in accept {
        overlay(&mut rules, setting);
    }
    rules.derived_from = Some("--accept".into());
    Some(rules)
}

/// What the sampled training images show.
fn derive(index: &DatasetIndex, sample: &[usize], input_side: u32) -> Result<InputRules> {
    let mut channels = BTreeSet::new();
    let mut shortest = u32::MAX;
    let mut dicom = Vec::new();
    for &i in sample {
        if let ImageRef::File(path) = &index.samples[i].image {
            let bytes = scanside_runtime::persist::read(path)?;
            if decode::sniff(&bytes) == Some(FileFormat::Dicom) {
                dicom.push(decode::dicom_attributes_from_bytes(path, &bytes)?);
            }
        }
        let image = index.decode(i)?;
        channels.insert(image.content_channels());
        shortest = shortest.min(image.width.min(image.height));
    }
    let min_side = (shortest / 2).min(input_side).max(1);
    let (dicom_rules, dicom_note) = if dicom.is_empty() {
        known_modalities(&index.source)
    } else {
        (
            seen_attributes(&dicom),
            format!("the attributes of {} DICOM files", dicom.len()),
        )
    };
    let kinds: Vec<&str> = channels
        .iter()
        .map(|&c| if c == 1 { "grey" } else { "colour" })
        .collect();
    Ok(InputRules {
        dicom: dicom_rules,
        channels: channels.into_iter().collect(),
        min_side: Some(min_side),
        derived_from: Some(format!(
            "{} training images ({}; shortest side {shortest} px; model input {input_side} px); \
             DICOM rules from {dicom_note}",
            sample.len(),
            kinds.join(" and "),
        )),
    })
}

/// Rules from DICOM training files: the Modality, Body Part Examined and Photometric
/// Interpretation values seen (a file lacking Body Part Examined lets others lack it too).
fn seen_attributes(files: &[DicomAttributes]) -> Vec<AttributeRule> {
    let rule = |attribute, value: fn(&DicomAttributes) -> Option<&String>| {
        let seen: BTreeSet<String> = files.iter().filter_map(value).cloned().collect();
        (!seen.is_empty()).then(|| AttributeRule {
            attribute,
            accept: seen.into_iter().collect(),
            allow_missing: files.iter().any(|f| value(f).is_none()),
        })
    };
    [
        rule(DicomAttribute::Modality, |f| f.modality.as_ref()),
        rule(DicomAttribute::BodyPartExamined, |f| {
            f.body_part_examined.as_ref()
        }),
        rule(DicomAttribute::PhotometricInterpretation, |f| {
            f.photometric_interpretation.as_ref()
        }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What a source's images would be as DICOM when they are not DICOM: dermoscopy (Modality XC,
/// external-camera photography, or DMS, dermoscopy) for HAM10000, chest radiographs (CR or
/// DX, body part CHEST where given) for the NIH sample; nothing for other sources.
fn known_modalities(source: &SourceSpec) -> (Vec<AttributeRule>, String) {
    let modality = |values: &[&str]| AttributeRule {
        attribute: DicomAttribute::Modality,
        accept: values.iter().map(|v| v.to_string()).collect(),
        allow_missing: false,
    };
    match source {
        SourceSpec::Ham10000 { .. } => (
            vec![modality(&["XC", "DMS"])],
            "the source: HAM10000 is dermoscopy".into(),
        ),
        SourceSpec::NihCxr { .. } => (
            vec![
                modality(&["CR", "DX"]),
                AttributeRule {
                    attribute: DicomAttribute::BodyPartExamined,
                    accept: vec!["CHEST".into()],
                    allow_missing: true,
                },
            ],
            "the source: NIH ChestX-ray14 is chest radiography".into(),
        ),
        _ => (
            Vec::new(),
            "nothing (no DICOM training files; set them with --accept)".into(),
        ),
    }
}

/// Lays one `--accept` setting over the rules.
fn overlay(rules: &mut InputRules, setting: &AcceptSetting) {
    match setting {
        AcceptSetting::Any => {}
        AcceptSetting::Channels(channels) => rules.channels = channels.clone(),
        AcceptSetting::MinSide(side) => rules.min_side = *side,
        AcceptSetting::Attribute {
            attribute,
            values,
            allow_missing,
        } => {
            rules.dicom.retain(|r| r.attribute != *attribute);
            if !values.is_empty() {
                rules.dicom.push(AttributeRule {
                    attribute: *attribute,
                    accept: values.clone(),
                    allow_missing: *allow_missing,
                });
            }
        }
    }
    let note = "; --accept laid over them";
    if let Some(from) = &mut rules.derived_from {
        if !from.ends_with(note) {
            from.push_str(note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(modality: &str, body_part: Option<&str>) -> DicomAttributes {
        DicomAttributes {
            modality: Some(modality.into()),
            body_part_examined: body_part.map(String::from),
            photometric_interpretation: Some("MONOCHROME2".into()),
            ..DicomAttributes::default()
        }
    }

    #[test]
    fn dicom_training_files_give_the_values_seen_and_tolerate_what_some_lacked() {
        let rules = seen_attributes(&[
            attributes("CR", Some("CHEST")),
            attributes("DX", None),
            attributes("CR", Some("CHEST")),
        ]);
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].accept, vec!["CR".to_string(), "DX".to_string()]);
        assert!(!rules[0].allow_missing);
        assert_eq!(rules[1].accept, vec!["CHEST".to_string()]);
        assert!(rules[1].allow_missing);
        assert_eq!(rules[2].accept, vec!["MONOCHROME2".to_string()]);
    }

    #[test]
    fn accept_replaces_the_derived_rule_of_its_kind_and_star_drops_it() {
        let (dicom, _) = known_modalities(&SourceSpec::Ham10000 { path: "ham".into() });
        let mut rules = InputRules {
            dicom,
            channels: vec![3],
            min_side: Some(64),
            derived_from: Some("sample".into()),
        };
        for text in [
            "Modality=XC,OT",
            "channels=1,3",
            "min-side=*",
            "ViewPosition=PA,AP,(missing)",
        ] {
            overlay(&mut rules, &AcceptSetting::parse(text).unwrap());
        }
        assert_eq!(
            rules.dicom[0].accept,
            vec!["XC".to_string(), "OT".to_string()]
        );
        assert!(rules.dicom[1].allow_missing && rules.dicom[1].accept.len() == 2);
        assert_eq!((rules.channels.clone(), rules.min_side), (vec![1, 3], None));
        overlay(&mut rules, &AcceptSetting::parse("Modality=*").unwrap());
        assert_eq!(rules.dicom.len(), 1);
        assert!(rules.validate().is_ok());
        assert!(rules
            .derived_from
            .unwrap()
            .ends_with("--accept laid over them"));
    }

    #[test]
    fn accept_values_that_mean_nothing_are_refused_with_the_reason() {
        for (text, said) in [
            ("Modality", "KEY=VALUE"),
            ("channels=2", "1, 3"),
            ("min-side=0", "positive"),
            ("Colour=red", "not a rule"),
            ("Modality=", "at least one"),
        ] {
            let err = AcceptSetting::parse(text).unwrap_err();
            assert!(err.contains(said), "{text}: {err}");
        }
        assert_eq!(AcceptSetting::parse("any"), Ok(AcceptSetting::Any));
    }
}
