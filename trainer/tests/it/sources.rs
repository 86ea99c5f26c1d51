//! Each dataset reader on small generated files: folders of PNG (8/16-bit, gray/RGB), JPEG and
//! DICOM; CSV manifests (multi-class, joined multi-label, CheXpert columns); MedMNIST npz with
//! N, N×1 and N×K labels; the NIH layout; and the `data` commands on them.

use std::path::Path;

use scanside_runtime::fixtures::{write_dicom, DicomFixture};
use scanside_runtime::preprocess::PreprocessConfig;
use scanside_trainer::data::{
    finding_targets, load_images, load_images_with, make_split, open_dataset, open_split,
    CsvLabels, CsvSpec, Finding, Partition, SourceSpec, Target, Task, UncertaintyPolicy,
};

use crate::{stderr, train};

fn gray16_png(path: &Path, value: u16) {
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(5, 4, image::Luma([value]))
        .save(path)
        .unwrap();
}

fn rgb_png(path: &Path, level: u8) {
    image::RgbImage::from_pixel(6, 5, image::Rgb([level, level / 2, 10]))
        .save(path)
        .unwrap();
}

fn gray8_jpeg(path: &Path, level: u8) {
    image::GrayImage::from_pixel(8, 8, image::Luma([level]))
        .save(path)
        .unwrap();
}

fn dicom(path: &Path, patient: &str) {
    write_dicom(
        path,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &[0, 1000, 2000, 4095],
            rows: 2,
            cols: 2,
            window: None,
            patient_id: Some(patient),
            sop_instance_uid: None,
            study_uid: None,
        },
    );
}

fn rgb(size: u32) -> PreprocessConfig {
    PreprocessConfig::new(size, 3, vec![0.0; 3], vec![1.0; 3])
}

#[test]
fn a_folder_of_class_subfolders_reads_every_format_and_groups_dicom_by_patient() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("normal/nested")).unwrap();
    std::fs::create_dir_all(root.join("pneumonia")).unwrap();
    gray16_png(&root.join("normal/a.png"), 40_000);
    rgb_png(&root.join("normal/nested/b.png"), 200);
    gray8_jpeg(&root.join("normal/c.jpg"), 90);
    std::fs::write(root.join("normal/notes.txt"), "not an image").unwrap();
    dicom(&root.join("pneumonia/1.dcm"), "P7");
    dicom(&root.join("pneumonia/IM0002"), "P7"); // DICOM files often have no extension
    dicom(&root.join("pneumonia/3.dcm"), "P8");

    let index = open_dataset(root).unwrap();
    assert_eq!(index.class_names, ["normal", "pneumonia"]);
    assert_eq!(index.task, Task::MultiClass);
    assert_eq!(index.samples.len(), 6, "{:?}", index.samples);
    let group = |id: &str| {
        index
            .samples
            .iter()
            .find(|s| s.id == id)
            .unwrap()
            .group
            .clone()
    };
    assert_eq!(group("pneumonia/1.dcm"), group("pneumonia/IM0002"));
    assert_ne!(group("pneumonia/1.dcm"), group("pneumonia/3.dcm"));
    let all: Vec<usize> = (0..6).collect();
    let images = load_images(&index, &all, &rgb(4)).unwrap();
    assert_eq!(images.len(), 6);
    assert_eq!(images.class_labels().unwrap(), [0, 0, 0, 1, 1, 1]);
    // The 16-bit PNG kept its level: 40000 / 65535.
    assert!((images.image(0)[0] - 40_000.0 / 65_535.0).abs() < 1e-3);

    // An image outside any class folder is a clear error.
    gray8_jpeg(&root.join("stray.jpg"), 1);
    let e = open_dataset(root).unwrap_err().to_string();
    assert!(
        e.contains("stray.jpg") && e.contains("class sub-folder"),
        "{e}"
    );
}

fn csv_spec(path: &Path, labels: CsvLabels, uncertainty: UncertaintyPolicy) -> SourceSpec {
    SourceSpec::Csv(CsvSpec {
        path: path.to_path_buf(),
        image_root: None,
        path_column: "path".into(),
        path_template: "{}".into(),
        group_column: Some("patient".into()),
        labels,
        uncertainty,
    })
}

#[test]
fn csv_manifests_read_multi_class_joined_and_chexpert_labels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    for i in 0..4 {
        rgb_png(&dir.path().join(format!("img/{i}.png")), 50 * i as u8);
    }
    let manifest = dir.path().join("labels.csv");
    std::fs::write(
        &manifest,
        "path,patient,dx,findings,Edema,Effusion\n\
         img/0.png,p1,mel,Edema|Effusion,1,-1\n\
         img/1.png,p1,nv,No Finding,0,\n\
         img/2.png,p2,nv,Effusion,,1.0\n\
         img/3.png,p3,mel,Edema,-1.0,0\n",
    )
    .unwrap();

    let class = csv_spec(
        &manifest,
        CsvLabels::Class {
            column: "dx".into(),
            classes: None,
        },
        UncertaintyPolicy::UIgnore,
    )
    .open()
    .unwrap();
    assert_eq!(class.class_names, ["mel", "nv"]);
    assert_eq!(class.samples[1].target, Target::Class(1));
    assert_eq!(class.samples[0].group, class.samples[1].group);

    let joined = csv_spec(
        &manifest,
        CsvLabels::Joined {
            column: "findings".into(),
            separator: "|".into(),
            none_value: Some("No Finding".into()),
            classes: None,
        },
        UncertaintyPolicy::UIgnore,
    )
    .open()
    .unwrap();
    assert_eq!(joined.task, Task::MultiLabel);
    assert_eq!(joined.class_names, ["Edema", "Effusion"]);
    assert_eq!(
        joined.samples[1].target,
        Target::Findings(vec![Finding::Unmentioned, Finding::Unmentioned])
    );

    for policy in [
        UncertaintyPolicy::UOnes,
        UncertaintyPolicy::UZeros,
        UncertaintyPolicy::UIgnore,
    ] {
        let spec = csv_spec(
            &manifest,
            CsvLabels::Findings {
                columns: vec!["Edema".into(), "Effusion".into()],
            },
            policy,
        );
        let index = spec.open().unwrap();
        assert_eq!(index.uncertainty, policy);
        let Target::Findings(first) = &index.samples[0].target else {
            panic!("multi-label expected")
        };
        assert_eq!(first, &[Finding::Positive, Finding::Uncertain]);
        let (targets, mask) = finding_targets(first, index.uncertainty);
        let expected = match policy {
            UncertaintyPolicy::UOnes => (vec![1.0, 1.0], vec![1.0, 1.0]),
            UncertaintyPolicy::UZeros => (vec![1.0, 0.0], vec![1.0, 1.0]),
            UncertaintyPolicy::UIgnore => (vec![1.0, 0.0], vec![1.0, 0.0]),
        };
        assert_eq!((targets, mask), expected, "{policy:?}");
    }

    // A bad CheXpert value names the row and column.
    std::fs::write(
        &manifest,
        "path,patient,dx,findings,Edema,Effusion\nimg/0.png,p1,mel,Edema,yes,0\n",
    )
    .unwrap();
    let e = csv_spec(
        &manifest,
        CsvLabels::Findings {
            columns: vec!["Edema".into(), "Effusion".into()],
        },
        UncertaintyPolicy::UOnes,
    )
    .open()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("labels.csv") && e.contains("row 2") && e.contains("Edema"),
        "{e}"
    );
}

fn write_npz(path: &Path, labels: &[(&str, Vec<u64>, Vec<u8>)], images_shape: &[u64]) {
    use npyz::WriterBuilder;
    let mut npz = npyz::npz::NpzWriter::create(path).unwrap();
    let options = || zip::write::FileOptions::default();
    for (split, label_shape, label_values) in labels {
        let n = images_shape[0];
        let pixels: Vec<u8> = (0..images_shape.iter().product::<u64>())
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = npz
            .array::<u8>(&format!("{split}_images"), options())
            .unwrap()
            .default_dtype()
            .shape(images_shape)
            .begin_nd()
            .unwrap();
        w.extend(pixels).unwrap();
        w.finish().unwrap();
        assert_eq!(label_shape[0], n);
        let mut w = npz
            .array::<u8>(&format!("{split}_labels"), options())
            .unwrap()
            .default_dtype()
            .shape(label_shape)
            .begin_nd()
            .unwrap();
        w.extend(label_values.iter().copied()).unwrap();
        w.finish().unwrap();
    }
}

#[test]
fn medmnist_npz_reads_every_label_shape_and_size() {
    let dir = tempfile::tempdir().unwrap();
    // 1-D labels, 64 px grayscale.
    let flat = dir.path().join("breastmnist_64.npz");
    let parts = |shape: Vec<u64>, values: Vec<u8>| {
        vec![
            ("train", shape.clone(), values.clone()),
            ("val", shape.clone(), values.clone()),
            ("test", shape, values),
        ]
    };
    write_npz(&flat, &parts(vec![3], vec![0, 1, 1]), &[3, 64, 64]);
    let index = open_dataset(&flat).unwrap();
    assert_eq!(index.class_names, ["malignant", "normal_or_benign"]);
    assert_eq!(index.samples.len(), 9);
    // N×1 labels, RGB.
    let column = dir.path().join("dermamnist.npz");
    write_npz(&column, &parts(vec![2, 1], vec![6, 0]), &[2, 28, 28, 3]);
    let index = open_dataset(&column).unwrap();
    assert_eq!(index.class_names.len(), 7);
    assert_eq!(index.samples[0].target, Target::Class(6));
    let split = make_split(&index, 0, [0.7, 0.15, 0.15]).unwrap();
    assert_eq!(split.grouped_by, "official");
    let images = load_images(&index, &[0, 1], &rgb(28)).unwrap();
    assert_eq!(images.len(), 2);
    // N×K multi-label (ChestMNIST style).
    let multi = dir.path().join("chestmnist.npz");
    write_npz(
        &multi,
        &parts(vec![2, 14], (0..28).map(|i| u8::from(i % 5 == 0)).collect()),
        &[2, 28, 28],
    );
    let index = open_dataset(&multi).unwrap();
    assert_eq!(index.task, Task::MultiLabel);
    assert_eq!(index.class_names[1], "Cardiomegaly");
    assert_eq!(index.samples[0].target.present(), vec![0, 5, 10]);
}

#[test]
fn the_nih_layout_is_multi_label_and_grouped_by_patient() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    let mut csv = String::from("image,patient_id,follow_up,finding_labels,age,sex,view\n");
    for i in 0..12 {
        let name = format!("images/{i:08}_000.png");
        rgb_png(&dir.path().join(&name), i as u8 * 20);
        let labels = ["No Finding", "Effusion|Mass", "Hernia"][i % 3];
        csv += &format!("{name},{},0,{labels},50,M,PA\n", i / 2);
    }
    std::fs::write(dir.path().join("labels.csv"), csv).unwrap();
    let index = open_dataset(dir.path()).unwrap();
    assert_eq!(index.task, Task::MultiLabel);
    assert_eq!(index.class_names.len(), 14);
    assert_eq!(index.grouped_by, "patient_id");
    assert_eq!(index.samples[1].target.present(), vec![2, 4]);
    let split = make_split(&index, 1, [0.5, 0.25, 0.25]).unwrap();
    let path = dir.path().join("split.json");
    scanside_trainer::runlog::save_json(&path, &split).unwrap();
    // Later commands reopen the data from the split file alone.
    let (reopened, again) = open_split(&path, None).unwrap();
    assert_eq!(reopened.samples.len(), 12);
    assert_eq!(again, split);
    let _ = Partition::Train;
}

#[test]
fn skip_bad_leaves_unreadable_images_out_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    rgb_png(&dir.path().join("a/good.png"), 10);
    std::fs::write(dir.path().join("a/broken.png"), b"\x89PNG\r\n\x1a\n trunc").unwrap();
    let index = open_dataset(dir.path()).unwrap();
    let all: Vec<usize> = (0..2).collect();
    let e = load_images(&index, &all, &rgb(4)).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");
    let set = load_images_with(&index, &all, &rgb(4), true).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.skipped.len(), 1);
    assert!(set.skipped[0].contains("broken.png"), "{:?}", set.skipped);
}

#[test]
fn data_check_reports_problems_and_exits_1_and_preview_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["x", "y"] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        for i in 0..10 {
            rgb_png(
                &dir.path().join(format!("{class}/{i}.png")),
                if class == "x" { i * 10 } else { 100 + i * 10 },
            );
        }
    }
    let data = dir.path().to_str().unwrap();
    let out = train(&["data", "check", "--data", data]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("check passed"), "{report}");

    // An unreadable file and an exact copy of an image in the other class.
    std::fs::write(dir.path().join("x/bad.png"), b"nope").unwrap();
    std::fs::copy(dir.path().join("x/3.png"), dir.path().join("y/copy.png")).unwrap();
    let json = dir.path().join("report.json");
    let out = train(&[
        "data",
        "check",
        "--data",
        data,
        "--report",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("x/bad.png") && report.contains("check FAILED"),
        "{report}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(json["unreadable"].as_array().unwrap().len(), 1);
    std::fs::remove_file(dir.path().join("x/bad.png")).unwrap();

    let grid = dir.path().join("preview.png");
    let out = train(&[
        "data",
        "preview",
        "--data",
        data,
        "--preset",
        "cxr",
        "--images",
        "3",
        "--views",
        "4",
        "--size",
        "16",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let png = image::open(&grid).unwrap();
    assert_eq!((png.width(), png.height()), (5 * 18 + 2, 3 * 18 + 2));
}

#[test]
fn csv_options_are_checked_as_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, "path,dx\n").unwrap();
    let m = manifest.to_str().unwrap();
    let out = train(&["data", "split", "--data", m, "--out", "/tmp/never.json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--path-column"), "{}", stderr(&out));
    let out = train(&[
        "data",
        "split",
        "--data",
        dir.path().to_str().unwrap(),
        "--label-column",
        "dx",
        "--out",
        "/tmp/never.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = train(&[
        "data",
        "split",
        "--data",
        m,
        "--path-column",
        "path",
        "--out",
        "/tmp/never.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--label-column or --finding-columns"));
}
