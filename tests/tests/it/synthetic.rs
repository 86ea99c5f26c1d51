//! The end-to-end path on images this test draws itself, so it always runs (no real data
//! needed). It proves plumbing and equivalence, not learning quality.

use std::fmt::Write as _;
use std::path::Path;

use crate::util::{assert_int8_tracks_fp32, compare_runtime_with_burn, run_pipeline, trusted};

/// Writes a HAM10000-style folder: two classes (bright disc "mel" vs faint ring "nv") on a
/// textured background, 2 images per lesion.
fn write_synthetic_ham(dir: &Path, lesions: usize) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut csv = String::from("lesion_id,image_id,dx,dx_type,age,sex,localization\n");
    for lesion in 0..lesions {
        let dx = if lesion % 2 == 0 { "mel" } else { "nv" };
        for view in 0..2 {
            let id = format!("SYN_{lesion:04}_{view}");
            let img = image::RgbImage::from_fn(40, 30, |x, y| {
                let (dx_, dy_) = (x as f32 - 20.0 - view as f32, y as f32 - 15.0);
                let r = (dx_ * dx_ + dy_ * dy_).sqrt();
                let texture = ((x * 7 + y * 13 + lesion as u32 * 5) % 23) as u8;
                let lesion_px = if dx == "mel" {
                    r < 8.0
                } else {
                    (6.0..8.0).contains(&r)
                };
                if lesion_px {
                    image::Rgb([60 + texture, 30, 20])
                } else {
                    image::Rgb([200 + texture / 2, 160, 140])
                }
            });
            img.save(dir.join("images").join(format!("{id}.jpg")))
                .unwrap();
            writeln!(csv, "L{lesion:04},{id},{dx},histo,50,male,back").unwrap();
        }
    }
    std::fs::write(dir.join("metadata.csv"), csv).unwrap();
}

#[test]
fn synthetic_images_travel_pretrain_finetune_export_screen() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_ham(&data, 40);
    let out = tmp.path().join("run");
    let result = run_pipeline(&data, &out, 16, 12).unwrap();
    assert!(
        result.export.max_abs_logit_diff <= 1e-4,
        "{:?}",
        result.export
    );
    assert_evaluation_is_complete(&result.test);
    // The evaluation's temperature and thresholds travel in the bundle.
    assert!(result.export.signed_by.is_some());
    let manifest = scanside_runtime::bundle::Bundle::load(&result.bundle, &trusted(&out).unwrap())
        .unwrap()
        .manifest;
    let calibration = manifest.calibration.expect("calibration in the bundle");
    assert_eq!(
        f64::from(calibration.temperature),
        f64::from(result.test.calibration.as_ref().unwrap().temperature as f32)
    );
    assert_eq!(calibration.thresholds.len(), manifest.class_names.len());
    let (max_diff, agree, n) = compare_runtime_with_burn(&data, &out, 8).unwrap();
    assert!(
        max_diff <= 1e-4,
        "runtime vs burn probabilities differ by {max_diff}"
    );
    assert_eq!(agree, n, "top classes disagree");
    assert_int8_tracks_fp32(&data, &out, &result.export, 8);
    // CI hands this bundle to onnxruntime (tools/check_onnx.py) for an independent check.
    if let Some(dest) = std::env::var_os("SCANSIDE_EXPORT_FIXTURE") {
        write_onnxruntime_fixture(&data, &out, Path::new(&dest)).unwrap();
    }
}

/// The report carries every part of the evaluation, each consistent with the others.
fn assert_evaluation_is_complete(test: &scanside_trainer::evaluate::EvalReport) {
    let m = &test.metrics;
    assert!(m.n > 0);
    assert!(m.top3_accuracy >= m.accuracy);
    let confusion_total: usize = m.confusion.iter().flatten().sum();
    assert_eq!(confusion_total, m.n);
    let intervals = test.intervals.as_ref().expect("bootstrap intervals");
    let accuracy = intervals.accuracy.expect("accuracy interval");
    assert_eq!(accuracy.estimate, m.accuracy);
    assert!(accuracy.low <= accuracy.estimate && accuracy.estimate <= accuracy.high);
    assert_eq!(intervals.resampled_by, "lesion_id");
    let calibration = test.calibration.as_ref().expect("calibration");
    assert!(calibration.temperature > 0.0 && calibration.temperature.is_finite());
    let binned: usize = calibration.reliability_after.iter().map(|b| b.count).sum();
    assert_eq!(binned, m.n);
    assert_eq!(test.operating_points.len(), test.class_names.len());
    // A class gets a threshold when validation has positives for it; every one that does must
    // reach the 95 % sensitivity target there. (Checked only `if let`, no point with a
    // threshold passed vacuously.)
    let mut with_threshold = 0;
    for point in &test.operating_points {
        let Some(threshold) = point.threshold else {
            assert!(
                point.val_sensitivity.is_none() && point.sensitivity.is_none(),
                "{point:?}"
            );
            continue;
        };
        with_threshold += 1;
        assert!((0.0..=1.0).contains(&threshold), "{point:?}");
        let sensitivity = point
            .val_sensitivity
            .expect("validation sensitivity at a threshold");
        assert!(sensitivity >= 0.95, "{point:?}");
        let specificity = point.val_specificity.expect("validation specificity");
        assert!((0.0..=1.0).contains(&specificity), "{point:?}");
    }
    assert!(
        with_threshold >= 1,
        "no class got an operating point: {:?}",
        test.operating_points
    );
}

/// Copies the bundle to `dest` with `check.json`: a batch of real inputs and burn's logits.
fn write_onnxruntime_fixture(data: &Path, out: &Path, dest: &Path) -> anyhow::Result<()> {
    use burn::backend::Flex;
    use scanside_trainer::data::{load_images, open_dataset, Partition, SplitFile};
    use scanside_trainer::model::{input_tensor, to_vec};
    use scanside_trainer::run_dir::load_finetuned;
    let device = Default::default();
    let (config, model) = load_finetuned::<Flex>(&out.join("finetune"), &device)?;
    let preprocess = config.preprocess.clone().unwrap();
    let index = open_dataset(data)?;
    let split = SplitFile::load(&config.split, &index)?;
    let which: Vec<usize> = split
        .indices(&index, Partition::Val)
        .into_iter()
        .take(4)
        .collect();
    let images = load_images(&index, &which, &preprocess)?;
    let x = input_tensor::<Flex>(images.pixels.clone(), &preprocess, &device);
    let logits = to_vec(model.forward(x));
    let mut inputs = images.pixels.clone();
    for chunk in inputs.chunks_mut(images.sample_len) {
        scanside_runtime::preprocess::normalize_in_place(chunk, &preprocess);
    }
    std::fs::create_dir_all(dest)?;
    for file in [
        "manifest.json",
        "manifest.sig",
        "model.onnx",
        "model.i8",
        "model.qdq.onnx",
    ] {
        std::fs::copy(out.join("bundle").join(file), dest.join(file))?;
    }
    // The signer's public key beside the copy (`<dest>.pub`), for screening it verified.
    std::fs::copy(out.join("site.pub"), dest.with_extension("pub"))?;
    // One input image, for screening with the native and the cross-compiled runtime binaries.
    std::fs::copy(&images.sources[0], dest.join("sample.jpg"))?;
    let classes = config.class_names.len();
    // The int8 engine's logits on the same inputs, for comparing the QDQ model with the blob.
    let bundle = scanside_runtime::bundle::Bundle::load(&out.join("bundle"), &trusted(out)?)?;
    let scanside_runtime::infer::Engine::Int8(int8) =
        scanside_runtime::infer::Engine::load(&bundle, scanside_runtime::infer::EngineKind::Int8)?
    else {
        anyhow::bail!("int8 engine expected");
    };
    let int8_logits = inputs
        .chunks(images.sample_len)
        .map(|x| int8.logits(x))
        .collect::<Result<Vec<_>, _>>()?;
    let check = serde_json::json!({
        "inputs": inputs.chunks(images.sample_len).collect::<Vec<_>>(),
        "logits": logits.chunks(classes).collect::<Vec<_>>(),
        "int8_logits": int8_logits,
    });
    std::fs::write(dest.join("check.json"), serde_json::to_vec(&check)?)?;
    Ok(())
}

#[test]
fn a_bundle_whose_model_was_replaced_is_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_ham(&data, 20);
    let out = tmp.path().join("run");
    let result = run_pipeline(&data, &out, 16, 2).unwrap();
    let model = result.bundle.join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&model, bytes).unwrap();
    // The manifest still verifies; the model is refused when an engine reads it.
    let bundle =
        scanside_runtime::bundle::Bundle::load(&result.bundle, &trusted(&out).unwrap()).unwrap();
    let err =
        scanside_runtime::infer::Engine::load(&bundle, scanside_runtime::infer::EngineKind::Fp32)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("model.onnx") && err.contains("sha256"),
        "{err}"
    );
}
