//! The `scanside` binary as a user runs it: JSON lines on stdout, errors naming the file,
//! exit codes 0 / 1 / 2.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{write_dicom, write_linear_bundle, write_linear_bundle_with_int8, write_png};

/// Runs `scanside`; a `screen` of a fixture bundle given neither `--public-key` nor
/// `--allow-unsigned` trusts the fixture's key (`<bundle>.pub`, written beside it).
fn scanside(args: &[&Path]) -> Output {
    let mut args: Vec<std::path::PathBuf> = args.iter().map(|a| a.to_path_buf()).collect();
    let has = |flag: &str| args.iter().any(|a| a == Path::new(flag));
    if args.first().is_some_and(|a| a == Path::new("screen"))
        && !has("--public-key")
        && !has("--allow-unsigned")
    {
        if let Some(at) = args.iter().position(|a| a == Path::new("--bundle")) {
            let key = args[at + 1].with_extension("pub");
            if key.is_file() {
                args.insert(at + 2, "--public-key".into());
                args.insert(at + 3, key);
            }
        }
    }
    crate::util::scanside_command()
        .args(&args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn screen_prints_one_json_object_per_png_jpeg_and_dicom_image() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let bright = dir.path().join("bright.png");
    write_png(&bright, 240);
    let dark = dir.path().join("dark.jpg");
    image::RgbImage::from_pixel(9, 7, image::Rgb([10, 10, 10]))
        .save(&dark)
        .unwrap();
    let dcm = dir.path().join("ct.dcm");
    write_dicom(&dcm, "MONOCHROME2", &[4000; 16], 4, 4, None);
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &bundle,
        &bright,
        &dark,
        &dcm,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["top_class"], "bright");
    assert_eq!(lines[1]["top_class"], "dark");
    assert_eq!(lines[2]["source"]["format"], "dicom");
    let p = &lines[0]["probabilities"];
    let sum = p["dark"].as_f64().unwrap() + p["bright"].as_f64().unwrap();
    assert!((sum - 1.0).abs() < 1e-5);
    assert!(lines[0]["timings"]["infer_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[0]["model_id"].as_str().unwrap().len(), 12);
}

#[test]
fn a_truncated_image_is_named_the_others_still_screened_and_exit_is_1() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let good = dir.path().join("good.png");
    write_png(&good, 100);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &bundle,
        &cut,
        &good,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cut.png"), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
}

#[test]
fn a_missing_file_and_a_missing_bundle_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let missing = dir.path().join("nope.png");
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &bundle,
        &missing,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope.png"), "{}", stderr(&out));

    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &dir.path().join("no-bundle"),
        Path::new("--allow-unsigned"),
        &missing,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-bundle"), "{}", stderr(&out));
}

#[test]
fn a_tampered_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let model = bundle.join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.push(0);
    std::fs::write(&model, bytes).unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 1);
    let out = scanside(&[Path::new("screen"), Path::new("--bundle"), &bundle, &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sha256"), "{}", stderr(&out));
}

#[test]
fn a_manifest_whose_classes_do_not_match_the_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let path = bundle.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["class_names"] = serde_json::json!(["a", "b", "c"]);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 1);
    // Edited by hand, so no longer signed: checked as a development bundle.
    let unsigned = Path::new("--allow-unsigned");
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &bundle,
        unsigned,
        &img,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("3 classes"), "{}", stderr(&out));
}

#[test]
fn a_wrong_flag_is_a_usage_error() {
    let out = scanside(&[Path::new("screen"), Path::new("--no-such-flag")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_calibrated_bundle_scales_probabilities_and_flags_classes_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let path = bundle.join("manifest.json");
    let plain: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let img = dir.path().join("x.png");
    write_png(&img, 200);
    let unsigned = Path::new("--allow-unsigned");
    let screen = || {
        scanside(&[
            Path::new("screen"),
            Path::new("--bundle"),
            &bundle,
            unsigned,
            &img,
        ])
    };
    let before: serde_json::Value = serde_json::from_slice(&screen().stdout).unwrap();
    assert_eq!(before["calibrated"], false);

    let mut calibrated = plain.clone();
    calibrated["calibration"] = serde_json::json!({
        "temperature": 1000.0, "target_sensitivity": 0.95, "thresholds": [0.4, null]
    });
    std::fs::write(&path, serde_json::to_vec(&calibrated).unwrap()).unwrap();
    let out = screen();
    assert!(out.status.success(), "{}", stderr(&out));
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(after["calibrated"], true);
    // A huge temperature flattens the softmax to ~0.5 each: "dark" passes 0.4, "bright" has
    // no threshold.
    let p = after["probabilities"]["dark"].as_f64().unwrap();
    assert!((p - 0.5).abs() < 0.01, "{after}");
    assert_eq!(after["flags"], serde_json::json!(["dark"]));
    assert_eq!(after["logits"], before["logits"]);

    calibrated["calibration"]["thresholds"] = serde_json::json!([0.4]);
    std::fs::write(&path, serde_json::to_vec(&calibrated).unwrap()).unwrap();
    let out = screen();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 entries for 2 classes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn only_bundles_signed_by_a_trusted_key_load_unless_unsigned_is_allowed_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let img = dir.path().join("x.png");
    write_png(&img, 200);
    let screen = |extra: &[&Path]| {
        let mut args = vec![Path::new("screen"), Path::new("--bundle"), &bundle];
        args.extend_from_slice(extra);
        args.push(&img);
        scanside(&args)
    };
    let trusted = bundle.with_extension("pub");
    let out = screen(&[Path::new("--public-key"), &trusted]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["model_verified"], true);

    // Another key does not verify it.
    let other = dir.path().join("other.pub");
    std::fs::write(&other, format!("ed25519-public {}\n", "11".repeat(32))).unwrap();
    let out = screen(&[Path::new("--public-key"), &other]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("manifest.sig") && stderr(&out).contains("refused"),
        "{}",
        stderr(&out)
    );

    // A manifest changed after signing: refused before it is parsed. Bytes that are not JSON
    // tell the order apart: verified first, the signature is the complaint; parsed first, the
    // JSON would be (an edit that keeps valid JSON cannot show which came first).
    let manifest = bundle.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n{{ not JSON")).unwrap();
    let out = screen(&[Path::new("--public-key"), &trusted]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("does not verify") && !err.contains("malformed manifest"),
        "{err}"
    );
    std::fs::write(&manifest, text.replace("\"dark\"", "\"DARK\"")).unwrap();
    let out = screen(&[Path::new("--public-key"), &trusted]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));

    // Without a signature: refused, unless --allow-unsigned, which warns and marks results.
    std::fs::remove_file(bundle.join("manifest.sig")).unwrap();
    let out = screen(&[Path::new("--public-key"), &trusted]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not signed"), "{}", stderr(&out));
    let out = screen(&[Path::new("--allow-unsigned")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING"), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["model_verified"], false);

    // Neither a key nor --allow-unsigned: a usage error.
    let out = crate::util::scanside_command()
        .args([Path::new("screen"), Path::new("--bundle"), &bundle, &img])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_int8_engine_screens_like_fp32_and_reports_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle);
    let (bright, dark) = (dir.path().join("bright.png"), dir.path().join("dark.png"));
    write_png(&bright, 230);
    write_png(&dark, 40);
    let screen = |engine: &str| {
        let out = scanside(&[
            Path::new("screen"),
            Path::new("--bundle"),
            &bundle,
            Path::new("--engine"),
            Path::new(engine),
            &bright,
            &dark,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        json_lines(&out)
    };
    let (fp32, int8) = (screen("fp32"), screen("int8"));
    // The fixture's graph flattens a spatial tensor, which the direct engine refuses: `fp32`
    // runs it on tract, as `--engine tract` does.
    for (a, t) in fp32.iter().zip(&screen("tract")) {
        assert_eq!(t["engine"], "tract");
        assert_eq!(a["logits"], t["logits"]);
    }
    for (a, b) in fp32.iter().zip(&int8) {
        assert_eq!(
            (a["engine"].as_str(), b["engine"].as_str()),
            (Some("fp32"), Some("int8"))
        );
        assert_eq!(a["top_class"], b["top_class"]);
        for (x, y) in a["logits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["logits"].as_array().unwrap())
        {
            // One output step is 1/255.
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 2.0 / 255.0,
                "{a} vs {b}"
            );
        }
    }
    assert_eq!(
        (int8[0]["top_class"].as_str(), int8[1]["top_class"].as_str()),
        (Some("bright"), Some("dark"))
    );
}

#[test]
fn int8_is_refused_clearly_when_absent_or_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    write_linear_bundle(&plain);
    let png = dir.path().join("x.png");
    write_png(&png, 100);
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &plain,
        Path::new("--engine"),
        Path::new("int8"),
        &png,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no int8 model"), "{}", stderr(&out));
    let out = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &plain,
        Path::new("--engine"),
        Path::new("qdq"),
        &png,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no QDQ ONNX model"),
        "{}",
        stderr(&out)
    );

    let bundle = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle);
    let blob = bundle.join("model.i8");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    // Even fp32 refuses: the bundle as a whole is not what was signed.
    let out = scanside(&[Path::new("screen"), Path::new("--bundle"), &bundle, &png]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("model.i8") && err.contains("sha256"), "{err}");
}

#[test]
fn mcu_vectors_hold_the_int8_engines_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle);
    let png = dir.path().join("x.png");
    write_png(&png, 200);
    let key = bundle.with_extension("pub");
    let golden = dir.path().join("golden");
    let out = scanside(&[
        Path::new("mcu-vectors"),
        Path::new("--bundle"),
        &bundle,
        Path::new("--public-key"),
        &key,
        Path::new("--out"),
        &golden,
        &png,
        &png,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Vectors come only from a bundle that is whole as signed, though only the blob runs.
    let model = bundle.join("model.onnx");
    let onnx = std::fs::read(&model).unwrap();
    let mut tampered = onnx.clone();
    tampered.push(0);
    std::fs::write(&model, tampered).unwrap();
    let refused = scanside(&[
        Path::new("mcu-vectors"),
        Path::new("--bundle"),
        &bundle,
        Path::new("--public-key"),
        &key,
        Path::new("--out"),
        &dir.path().join("refused"),
        &png,
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(
        err.contains("model.onnx") && err.contains("sha256"),
        "{err}"
    );
    std::fs::write(&model, onnx).unwrap();
    let bytes = std::fs::read(golden.join("vectors.bin")).unwrap();
    let vectors = scanside_int8::vectors::Vectors::parse(&bytes).unwrap();
    assert_eq!(vectors.len(), 2);
    let (input, output) = vectors.get(0).unwrap();
    assert_eq!(input.len(), 3 * 4 * 4);
    // The blob copied out is the bundle's, and running it on the input gives the output.
    assert_eq!(
        std::fs::read(golden.join("model.i8")).unwrap(),
        std::fs::read(bundle.join("model.i8")).unwrap()
    );
    let blob = scanside_int8::blob::write::AlignedBlob::new(
        &std::fs::read(golden.join("model.i8")).unwrap(),
    );
    let model = scanside_int8::blob::Model::parse(blob.bytes()).unwrap();
    let mut arena = vec![0_i8; model.arena_bytes()];
    assert_eq!(
        scanside_int8::engine::run(&model, &mut arena, input, |_, _| ()).unwrap(),
        output
    );
}

#[test]
fn mcu_vectors_hold_one_vector_per_frame_under_the_every_frame_policy() {
    use scanside_runtime::bundle::{write_bundle_with_int8, Bundle, ModelFile, Trust};
    use scanside_runtime::decode::DicomFrames;
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle_dir);
    let bundle = Bundle::load(&bundle_dir, &Trust::AllowUnsigned).unwrap();
    let mut manifest = bundle.manifest.clone();
    manifest.preprocess.dicom_frames = DicomFrames::Every;
    write_bundle_with_int8(
        &bundle_dir,
        manifest,
        &bundle.read_model(ModelFile::Fp32).unwrap(),
        Some(&bundle.read_model(ModelFile::Int8Blob).unwrap()),
        None,
        Some(&crate::util::test_key()),
    )
    .unwrap();
    // Three 4×4 frames: dark, bright, mid-gray (window 1000/1001).
    let cine = dir.path().join("cine.dcm");
    let pixels: Vec<u16> = [0_u16, 1200, 1000].iter().flat_map(|&v| [v; 16]).collect();
    write_dicom(&cine, "MONOCHROME2", &pixels, 4, 4, Some((1000.0, 1001.0)));
    let mut obj = dicom_object::open_file(&cine).unwrap();
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::NUMBER_OF_FRAMES,
        dicom_core::VR::IS,
        dicom_core::PrimitiveValue::from("3"),
    ));
    obj.write_to_file(&cine).unwrap();
    let png = dir.path().join("x.png");
    write_png(&png, 200);
    let golden = dir.path().join("golden");
    let key = bundle_dir.with_extension("pub");
    let out = scanside(&[
        Path::new("mcu-vectors"),
        Path::new("--bundle"),
        &bundle_dir,
        Path::new("--public-key"),
        &key,
        Path::new("--out"),
        &golden,
        &png,
        &cine,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["vectors"], 4, "{report}");
    let bytes = std::fs::read(golden.join("vectors.bin")).unwrap();
    let vectors = scanside_int8::vectors::Vectors::parse(&bytes).unwrap();
    assert_eq!(vectors.len(), 4);
    // One vector per frame, as `screen` gives one result per frame: the frames differ.
    let inputs: Vec<Vec<i8>> = (1..4).map(|i| vectors.get(i).unwrap().0.to_vec()).collect();
    assert!(
        inputs[0] != inputs[1] && inputs[1] != inputs[2],
        "{inputs:?}"
    );
    let screened = scanside(&[
        Path::new("screen"),
        Path::new("--bundle"),
        &bundle_dir,
        Path::new("--engine"),
        Path::new("int8"),
        &cine,
    ]);
    assert!(screened.status.success(), "{}", stderr(&screened));
    let frames = json_lines(&screened)[0]["frames"].as_array().unwrap().len();
    assert_eq!(frames, 3);
}

#[test]
fn bench_and_the_debug_log_say_why_fp32_runs_on_tract() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let out = crate::util::scanside_command()
        .env("SCANSIDE_LOG", "debug")
        .args([Path::new("bench"), Path::new("--bundle"), &bundle])
        .args([Path::new("--public-key"), &bundle.with_extension("pub")])
        .args(["--engine", "fp32,tract", "--runs", "2", "--warmup", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let engines = report["engines"].as_array().unwrap();
    // The fixture's graph flattens a spatial tensor, which the direct engine does not run
    // (on hosts without its kernels it declines for that reason instead).
    let note = engines[0]["engine_note"].as_str().unwrap();
    assert!(
        note.starts_with("direct engine declined: ") && note.ends_with("; running on tract"),
        "{note}"
    );
    assert!(engines[1].get("engine_note").is_none(), "{}", engines[1]);
    let err = stderr(&out);
    assert!(
        err.contains("scanside: debug: ") && err.contains(note),
        "{err}"
    );
    // Without SCANSIDE_LOG nothing is logged.
    let quiet = crate::util::scanside_command()
        .env_remove("SCANSIDE_LOG")
        .args([Path::new("bench"), Path::new("--bundle"), &bundle])
        .args([Path::new("--public-key"), &bundle.with_extension("pub")])
        .args(["--engine", "fp32", "--runs", "2", "--warmup", "0"])
        .output()
        .unwrap();
    assert!(
        quiet.status.success() && quiet.stderr.is_empty(),
        "{}",
        stderr(&quiet)
    );
}

#[test]
fn bench_reports_both_engines_on_synthetic_and_real_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle);
    let key = bundle.with_extension("pub");
    let png = dir.path().join("x.png");
    write_png(&png, 180);
    for extra in [None, Some(png.as_path())] {
        let mut args = vec![
            Path::new("bench"),
            Path::new("--bundle"),
            &bundle,
            Path::new("--public-key"),
            &key,
            Path::new("--runs"),
            Path::new("20"),
        ];
        args.extend(extra);
        let out = scanside(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["images"], if extra.is_some() { 1 } else { 0 });
        let engines = report["engines"].as_array().unwrap();
        assert_eq!(engines.len(), 2);
        for (e, name) in engines.iter().zip(["fp32", "int8"]) {
            assert_eq!(e["engine"], name);
            assert_eq!(e["runs"], 20);
            let (p50, p99) = (e["p50_ms"].as_f64().unwrap(), e["p99_ms"].as_f64().unwrap());
            assert!(p50 > 0.0 && p50 <= p99, "{e}");
            assert!(e["cold_start_ms"].as_f64().unwrap() > 0.0);
        }
    }
    // A bundle without an int8 model: a clear error, exit 1.
    let plain = dir.path().join("plain");
    write_linear_bundle(&plain);
    let out = scanside(&[
        Path::new("bench"),
        Path::new("--bundle"),
        &plain,
        Path::new("--public-key"),
        &plain.with_extension("pub"),
        Path::new("--engine"),
        Path::new("int8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no int8 model"), "{}", stderr(&out));
}

#[test]
fn threads_change_no_result_and_zero_threads_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle_with_int8(&bundle);
    let key = bundle.with_extension("pub");
    let png = dir.path().join("x.png");
    write_png(&png, 180);
    for engine in ["fp32", "int8"] {
        let screen = |threads: &str| {
            let out = scanside(&[
                Path::new("screen"),
                Path::new("--bundle"),
                &bundle,
                Path::new("--engine"),
                Path::new(engine),
                Path::new("--threads"),
                Path::new(threads),
                &png,
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
            json_lines(&out)[0]["logits"].clone()
        };
        assert_eq!(screen("1"), screen("3"), "{engine}");
    }
    let bench = |threads: &str| {
        scanside(&[
            Path::new("bench"),
            Path::new("--bundle"),
            &bundle,
            Path::new("--public-key"),
            &key,
            Path::new("--engine"),
            Path::new("fp32,int8"),
            Path::new("--runs"),
            Path::new("2"),
            Path::new("--threads"),
            Path::new(threads),
        ])
    };
    let out = bench("3");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for e in report["engines"].as_array().unwrap() {
        assert_eq!(e["threads"], 3, "{e}");
    }
    let zero = bench("0");
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(stderr(&zero).contains("--threads"), "{}", stderr(&zero));
}

#[test]
fn inspect_reports_what_was_decoded_and_writes_a_16_bit_png() {
    let dir = tempfile::tempdir().unwrap();
    let dcm = dir.path().join("ct.dcm");
    write_dicom(&dcm, "MONOCHROME1", &[100, 200, 300, 400], 2, 2, None);
    let png = dir.path().join("x.png");
    write_png(&png, 77);
    let broken = dir.path().join("broken.dcm");
    std::fs::write(&broken, b"DICM but not really").unwrap();
    let out_dir = dir.path().join("seen");
    let out = scanside(&[
        Path::new("inspect"),
        Path::new("--png"),
        &out_dir,
        &dcm,
        &broken,
        &png,
    ]);
    // The broken file is named, the others still reported; exit 1.
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.dcm"), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["source"]["format"], "dicom");
    assert_eq!(lines[0]["source"]["photometric"], "MONOCHROME1");
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(2), Some(2))
    );
    // MONOCHROME1 is inverted: the smallest stored value is the brightest pixel.
    let written = image::open(out_dir.join("ct.dcm.png")).unwrap();
    let gray = written.as_luma16().expect("16-bit grayscale PNG");
    assert!(gray.get_pixel(0, 0)[0] > gray.get_pixel(1, 1)[0]);
    assert!(out_dir.join("x.png.png").is_file());
}

#[test]
fn parallel_screening_keeps_the_input_order_and_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_linear_bundle(&bundle);
    let mut files = Vec::new();
    for i in 0..9_u8 {
        let path = dir.path().join(format!("img{i}.png"));
        write_png(&path, 20 + 25 * i);
        files.push(path);
    }
    std::fs::write(dir.path().join("img4.png"), b"\x89PNG truncated").unwrap();
    let run = |jobs: &str| {
        let mut args: Vec<&Path> = vec![
            Path::new("screen"),
            Path::new("--bundle"),
            &bundle,
            Path::new("--jobs"),
            Path::new(jobs),
        ];
        args.extend(files.iter().map(PathBuf::as_path));
        let out = scanside(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "the truncated file fails the run"
        );
        assert!(stderr(&out).contains("img4.png"), "{}", stderr(&out));
        json_lines(&out)
            .iter()
            .map(|l| {
                (
                    l["file"].as_str().unwrap().to_string(),
                    l["top_class"].as_str().unwrap().to_string(),
                    l["logits"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (serial, parallel) = (run("1"), run("3"));
    assert_eq!(serial.len(), 8);
    assert_eq!(serial, parallel);
    let names: Vec<&str> = serial
        .iter()
        .map(|r| r.0.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "img0.png", "img1.png", "img2.png", "img3.png", "img5.png", "img6.png", "img7.png",
            "img8.png"
        ]
    );
}

/// Completions and man pages come from the same clap definitions as the parser.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = crate::util::scanside_command()
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in [
        "scanside",
        "screen",
        "receive",
        "--by-study",
        "--refuse-not-applicable",
    ] {
        assert!(script.contains(word), "completion script lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = crate::util::scanside_command()
        .arg("man")
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["scanside.1", "scanside-screen.1", "scanside-receive.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
}
