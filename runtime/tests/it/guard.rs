//! The bundle's guards as a user meets them: inputs a model is not for are `not_applicable`
//! (the rule named, no probabilities, no flags), inputs beyond the out-of-distribution threshold
//! keep their probabilities but raise no flag, and both are counted, not failed.

use scanside_runtime::bundle::guard::{
    AttributeRule, DicomAttribute, InputRules, OodGuard, OodScore,
};
use scanside_runtime::bundle::Calibration;

use crate::util::{
    scanside_command, screen_signed, write_dicom, write_linear_bundle_edited, write_png,
};

#[test]
fn inputs_failing_the_input_rules_are_not_applicable_with_the_rule_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_edited(&bundle, |m| {
        m.input_rules = Some(InputRules {
            dicom: vec![AttributeRule {
                attribute: DicomAttribute::Modality,
                accept: vec!["XC".into(), "DMS".into()],
                allow_missing: false,
            }],
            channels: vec![3],
            min_side: Some(5),
            derived_from: None,
        })
    });
    let colour = dir.path().join("colour.png");
    image::RgbImage::from_pixel(9, 7, image::Rgb([250, 200, 170]))
        .save(&colour)
        .unwrap();
    // Grey stored as RGB, as chest films often are, is grey too.
    let grey_rgb = dir.path().join("grey-rgb.png");
    write_png(&grey_rgb, 240);
    let grey = dir.path().join("grey.png");
    image::GrayImage::from_pixel(9, 7, image::Luma([240]))
        .save(&grey)
        .unwrap();
    let small = dir.path().join("small.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([250, 200, 170]))
        .save(&small)
        .unwrap();
    let chest = dir.path().join("chest.dcm");
    write_dicom(&chest, "MONOCHROME2", &[4000; 64], 8, 8, None);
    let (out, lines) = screen_signed(&bundle, &[], &[&colour, &grey, &small, &chest, &grey_rgb]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4 of 5 images not applicable"), "{stderr}");
    let status: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        [
            "screened",
            "not_applicable",
            "not_applicable",
            "not_applicable",
            "not_applicable"
        ]
    );
    assert_eq!(lines[0]["top_class"], "bright");
    let refused_by = |i: usize| lines[i]["refused_by"].as_str().unwrap().to_string();
    assert!(refused_by(1).contains("grey"), "{}", refused_by(1));
    assert!(refused_by(2).contains("4×4"), "{}", refused_by(2));
    assert!(
        refused_by(3).contains("Modality \"CR\""),
        "{}",
        refused_by(3)
    );
    assert!(refused_by(4).contains("grey"), "{}", refused_by(4));
    for refused in &lines[1..] {
        assert!(refused.get("probabilities").is_none() && refused.get("top_class").is_none());
        assert_eq!(refused["flags"], serde_json::json!([]));
        assert_eq!(refused["model_verified"], true);
    }
    // The CR file was refused from its header: its pixels were never decoded.
    assert_eq!(lines[3]["source"]["windowing"], "not decoded (input rule)");
}

#[test]
fn an_input_beyond_the_ood_threshold_keeps_its_probabilities_and_raises_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_edited(&bundle, |m| {
        m.calibration = Some(Calibration {
            temperature: 1.0,
            target_sensitivity: 0.9,
            thresholds: vec![Some(0.45), Some(0.45)],
        });
        // Energy of the fixture's logits: -0.785 for a near-white image, -0.693 (= -ln 2)
        // for mid-grey, where neither class stands out.
        m.ood = Some(OodGuard {
            score: OodScore::Energy,
            threshold: -0.74,
            target_false_rejection: 0.01,
            fitted_on_images: 100,
        });
    });
    let (white, grey) = (dir.path().join("white.png"), dir.path().join("grey.png"));
    write_png(&white, 240);
    write_png(&grey, 128);
    let (out, lines) = screen_signed(&bundle, &[], &[&white, &grey]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 out of distribution"), "{stderr}");
    assert_eq!(lines[0]["status"], "screened");
    assert_eq!(lines[0]["flags"], serde_json::json!(["bright"]));
    assert!(lines[0]["ood"]["score"].as_f64().unwrap() < -0.74);
    assert_eq!(lines[1]["status"], "out_of_distribution");
    assert_eq!(lines[1]["flags"], serde_json::json!([]));
    let p = &lines[1]["probabilities"];
    assert!(
        (p["dark"].as_f64().unwrap() - 0.5).abs() < 0.01,
        "{}",
        lines[1]
    );
    let score = lines[1]["ood"]["score"].as_f64().unwrap();
    assert!((score + 2f64.ln()).abs() < 0.01, "{}", lines[1]);
    assert_eq!(lines[1]["ood"]["threshold"].as_f64().unwrap() as f32, -0.74);
}

#[test]
fn a_bundle_with_rules_that_accept_nothing_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_edited(&bundle, |m| {
        m.input_rules = Some(InputRules::default());
    });
    let manifest = bundle.join("manifest.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    value["input_rules"]["dicom"] = serde_json::json!([{ "attribute": "Modality", "accept": [] }]);
    std::fs::write(&manifest, serde_json::to_vec(&value).unwrap()).unwrap();
    let out = scanside_command()
        .args(["screen", "--allow-unsigned", "--bundle"])
        .arg(&bundle)
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Modality needs at least one"), "{stderr}");
}
