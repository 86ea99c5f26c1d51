//! The `scanside-train` binary on bad input: one clear line naming the thing and the problem,
//! exit 1 for failures and 2 for usage errors, and nothing half-written left behind.

mod imagenet;
mod pretrain;
mod sources;
mod split;

use std::path::Path;
use std::process::{Command, Output};

pub(crate) fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scanside-train"))
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_ham(dir: &Path, header: &str, rows: &[&str]) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut csv = format!("{header}\n");
    for row in rows {
        csv += row;
        csv += "\n";
        let id = row.split(',').nth(1).unwrap();
        image::RgbImage::from_pixel(8, 6, image::Rgb([90, 40, 30]))
            .save(dir.join(format!("images/{id}.jpg")))
            .unwrap();
    }
    std::fs::write(dir.join("metadata.csv"), csv).unwrap();
}

#[test]
fn a_missing_dataset_is_named_and_exit_is_1() {
    let out = train(&[
        "data",
        "split",
        "--data",
        "/no/such/ham",
        "--out",
        "/tmp/never.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/ham: does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_class_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_ham(dir.path(), "lesion_id,image_id,diagnosis", &["L1,I1,nv"]);
    let split = dir.path().join("split.json");
    let out = train(&[
        "data",
        "split",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        split.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("metadata.csv") && err.contains("no column \"dx\""),
        "{err}"
    );
    assert!(!split.exists(), "a split was written for bad data");
}

#[test]
fn an_unknown_label_and_an_empty_dataset_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_ham(dir.path(), "lesion_id,image_id,dx", &["L1,I1,wart"]);
    let out = train(&[
        "data",
        "split",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        "/tmp/x.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("dx \"wart\" is not a known class"),
        "{}",
        stderr(&out)
    );

    let empty = tempfile::tempdir().unwrap();
    write_ham(empty.path(), "lesion_id,image_id,dx", &[]);
    let out = train(&[
        "data",
        "split",
        "--data",
        empty.path().to_str().unwrap(),
        "--out",
        "/tmp/x.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("lists no images"), "{}", stderr(&out));
}

#[test]
fn a_truncated_image_is_named_when_training_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..30)
        .map(|i| format!("L{i},I{i},{}", if i % 2 == 0 { "nv" } else { "mel" }))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    write_ham(dir.path(), "lesion_id,image_id,dx", &rows);
    // Truncate every image so whichever lands in train is broken. Splitting reads no pixels.
    for i in 0..30 {
        let p = dir.path().join(format!("images/I{i}.jpg"));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    }
    let split = dir.path().join("split.json");
    let data = dir.path().to_str().unwrap();
    assert!(train(&[
        "data",
        "split",
        "--data",
        data,
        "--out",
        split.to_str().unwrap()
    ])
    .status
    .success());
    let run = dir.path().join("pre");
    let out = train(&[
        "pretrain",
        "--data",
        data,
        "--split",
        split.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--batch-size",
        "4",
        "--max-steps",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(".jpg: cannot decode image"), "{err}");
    assert!(!run.join("backbone.mpk").exists());
}

#[test]
fn finetune_without_a_starting_point_and_unknown_flags_are_usage_errors() {
    let out = train(&["finetune", "--data", "d", "--split", "s", "--out", "o"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = train(&["pretrain", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = train(&["evaluate", "--run", "r", "--split", "holdout"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown split"), "{}", stderr(&out));
}

#[test]
fn a_split_made_for_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_ham(
        dir.path(),
        "lesion_id,image_id,dx",
        &["L1,I1,nv", "L2,I2,mel", "L3,I3,nv"],
    );
    let split = dir.path().join("split.json");
    let data = dir.path().to_str().unwrap();
    assert!(train(&[
        "data",
        "split",
        "--data",
        data,
        "--out",
        split.to_str().unwrap()
    ])
    .status
    .success());
    // The data changes after the split was made: an image is replaced.
    image::RgbImage::from_pixel(9, 9, image::Rgb([1, 2, 3]))
        .save(dir.path().join("images/I2.jpg"))
        .unwrap();
    let pre = dir.path().join("pre");
    let out = train(&[
        "pretrain",
        "--data",
        data,
        "--split",
        split.to_str().unwrap(),
        "--out",
        pre.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("split was made for different data"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn evaluating_a_directory_that_is_not_a_run_names_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["evaluate", "--run", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
}

/// Completions and man pages come from the same clap definitions as the parser.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = train(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in [
        "scanside-train",
        "pretrain",
        "export",
        "label-efficiency",
        "--partition",
    ] {
        assert!(script.contains(word), "completion script lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "scanside-train.1",
        "scanside-train-export.1",
        "scanside-train-data-split.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let export = std::fs::read_to_string(dir.path().join("scanside-train-export.1")).unwrap();
    assert!(
        export.contains("Examples"),
        "the man page lacks the --help examples"
    );
}
