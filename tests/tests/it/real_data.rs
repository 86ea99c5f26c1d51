//! The end-to-end path on a slice of the real HAM10000 images. Skips, saying so, when the
//! shared data folder is absent.

use std::fmt::Write as _;

use crate::util::{assert_int8_tracks_fp32, compare_runtime_with_burn, run_pipeline, shared_data};

#[test]
fn ham10000_slice_pretrain_finetune_export_screen() {
    let Some(root) = shared_data() else {
        eprintln!("SKIP ham10000_slice_pretrain_finetune_export_screen: no ../shared/data/ham10000 (set SCANSIDE_DATA)");
        return;
    };
    let ham = root.join("ham10000");
    // A slice: the first 240 rows of metadata.csv, images linked from the real folder.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ham-slice");
    std::fs::create_dir_all(&data).unwrap();
    let csv = std::fs::read_to_string(ham.join("metadata.csv")).unwrap();
    let mut slice = String::new();
    for line in csv.lines().take(241) {
        writeln!(slice, "{line}").unwrap();
    }
    std::fs::write(data.join("metadata.csv"), slice).unwrap();
    std::os::unix::fs::symlink(
        ham.join("images").canonicalize().unwrap(),
        data.join("images"),
    )
    .unwrap();

    let out = tmp.path().join("run");
    let result = run_pipeline(&data, &out, 32, 6).unwrap();
    assert!(result.pretrain_losses.0.is_finite() && result.pretrain_losses.1.is_finite());
    assert!(
        result.export.max_abs_logit_diff <= 1e-4,
        "{:?}",
        result.export
    );
    let (max_diff, agree, n) = compare_runtime_with_burn(&data, &out, 6).unwrap();
    assert!(
        max_diff <= 1e-4,
        "runtime vs burn probabilities differ by {max_diff} on real images"
    );
    assert_eq!(agree, n);
    assert_int8_tracks_fp32(&data, &out, &result.export, 6);
}
