//! The pretraining engine through the binary: a run killed with SIGKILL resumes from its last
//! checkpoint and reproduces the uninterrupted loss curve; MICLe pairs different images of a
//! case; LARS and the kNN health signal run end to end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{stderr, train};

/// Two classes of textured images, two images per "patient" (class folder / DICOM-free, so the
/// group comes from a CSV manifest).
fn write_cases(dir: &Path, cases: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = String::from("path,patient,label\n");
    for case in 0..cases {
        let label = case % 2;
        for k in 0..2 {
            let name = format!("img/{case}_{k}.png");
            let img = image::RgbImage::from_fn(12, 12, |x, y| {
                let v = ((x * (3 + label as u32) + y * (case as u32 % 5 + 1) + k * 7) % 16) as u8;
                image::Rgb([v * 16, if label == 0 { 200 } else { 40 }, v * 8])
            });
            img.save(dir.join(&name)).unwrap();
            csv += &format!("{name},p{case},{}\n", ["benign", "malignant"][label]);
        }
    }
    let manifest = dir.join("labels.csv");
    std::fs::write(&manifest, csv).unwrap();
    let split = dir.join("split.json");
    let out = train(&[
        "data",
        "split",
        "--data",
        manifest.to_str().unwrap(),
        "--path-column",
        "path",
        "--group-column",
        "patient",
        "--label-column",
        "label",
        "--out",
        split.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    split
}

fn pretrain_args<'a>(split: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "pretrain",
        "--split",
        split,
        "--out",
        out,
        "--image-size",
        "12",
        "--width",
        "0.125",
        "--batch-size",
        "8",
        "--epochs",
        "100",
        "--seed",
        "5",
    ];
    args.extend_from_slice(extra);
    args
}

/// A small fine-tuning run from random initialisation (12 px, 2 epochs) into `run`.
fn finetune_from_scratch(split: &Path, run: &Path) {
    let out = train(&[
        "finetune",
        "--split",
        split.to_str().unwrap(),
        "--from-scratch",
        "--out",
        run.to_str().unwrap(),
        "--image-size",
        "12",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `scanside-train export` of a fine-tuned run with the int8 targets, small calibration and
/// check sets, plus `extra` arguments.
fn export_int8(run: &Path, bundle: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--targets",
        "onnx,mcu",
        "--calibration-images",
        "8",
        "--check-images",
        "2",
    ];
    args.extend_from_slice(extra);
    train(&args)
}

/// (step, loss) of every step in a run's metrics log.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

#[test]
fn a_run_killed_with_sigkill_resumes_and_matches_the_uninterrupted_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 24);
    let split = split.to_str().unwrap();
    let steps = "40";
    let common = [
        "--max-steps",
        steps,
        "--checkpoint-every",
        "4",
        "--health-every",
        "0",
    ];

    let whole = dir.path().join("whole");
    let out = train(&pretrain_args(split, whole.to_str().unwrap(), &common));
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = losses(&whole);
    assert_eq!(reference.len(), 40);

    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scanside-train"))
        .args(pretrain_args(split, killed.to_str().unwrap(), &common))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while losses(&killed).len() < 11 {
        assert!(Instant::now() < deadline, "the run never reached step 10");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    let before = losses(&killed).len();
    assert!(
        before < 40,
        "killed too late to test anything ({before} steps)"
    );
    assert!(!killed.join("backbone.mpk").exists());

    let out = train(&["pretrain", "--resume", "--out", killed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed = losses(&killed);
    assert_eq!(
        resumed.len(),
        40,
        "one record per step after resuming: {resumed:?}"
    );
    for ((s1, a), (s2, b)) in reference.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "step {s1}: uninterrupted {a}, resumed {b}"
        );
    }
    assert!(killed.join("backbone.mpk").exists());
}

#[test]
fn micle_pairs_images_of_one_case_and_lars_with_health_runs() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 40);
    let split = split.to_str().unwrap();
    let summary = |method: &str, optimizer: &str| {
        let run = dir.path().join(format!("{method}-{optimizer}"));
        let out = train(&pretrain_args(
            split,
            run.to_str().unwrap(),
            &[
                "--method",
                method,
                "--optimizer",
                optimizer,
                "--max-steps",
                "6",
            ],
        ));
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let micle = summary("micle", "lars");
    // 6 steps: throughput after the 3 warm-up steps is reported beside the overall figure.
    let steady = micle["steady_images_per_second"].as_f64();
    assert!(steady.is_some_and(|r| r > 0.0), "{micle}");
    // Every case has two images, so every MICLe pair crosses images.
    assert_eq!(micle["cross_image_pairs"].as_f64(), Some(1.0), "{micle}");
    assert!(micle["final_loss"].as_f64().unwrap().is_finite());
    let health = micle["health"].as_array().unwrap();
    assert!(health.len() >= 2, "before training and at the end: {micle}");
    for h in health {
        // Regression: the kNN bank was once empty, which reads as 0 accuracy. The two classes
        // differ in their green channel, so even random-init features separate them.
        let knn = h["knn_accuracy"].as_f64().unwrap();
        assert!((0.75..=1.0).contains(&knn), "{h}");
        assert!(h["spread"].as_f64().unwrap() > 0.0, "{h}");
    }
    let simclr = summary("simclr", "sgd");
    assert_eq!(simclr["cross_image_pairs"].as_f64(), Some(0.0), "{simclr}");

    // The probe scores saved features and the random-init baseline the same way.
    for extra in [None, Some("--random-init")] {
        let run = dir.path().join("micle-lars");
        let mut args = vec!["probe", "--pretrained", run.to_str().unwrap()];
        args.extend(extra);
        let out = train(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let partitions = report["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 2, "{report}");
        for p in partitions {
            let accuracy = p[2].as_f64().unwrap();
            assert!((0.5..=1.0).contains(&accuracy), "{report}");
        }
    }
}

#[test]
fn resuming_a_run_without_checkpoints_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let out = train(&[
        "pretrain",
        "--resume",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
}

#[test]
fn combined_objectives_run_from_a_toml_config_and_log_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let config = dir.path().join("combined.toml");
    std::fs::write(
        &config,
        format!(
            r#"
dataset = "{data}"
split = "{split}"
method = "micle"
image_size = 16
epochs = 100
batch_size = 8
learning_rate = 0.001
weight_decay = 0.0001
warmup_fraction = 0.1
temperature = 0.2
projection_dim = 32
seed = 1
max_steps = 3
health_every = 0
checkpoint_every = 0
optimizer = "adamw"

[objectives]
contrastive = 1.0
simsiam = 0.5
rotation = 0.5
reconstruction = 0.5

[model]
depth = 18
width_multiplier = 0.125
in_channels = 3
small_input_stem = true

[augment]
crop_scale = [0.35, 1.0]
"#,
            data = dir.path().join("labels.csv").display(),
            split = split.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("combined");
    let out = train(&[
        "pretrain",
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let step: serde_json::Value = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("objectives").is_some())
        .unwrap();
    for part in ["contrastive", "simsiam", "rotation", "reconstruction"] {
        let v = step["objectives"][part].as_f64();
        assert!(v.is_some_and(f64::is_finite), "{part}: {step}");
    }
    // A bad objective is a usage error.
    let out = train(&[
        "pretrain",
        "--split",
        split.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--objective",
        "jigsaw=1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("jigsaw"), "{}", stderr(&out));
}

/// `scanside-train` restarts itself once with `MIMALLOC_PURGE_DELAY=-1` (freed activations
/// stay committed) and leaves a value the user set alone: read from the running process's
/// environment once its run directory has a metrics file (so `main` got past the restart).
#[cfg(target_os = "linux")]
#[test]
fn the_trainer_keeps_freed_memory_committed_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 8);
    let split = split.to_str().unwrap();
    for (given, expected) in [
        (None, "MIMALLOC_PURGE_DELAY=-1"),
        (Some("250"), "MIMALLOC_PURGE_DELAY=250"),
    ] {
        let run = dir.path().join(format!("run-{}", given.unwrap_or("unset")));
        let mut command = Command::new(env!("CARGO_BIN_EXE_scanside-train"));
        command
            .args(pretrain_args(
                split,
                run.to_str().unwrap(),
                &["--health-every", "0"],
            ))
            .env_remove("MIMALLOC_PURGE_DELAY")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(value) = given {
            command.env("MIMALLOC_PURGE_DELAY", value);
        }
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !run.join("metrics.jsonl").exists() {
            assert!(Instant::now() < deadline, "the run never started");
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(Duration::from_millis(5));
        }
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let settings: Vec<String> = environ
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY="))
            .collect();
        assert_eq!(settings, [expected], "given {given:?}");
    }
}

/// Several `--device`s split each batch across model replicas on their own threads and sum
/// the gradients in micro-batch order: on this CPU-only machine two CPU replicas stand in for
/// two GPUs, and must reproduce `--accumulate 2` on one device exactly.
#[test]
fn data_parallel_devices_reproduce_gradient_accumulation_on_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let split = split.to_str().unwrap();
    let run = |name: &str, device: &str, accumulate: &str| {
        let out_dir = dir.path().join(name);
        let mut args = vec!["--device", device];
        args.extend(pretrain_args(
            split,
            out_dir.to_str().unwrap(),
            &[
                "--max-steps",
                "3",
                "--health-every",
                "0",
                "--checkpoint-every",
                "0",
                "--accumulate",
                accumulate,
            ],
        ));
        let out = train(&args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        losses(&out_dir)
    };
    let one = run("one", "cpu", "2");
    let two = run("two", "cpu,cpu", "1");
    assert_eq!(one.len(), 3, "{one:?}");
    assert_eq!(one, two, "two replicas vs two micro-batches on one device");
    // Replicas times micro-batches must still split the batch (8 images into 2 × 8: no).
    let bad = dir.path().join("bad");
    let mut args = vec!["--device", "cpu,cpu"];
    args.extend(pretrain_args(
        split,
        bad.to_str().unwrap(),
        &["--max-steps", "1", "--accumulate", "8"],
    ));
    let out = train(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("2 device(s)"), "{}", stderr(&out));
    // Other commands take one device.
    let out = train(&["--device", "cpu,cpu", "data", "check", "--data", split]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn imagenet_init_and_gradient_accumulation_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let (split, run) = (split.to_str().unwrap(), dir.path().join("run"));
    let weights = dir.path().join("tv");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let have_weights = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/torchvision_weights.py"))
        .arg(&weights)
        .args([
            "--depth", "18", "--width", "0.125", "--size", "16", "--batch", "1",
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let weights_file = weights.join("weights.safetensors");
    let mut extra = vec![
        "--max-steps",
        "2",
        "--accumulate",
        "2",
        "--health-every",
        "0",
        "--objective",
        "contrastive=1,rotation=0.5,reconstruction=0.5",
        "--stem",
        "imagenet",
    ];
    if have_weights {
        extra.extend(["--init", weights_file.to_str().unwrap()]);
    } else {
        eprintln!("--init part skipped: {python} with numpy and safetensors is needed");
    }
    let out = train(&pretrain_args(split, run.to_str().unwrap(), &extra));
    assert!(out.status.success(), "{}", stderr(&out));
    let steps = losses(&run);
    assert_eq!(steps.len(), 2, "one optimiser step per batch: {steps:?}");
    assert!(steps.iter().all(|(_, l)| l.is_finite()));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["accumulation_steps"], 2);
    if have_weights {
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let init: serde_json::Value = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find_map(|v| v.get("init_weights").cloned())
            .expect("the loaded weights are recorded");
        assert!(init["loaded"].as_u64().unwrap() > 50, "{init}");
        assert!(init["ignored"].to_string().contains("fc.weight"), "{init}");
    }
    // Training curves as CSV too, for tools that read CSV.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("loss"), "{csv}");

    // The SSL backbone goes back out under torchvision's names, and `--init` takes it again.
    let exported = dir.path().join("ssl.safetensors");
    let out = train(&[
        "export-backbone",
        "--run",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved["torchvision_model"], "resnet18");
    let again = dir.path().join("again");
    let out = train(&pretrain_args(
        split,
        again.to_str().unwrap(),
        &[
            "--max-steps",
            "1",
            "--health-every",
            "0",
            "--stem",
            "imagenet",
            "--init",
            exported.to_str().unwrap(),
        ],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(again.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("init_weights"), "{metrics}");

    // Micro-batches must split the batch evenly.
    let out = train(&pretrain_args(
        split,
        dir.path().join("bad").to_str().unwrap(),
        &["--max-steps", "1", "--accumulate", "3"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("accumulation_steps 3"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_linear_probe_trains_the_head_only_with_balanced_weights_and_stops_early() {
    use burn::backend::Flex;
    use burn::tensor::Tensor;
    use scanside_trainer::model::to_vec;
    use scanside_trainer::run_dir::load_finetuned;
    use scanside_trainer::runlog::load_weights;

    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let (pre, probe) = (dir.path().join("pre"), dir.path().join("probe"));
    let out = train(&pretrain_args(
        split.to_str().unwrap(),
        pre.to_str().unwrap(),
        &["--max-steps", "2", "--health-every", "0"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    // Too short for a steady-state figure: none is reported.
    let short: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(short.get("steady_images_per_second").is_none(), "{short}");
    let out = train(&[
        "finetune",
        "--split",
        split.to_str().unwrap(),
        "--pretrained",
        pre.to_str().unwrap(),
        "--out",
        probe.to_str().unwrap(),
        "--mode",
        "linear-probe",
        "--class-weights",
        "balanced",
        "--epochs",
        "40",
        "--batch-size",
        "8",
        "--lr",
        "1e-6",
        "--patience",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(probe.join("config.json")).unwrap();
    assert!(config.contains("\"linear-probe\"") && config.contains("\"balanced\""));
    // A learning rate this small cannot keep improving val AUC for 40 epochs: it stops early.
    let metrics = std::fs::read_to_string(probe.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("early_stop_epoch"), "{metrics}");

    // The backbone is the pretrained one, untouched (weights and BatchNorm statistics).
    let device = Default::default();
    let (config, model) = load_finetuned::<Flex>(&probe, &device).unwrap();
    let pretrained = load_weights(
        config.model.init::<Flex>(&device),
        &pre.join("backbone.mpk"),
        &device,
    )
    .unwrap();
    let x = Tensor::<Flex, 4>::ones([2, 3, 12, 12], &device);
    assert_eq!(
        to_vec(model.backbone.forward(x.clone())),
        to_vec(pretrained.forward(x))
    );
}

/// Chest-film-like cases: findings joined by '|' with "No Finding", two images per patient.
fn write_findings(dir: &Path, cases: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = String::from("path,patient,findings,view\n");
    for case in 0..cases {
        let (effusion, mass) = (case % 2 == 0, case % 3 == 0);
        for k in 0..2 {
            let name = format!("img/{case}_{k}.png");
            let img = image::GrayImage::from_fn(12, 12, |x, y| {
                let base = if effusion && y > 7 { 220 } else { 60 };
                let spot = if mass && (4..7).contains(&x) && (4..7).contains(&y) {
                    120
                } else {
                    0
                };
                image::Luma([(base + spot + ((x + y + k) % 5) * 3).min(255) as u8])
            });
            img.save(dir.join(&name)).unwrap();
            let mut found = Vec::new();
            if effusion {
                found.push("Effusion");
            }
            if mass {
                found.push("Mass");
            }
            let label = if found.is_empty() {
                "No Finding".to_string()
            } else {
                found.join("|")
            };
            let view = if case % 4 < 2 { "PA" } else { "AP" };
            csv += &format!("{name},p{case},{label},{view}\n");
        }
    }
    let manifest = dir.join("labels.csv");
    std::fs::write(&manifest, csv).unwrap();
    let split = dir.join("split.json");
    let out = train(&[
        "data",
        "split",
        "--data",
        manifest.to_str().unwrap(),
        "--path-column",
        "path",
        "--group-column",
        "patient",
        "--label-column",
        "findings",
        "--label-separator",
        "|",
        "--no-finding",
        "No Finding",
        "--out",
        split.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    split
}

#[test]
fn multi_label_findings_fine_tune_with_sigmoids_evaluate_per_finding_and_export_sigmoid() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_findings(dir.path(), 40);
    let run = dir.path().join("ft");
    finetune_from_scratch(&split, &run);
    let out = train(&[
        "evaluate",
        "--run",
        run.to_str().unwrap(),
        "--bootstrap",
        "50",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Effusion") && table.contains("mean AUC"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval-test.json")).unwrap())
            .unwrap();
    assert_eq!(report["metrics"]["findings"].as_array().unwrap().len(), 2);
    assert_eq!(report["operating_points"].as_array().unwrap().len(), 2);
    let bundle = dir.path().join("bundle");
    let keys = dir.path().join("keys/site");
    let out = train(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&["keygen", "--out", keys.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a key is never overwritten");
    assert!(stderr(&out).contains("site.key"), "{}", stderr(&out));
    let out = train(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--check-images",
        "2",
        "--sign-key",
        keys.with_extension("key").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["signed_by"].is_string(), "{report}");
    assert!(bundle.join("manifest.sig").is_file());
    let manifest = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"output\": \"sigmoid\""), "{manifest}");
    // Distribution shift: fine-tuned on PA films, evaluated on AP films only.
    let shifted = dir.path().join("pa");
    let out = train(&[
        "finetune",
        "--split",
        split.to_str().unwrap(),
        "--from-scratch",
        "--out",
        shifted.to_str().unwrap(),
        "--image-size",
        "12",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--where",
        "view=PA",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evaluate_where = |filter: &str| {
        train(&[
            "evaluate",
            "--run",
            shifted.to_str().unwrap(),
            "--bootstrap",
            "10",
            "--where",
            filter,
        ])
    };
    let out = evaluate_where("view=AP");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shifted.join("eval-test-view-AP.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["population"]["values"][0], "AP");
    assert_eq!(report["trained_on"]["values"][0], "PA");
    let out = evaluate_where("site=x");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no column \"site\"") && stderr(&out).contains("view"));
    let out = evaluate_where("view");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Class weights are a multi-class notion: refused, with the reason.
    let out = train(&[
        "finetune",
        "--split",
        split.to_str().unwrap(),
        "--from-scratch",
        "--out",
        dir.path().join("weighted").to_str().unwrap(),
        "--class-weights",
        "balanced",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("multi-class"), "{}", stderr(&out));
}

#[test]
fn the_label_efficiency_study_runs_its_grid_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let pre = dir.path().join("pre");
    let out = train(&pretrain_args(
        split.to_str().unwrap(),
        pre.to_str().unwrap(),
        &["--max-steps", "2", "--health-every", "0"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let config = dir.path().join("study.toml");
    std::fs::write(
        &config,
        format!(
            "split = \"{}\"\nfractions = [0.5, 1.0]\nepochs = 1\nbatch_size = 8\nbootstrap = 20\n\
             [pretrained]\nsimclr = \"{}\"\n",
            split.display(),
            pre.display()
        ),
    )
    .unwrap();
    let study = dir.path().join("study");
    let run_study = || {
        train(&[
            "study",
            "label-efficiency",
            "--config",
            config.to_str().unwrap(),
            "--out",
            study.to_str().unwrap(),
        ])
    };
    let out = run_study();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = std::fs::read_to_string(study.join("table.md")).unwrap();
    assert!(
        table.contains("| scratch |") && table.contains("| simclr |"),
        "{table}"
    );
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(study.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(cells.as_array().unwrap().len(), 4);
    assert!(std::fs::read_to_string(study.join("index.html"))
        .unwrap()
        .contains("<svg"));

    // Resume: finished cells are kept as they are; an interrupted one (no cell.json) is redone.
    let kept = study.join("cells/simclr/f1.0000-s0/cell.json");
    let before = std::fs::metadata(&kept).unwrap().modified().unwrap();
    let interrupted = study.join("cells/scratch/f0.5000-s0");
    std::fs::remove_file(interrupted.join("cell.json")).unwrap();
    let out = run_study();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        before
    );
    assert!(interrupted.join("cell.json").is_file());
    assert!(stderr(&out).contains("study cell") && stderr(&out).matches("study cell").count() == 1);

    // Resumed with other settings: refused, finished cells untouched (the bug: they were reused).
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("epochs = 1", "epochs = 2")).unwrap();
    let out = run_study();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("other settings") && stderr(&out).contains("finetune.epochs"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        before
    );
    std::fs::write(&config, text).unwrap();

    // A report of one evaluated cell: every plot inline.
    let report = dir.path().join("report");
    let out = train(&[
        "report",
        study.join("cells/simclr/f1.0000-s0").to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    for part in [
        "ROC",
        "confusion matrix",
        "reliability",
        "training",
        "Operating points",
    ] {
        assert!(html.contains(part), "{part} missing");
    }
    // A run never evaluated is named with what to do.
    let out = train(&[
        "report",
        pre.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not evaluated yet"),
        "{}",
        stderr(&out)
    );

    // `scratch = false`: only the pretrained rows (adding a row to an existing study), each cell
    // also evaluated on another dataset (the cases as a folder of class sub-folders).
    let site = dir.path().join("site-b");
    for case in 0..16 {
        let class = ["benign", "malignant"][case % 2];
        std::fs::create_dir_all(site.join(class)).unwrap();
        let name = format!("{case}_0.png");
        std::fs::copy(
            dir.path().join("img").join(&name),
            site.join(class).join(name),
        )
        .unwrap();
    }
    let added = dir.path().join("added.toml");
    std::fs::write(
        &added,
        format!(
            "split = \"{}\"\nfractions = [1.0]\nepochs = 1\nbatch_size = 8\nbootstrap = 20\n\
             scratch = false\n[pretrained]\nsimclr = \"{}\"\n\
             [other_data]\nlayout = \"folder\"\npath = \"{}\"\n",
            split.display(),
            pre.display(),
            site.display()
        ),
    )
    .unwrap();
    let added_out = dir.path().join("added");
    let study_args = |config: &std::path::Path| {
        train(&[
            "study",
            "label-efficiency",
            "--config",
            config.to_str().unwrap(),
            "--out",
            added_out.to_str().unwrap(),
        ])
    };
    let out = study_args(&added);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = std::fs::read_to_string(added_out.join("table.md")).unwrap();
    assert!(
        table.contains("| simclr |") && !table.contains("| scratch |"),
        "{table}"
    );
    assert!(table.contains("other dataset: macro AUC"), "{table}");
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(added_out.join("results.json")).unwrap())
            .unwrap();
    assert!(cells[0]["other_auc"]["estimate"].is_f64(), "{cells}");
    // …and without any pretrained row there is nothing to run: a usage-level error.
    let empty = dir.path().join("empty.toml");
    std::fs::write(
        &empty,
        format!(
            "split = \"{}\"\nfractions = [1.0]\nepochs = 1\nscratch = false\n",
            split.display()
        ),
    )
    .unwrap();
    let out = study_args(&empty);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no rows"), "{}", stderr(&out));
}

#[test]
fn quantisation_aware_training_continues_a_fine_tuned_run_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let (pre, ft, qat, bundle) = (
        dir.path().join("pre"),
        dir.path().join("ft"),
        dir.path().join("qat"),
        dir.path().join("b"),
    );
    let out = train(&pretrain_args(
        split.to_str().unwrap(),
        pre.to_str().unwrap(),
        &["--max-steps", "2", "--health-every", "0"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let finetune = |extra: &[&str], out_dir: &std::path::Path| {
        let mut args = vec![
            "finetune",
            "--split",
            split.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ];
        args.extend_from_slice(extra);
        train(&args)
    };
    let out = finetune(&["--pretrained", pre.to_str().unwrap()], &ft);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = finetune(
        &[
            "--qat",
            ft.to_str().unwrap(),
            "--qat-calibration",
            "entropy",
            "--qat-calibration-images",
            "8",
            "--lr",
            "1e-4",
        ],
        &qat,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qat.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["qat"]["calibration"], "entropy", "{config}");
    assert_eq!(
        config["model"],
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(ft.join("config.json")).unwrap()
        )
        .unwrap()["model"]
    );
    // The weights moved (it trained) and the run exports like any other.
    assert_ne!(
        std::fs::read(qat.join("model.mpk")).unwrap(),
        std::fs::read(ft.join("model.mpk")).unwrap()
    );
    let out = export_int8(&qat, &bundle, &["--dicom-frames", "every"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bundle.join("model.i8").is_file());
    // The deployment's frame policy travels in the signed manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["preprocess"]["dicom_frames"], "every",
        "{manifest}"
    );
    // Usage errors: --qat with --pretrained; an unknown calibration method.
    let out = finetune(
        &[
            "--qat",
            ft.to_str().unwrap(),
            "--pretrained",
            pre.to_str().unwrap(),
        ],
        &dir.path().join("x"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = finetune(
        &["--qat", ft.to_str().unwrap(), "--qat-calibration", "kl"],
        &dir.path().join("y"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("entropy"), "{}", stderr(&out));
}

#[test]
fn a_micro_net_trains_exports_to_an_mcu_blob_with_depthwise_layers_and_respects_the_budget() {
    use scanside_int8::blob::write::AlignedBlob;
    use scanside_int8::blob::{Model, Op};

    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 16);
    let (pre, ft, bundle) = (
        dir.path().join("pre"),
        dir.path().join("ft"),
        dir.path().join("b"),
    );
    let out = train(&pretrain_args(
        split.to_str().unwrap(),
        pre.to_str().unwrap(),
        &["--arch", "micro", "--max-steps", "2", "--health-every", "0"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&[
        "finetune",
        "--split",
        split.to_str().unwrap(),
        "--pretrained",
        pre.to_str().unwrap(),
        "--out",
        ft.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let export = |extra: &[&str]| export_int8(&ft, &bundle, extra);
    // A RAM budget below the arena: refused, naming both numbers, nothing written.
    let out = export(&["--ram", "1K"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bytes of RAM, the budget is 1024"),
        "{}",
        stderr(&out)
    );
    assert!(!bundle.exists());
    let out = export(&["--ram", "256K", "--flash", "1M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["int8"]["macs"].as_u64().unwrap() > 0, "{report}");
    let blob = AlignedBlob::new(&std::fs::read(bundle.join("model.i8")).unwrap());
    let model = Model::parse(blob.bytes()).unwrap();
    let depthwise = (0..model.layer_count())
        .filter(|&i| model.layer(i).unwrap().op == Op::DepthwiseConv2d)
        .count();
    assert_eq!(
        depthwise, 8,
        "one depthwise convolution per separable block"
    );
    assert!(bundle.join("model.qdq.onnx").is_file());
}

/// `--config FILE` and flags go through one builder: a flag overrides the file, a file without
/// a learning rate gets the optimiser's default (LARS: 0.3·batch/256) as the flags path does,
/// and `finetune` and `demo` take a config file too.
#[test]
fn flags_override_a_config_file_and_the_optimisers_defaults_apply_to_both() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 8);
    let config = dir.path().join("lars.toml");
    std::fs::write(
        &config,
        format!(
            "split = \"{}\"\noptimizer = \"lars\"\nimage_size = 12\nbatch_size = 8\n\
             epochs = 100\nmax_steps = 50\nhealth_every = 0\ncheckpoint_every = 0\n\
             [model]\nwidth_multiplier = 0.125\n",
            split.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("pre");
    let out = train(&[
        "pretrain",
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["max_steps"], 1, "{saved}");
    assert_eq!(saved["learning_rate"], 0.3 * 8.0 / 256.0, "{saved}");
    assert_eq!(saved["weight_decay"].as_f64().map(|w| w as f32), Some(1e-6));
    assert_eq!(saved["model"]["width_multiplier"], 0.125, "{saved}");
    assert_eq!(losses(&run).len(), 1);

    // A finished run's config.json is a valid settings file for the next stage's flags.
    let finetune_config = dir.path().join("finetune.json");
    std::fs::write(
        &finetune_config,
        format!(
            "{{\"split\": \"{}\", \"pretrained\": \"{}\", \"epochs\": 1, \"batch_size\": 8}}",
            split.display(),
            run.display()
        ),
    )
    .unwrap();
    let ft = dir.path().join("ft");
    let out = train(&[
        "finetune",
        "--config",
        finetune_config.to_str().unwrap(),
        "--out",
        ft.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ft.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["max_steps"], 1, "{saved}");
    // Recorded relative to the run directory, so the run works from any working directory.
    assert_eq!(saved["pretrained"], "../pre", "{saved}");
    assert_eq!(
        ft.join("../pre").canonicalize().unwrap(),
        run.canonicalize().unwrap()
    );

    // Settings that make no valid config are named with the file they came from.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "out = \"x\"\npretrain_epochs = 0\n").unwrap();
    let out = train(&["demo", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bad.toml") && stderr(&out).contains("at least one epoch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn evaluate_on_another_dataset_scores_all_its_images_and_reports_the_shift() {
    let dir = tempfile::tempdir().unwrap();
    let split = write_cases(dir.path(), 40);
    let run = dir.path().join("ft");
    finetune_from_scratch(&split, &run);
    // "Another site": the run's own test images, as a folder of class sub-folders. Same
    // images, another layout: every metric must equal the test partition's.
    let assignments: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&split).unwrap()).unwrap();
    let other = dir.path().join("site-b");
    let mut copied = 0;
    for (id, partition) in assignments["assignments"].as_object().unwrap() {
        if partition != "test" {
            continue;
        }
        let case: usize = id[4..].split('_').next().unwrap().parse().unwrap();
        let class = ["benign", "malignant"][case % 2];
        std::fs::create_dir_all(other.join(class)).unwrap();
        let name = id.replace('/', "-");
        std::fs::copy(dir.path().join(id), other.join(class).join(name)).unwrap();
        copied += 1;
    }
    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--run",
            run.to_str().unwrap(),
            "--bootstrap",
            "50",
        ];
        args.extend_from_slice(extra);
        train(&args)
    };
    let out = evaluate(&["--data", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("shift from the run's own test partition"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval-data-site-b.json")).unwrap())
            .unwrap();
    assert_eq!(report["images"], copied);
    let (theirs, ours) = (&report["other"]["metrics"], &report["own_test"]["metrics"]);
    for exact in ["n", "class_counts", "accuracy", "balanced_accuracy"] {
        assert_eq!(theirs[exact], ours[exact], "{exact}: {report}");
    }
    // Logits may differ in the last bit with the batch an image falls in.
    let auc = |m: &serde_json::Value| m["macro_auc"].as_f64().unwrap();
    assert!((auc(theirs) - auc(ours)).abs() < 1e-6, "{report}");
    assert_eq!(report["shift"]["accuracy"]["estimate"], 0.0);
    assert_eq!(report["groups_shared_with_training"], 0);
    assert!(
        report["other"]["intervals"]["macro_auc"].is_object(),
        "{report}"
    );
    // --partition beside --data is a usage error.
    let out = evaluate(&["--data", other.to_str().unwrap(), "--partition", "val"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The dataset the run was split from is refused, named.
    let manifest = dir.path().join("labels.csv");
    let out = evaluate(&[
        "--data",
        manifest.to_str().unwrap(),
        "--path-column",
        "path",
        "--group-column",
        "patient",
        "--label-column",
        "label",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("split from"), "{}", stderr(&out));
    // A class the model does not know is named.
    std::fs::create_dir_all(other.join("cancer")).unwrap();
    std::fs::copy(dir.path().join("img/0_0.png"), other.join("cancer/x.png")).unwrap();
    let out = evaluate(&["--data", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("classes the model does not know: cancer"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(other.join("cancer")).unwrap();
    // A truncated image is never scored as if whole: the file is named, nothing written.
    std::fs::remove_file(run.join("eval-data-site-b.json")).unwrap();
    let png = std::fs::read(dir.path().join("img/1_0.png")).unwrap();
    std::fs::write(other.join("malignant/truncated.png"), &png[..png.len() / 2]).unwrap();
    let out = evaluate(&["--data", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated.png"), "{}", stderr(&out));
    assert!(!run.join("eval-data-site-b.json").exists());
}
