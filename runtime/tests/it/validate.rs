//! `scanside validate`: a site's labelled images against the bundle's own evaluation.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use scanside_runtime::bundle::Calibration;

use crate::util::{scanside_command, write_linear_bundle_edited, write_png};

/// A bundle that flags each class at 0.5, recording a test macro AUC of 0.95 [0.90, 0.99].
fn recorded_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    write_linear_bundle_edited(&bundle, |m| {
        m.calibration = Some(Calibration {
            temperature: 1.0,
            target_sensitivity: 0.9,
            thresholds: vec![Some(0.5), Some(0.5)],
        });
        m.provenance.evaluation = Some(serde_json::json!({
            "partition": "test",
            "metrics": { "per_class_auc": [0.95, 0.95] },
            "intervals": { "macro_auc": { "estimate": 0.95, "low": 0.90, "high": 0.99 } },
        }));
    });
    bundle
}

/// 12 dark and 12 bright PNGs, two per patient; returns (path, class, patient) rows.
fn site_images(dir: &Path) -> Vec<(PathBuf, &'static str, String)> {
    let mut rows = Vec::new();
    for (class, levels) in [("dark", 10u8..22), ("bright", 200u8..212)] {
        fs::create_dir_all(dir.join(class)).unwrap();
        for (i, level) in levels.enumerate() {
            let path = dir.join(class).join(format!("{class}{i:02}.png"));
            write_png(&path, level);
            rows.push((path, class, format!("{class}-patient{}", i / 2)));
        }
    }
    rows
}

fn run_validate(bundle: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = scanside_command()
        .arg("validate")
        .arg("--bundle")
        .arg(bundle)
        .arg("--public-key")
        .arg(bundle.with_extension("pub"))
        .args(["--resamples", "200"])
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn write_csv(path: &Path, rows: &[(PathBuf, &str, String)], swap: bool) {
    let mut text = String::from("path,label,group\n");
    for (file, class, group) in rows {
        let class = match (swap, *class) {
            (true, "dark") => "bright",
            (true, _) => "dark",
            (false, c) => c,
        };
        let relative = file.strip_prefix(path.parent().unwrap()).unwrap();
        text += &format!("{},{class},{group}\n", relative.display());
    }
    fs::write(path, text).unwrap();
}

#[test]
fn a_site_where_the_model_works_passes_with_intervals_by_patient_and_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = recorded_bundle(dir.path());
    let site = dir.path().join("site");
    let rows = site_images(&site);
    let html = dir.path().join("acceptance.html");
    let (out, report) = run_validate(
        &bundle,
        &[
            "--data",
            site.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(report["images"], 24);
    assert_eq!(report["screened"], 24);
    assert_eq!(report["macro_auc"]["estimate"], 1.0);
    assert_eq!(report["passed"], true);
    let checks = report["checks"].as_array().unwrap();
    // macro AUC, and per class its AUC and its sensitivity at the threshold.
    assert_eq!(checks.len(), 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true));
    let bright = &report["classes"][1];
    assert_eq!(bright["sensitivity"]["estimate"], 1.0);
    assert_eq!(bright["specificity"]["estimate"], 1.0);
    let page = fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("passed") && page.contains("<polyline"),
        "{page}"
    );

    // By patient from a CSV: 12 groups of two images, not 24 singletons.
    let csv = site.join("labels.csv");
    write_csv(&csv, &rows, false);
    let (out, report) = run_validate(&bundle, &["--data", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(report["groups"], 12);
}

#[test]
fn a_site_where_the_model_fails_is_refused_naming_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = recorded_bundle(dir.path());
    let site = dir.path().join("site");
    let rows = site_images(&site);
    // The same images with every label swapped: the model is wrong on each.
    let csv = site.join("swapped.csv");
    write_csv(&csv, &rows, true);
    let (out, report) = run_validate(&bundle, &["--data", csv.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["macro_auc"]["estimate"], 0.0);
    assert!(
        stderr.contains("macro_auc") && stderr.contains("sensitivity[dark]"),
        "{stderr}"
    );
}

#[test]
fn labels_the_model_does_not_know_and_bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = recorded_bundle(dir.path());
    let site = dir.path().join("site");
    site_images(&site);
    fs::create_dir_all(site.join("melanoma")).unwrap();
    write_png(&site.join("melanoma").join("m.png"), 90);
    let (out, _) = run_validate(&bundle, &["--data", site.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("melanoma") && stderr.contains("not a class"),
        "{stderr}"
    );

    let csv = dir.path().join("bad.csv");
    fs::write(&csv, "path,label\nsite/dark/dark00.png,dark\nsite/x.png,\n").unwrap();
    let (out, _) = run_validate(&bundle, &["--data", csv.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.csv") && stderr.contains("line 3"),
        "{stderr}"
    );

    let (out, _) = run_validate(&bundle, &["--data", csv.to_str().unwrap(), "--margin", "2"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
