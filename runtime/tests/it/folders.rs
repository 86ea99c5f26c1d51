//! Folders and studies in: `screen` walks folders (hidden entries and non-images skipped),
//! follows DICOMDIR files, and folds DICOM studies with `--by-study` as `watch` does.

use std::fs;
use std::path::Path;

use scanside_runtime::fixtures::{write_dicom, write_dicomdir, DicomFixture};

use crate::util::{screen_signed, write_linear_bundle, write_png};

fn instance(path: &Path, value: u16, study: &str, uid: &str) {
    write_dicom(
        path,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &[value; 16],
            rows: 4,
            cols: 4,
            window: Some((2048.0, 4096.0)),
            patient_id: Some("PAT-9"),
            sop_instance_uid: Some(uid),
            study_uid: Some(study),
        },
    );
}

#[test]
fn a_folder_is_walked_in_name_order_skipping_hidden_entries_and_non_images() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let data = dir.path().join("holdout");
    fs::create_dir_all(data.join("b/nested")).unwrap();
    fs::create_dir_all(data.join(".cache")).unwrap();
    write_png(&data.join("b/nested/2.png"), 200);
    write_png(&data.join("a.png"), 30);
    write_png(&data.join(".hidden.png"), 30);
    write_png(&data.join(".cache/c.png"), 30);
    fs::write(data.join("notes.txt"), "not an image").unwrap();
    let (out, lines) = screen_signed(&bundle, &[], &[&data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files[0].ends_with("a.png") && files[1].ends_with("b/nested/2.png"),
        "{files:?}"
    );
    assert!(
        stderr.contains("1 file(s)") && stderr.contains("notes.txt"),
        "{stderr}"
    );

    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let (out, _) = screen_signed(&bundle, &[], &[&empty]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image found"));
}

#[test]
fn a_dicomdir_is_followed_to_its_instances_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let media = dir.path().join("cd");
    fs::create_dir_all(media.join("dicom")).unwrap();
    let study = "1.2.826.0.1.3680043.2.1125.5";
    // Written in lower case, referenced in upper case, as media copied off a CD often are.
    instance(
        &media.join("dicom/im1"),
        100,
        study,
        "1.2.826.0.1.3680043.2.1125.5.1",
    );
    instance(
        &media.join("dicom/im2"),
        4000,
        study,
        "1.2.826.0.1.3680043.2.1125.5.2",
    );
    write_dicomdir(
        &media.join("DICOMDIR"),
        &[&["DICOM", "IM1"], &["DICOM", "IM2"], &["DICOM", "IM3"]],
    );
    let (out, lines) = screen_signed(&bundle, &[], &[&media.join("DICOMDIR")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(lines.len(), 2);
    assert!(
        stderr.contains("IM3") && stderr.contains("1 of 3 images failed"),
        "{stderr}"
    );
    // The folder holding it: the DICOMDIR replaces the walk's own finds, once each.
    let (_, lines) = screen_signed(&bundle, &[], &[&media]);
    assert_eq!(lines.len(), 2, "{lines:?}");
}

#[test]
fn by_study_folds_each_studys_instances_after_the_image_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let data = dir.path().join("studies");
    fs::create_dir_all(&data).unwrap();
    let (first, second) = (
        "1.2.826.0.1.3680043.2.1125.6",
        "1.2.826.0.1.3680043.2.1125.7",
    );
    instance(
        &data.join("s1-dark.dcm"),
        100,
        first,
        "1.2.826.0.1.3680043.2.1125.6.1",
    );
    instance(
        &data.join("s1-bright.dcm"),
        4000,
        first,
        "1.2.826.0.1.3680043.2.1125.6.2",
    );
    instance(
        &data.join("s2.dcm"),
        100,
        second,
        "1.2.826.0.1.3680043.2.1125.7.1",
    );
    write_png(&data.join("photo.png"), 200);
    let (out, lines) = screen_signed(&bundle, &["--by-study"], &[&data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(lines.len(), 4 + 2);
    let study = &lines[4];
    assert_eq!(study["study_uid"], first);
    assert_eq!(study["screened"], 2);
    assert_eq!(study["instances"].as_array().unwrap().len(), 2);
    // Per class the highest probability over the instances: both classes high.
    let dark_max = lines[..4]
        .iter()
        .filter(|l| l["file"].as_str().unwrap().contains("s1-"))
        .map(|l| l["probabilities"]["dark"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(study["probabilities"]["dark"].as_f64().unwrap(), dark_max);
    assert_eq!(lines[5]["study_uid"], second);
    assert!(
        stderr.contains("1 of 4 images belong to no DICOM study"),
        "{stderr}"
    );

    let (_, only) = screen_signed(&bundle, &["--studies-only"], &[&data]);
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|l| l.get("study_uid").is_some()));
}
