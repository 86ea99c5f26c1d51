//! The unattended service as it runs beside a scanner: real processes, real signals, a real
//! DICOM peer (dcmtk's storescu/echoscu), a really full file system.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scanside_runtime::fixtures::{write_dicom, DicomFixture};

use crate::util::{write_linear_bundle, write_linear_bundle_edited};

/// A drop folder, a results folder and a signed fixture bundle.
struct Site {
    _root: tempfile::TempDir,
    bundle: PathBuf,
    incoming: PathBuf,
    results: PathBuf,
}

impl Site {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bundle = root.path().join("bundle");
        write_linear_bundle(&bundle);
        let incoming = root.path().join("incoming");
        let results = root.path().join("results");
        fs::create_dir_all(&incoming).unwrap();
        Self {
            bundle,
            incoming,
            results,
            _root: root,
        }
    }

    /// A site whose bundle takes only dermoscopy DICOM (Modality XC or DMS); the fixture
    /// instances are CR.
    fn dermatology() -> Self {
        let site = Self::new();
        write_linear_bundle_edited(&site.bundle, |m| {
            m.input_rules = Some(scanside_runtime::bundle::InputRules {
                dicom: vec![scanside_runtime::bundle::guard::AttributeRule {
                    attribute: scanside_runtime::bundle::guard::DicomAttribute::Modality,
                    accept: vec!["XC".into(), "DMS".into()],
                    allow_missing: false,
                }],
                ..Default::default()
            })
        });
        site
    }

    fn command(&self, subcommand: &str, extra: &[&str]) -> Command {
        let mut cmd = crate::util::scanside_command();
        cmd.arg(subcommand)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--public-key")
            .arg(self.bundle.with_extension("pub"))
            .arg("--out")
            .arg(&self.results)
            .args(["--settle-ms", "0", "--rescan-ms", "100"])
            .args(extra);
        // `watch` and `receive` take the drop folder the same way (`watch` also as its last
        // word: `a_watch_takes_its_folder_as_a_word_too`).
        cmd.arg("--in").arg(&self.incoming);
        cmd
    }

    /// `watch --exit-when-idle` to completion.
    fn watch_until_idle(&self) -> Output {
        self.command("watch", &["--exit-when-idle"])
            .output()
            .unwrap()
    }

    fn spawn(&self, subcommand: &str, extra: &[&str]) -> Child {
        self.command(subcommand, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Drops a file the way a careful writer does: a `.part` name, then a rename.
    fn drop_png(&self, name: &str, level: u8) {
        let part = self.incoming.join(format!("{name}.part"));
        image::RgbImage::from_pixel(9, 7, image::Rgb([level, level, level]))
            .save_with_format(&part, image::ImageFormat::Png)
            .unwrap();
        fs::rename(&part, self.incoming.join(name)).unwrap();
    }

    fn names_in(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Every result file, parsed (panics on torn JSON).
    fn results(&self) -> BTreeMap<String, serde_json::Value> {
        self.names_in(&self.results)
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .map(|n| {
                let text = fs::read_to_string(self.results.join(&n)).unwrap();
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{n} is not whole JSON ({e}): {text:?}"));
                (n, value)
            })
            .collect()
    }

    /// Every audit record, parsed (panics on a torn line).
    fn audit(&self) -> Vec<serde_json::Value> {
        let path = self.results.join("audit.jsonl");
        fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("torn audit line {l:?}: {e}"))
            })
            .collect()
    }

    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: Child) -> Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

#[test]
fn watch_screens_each_file_once_fails_bad_ones_with_a_reason_and_skips_resent_bytes() {
    let site = Site::new();
    site.drop_png("bright.png", 240);
    let dcm = site.incoming.join("ct.dcm.part");
    write_dicom(
        &dcm,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &[4000; 16],
            rows: 4,
            cols: 4,
            window: None,
            patient_id: Some("PAT-7"),
            sop_instance_uid: Some("1.2.3.4.5"),
            study_uid: None,
        },
    );
    fs::rename(&dcm, site.incoming.join("ct.dcm")).unwrap();
    fs::write(
        site.incoming.join("broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    // Still being written: never taken.
    fs::write(site.incoming.join("late.png.part"), b"half").unwrap();

    let out = site.watch_until_idle();
    // A failed input makes a batch run exit 1; the others are still screened.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("broken.png"), "{}", stderr(&out));
    let results = site.results();
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        ["bright.png.json", "ct.dcm.json"]
    );
    assert_eq!(results["bright.png.json"]["top_class"], "bright");
    assert_eq!(
        results["ct.dcm.json"]["dicom"]["sop_instance_uid"],
        "1.2.3.4.5"
    );
    assert_eq!(results["ct.dcm.json"]["dicom"]["patient_id"], "PAT-7");
    assert_eq!(
        site.names_in(&site.incoming),
        ["late.png.part"],
        "only the partial file stays"
    );
    let done = site.names_in(&site.incoming.join("done"));
    assert_eq!(done.len(), 2, "{done:?}");
    let failed = site.names_in(&site.incoming.join("failed"));
    assert_eq!(failed.len(), 2, "the input and its reason: {failed:?}");
    let reason = failed.iter().find(|n| n.ends_with(".reason.txt")).unwrap();
    let reason = fs::read_to_string(site.incoming.join("failed").join(reason)).unwrap();
    assert!(
        reason.contains("broken.png") && reason.contains("decode"),
        "{reason}"
    );

    let screened = site.events("screened");
    assert_eq!(screened.len(), 2);
    let ct = screened
        .iter()
        .find(|r| r["input"].as_str().unwrap().ends_with("ct.dcm"))
        .unwrap();
    assert_eq!(ct["dicom"]["sop_instance_uid"], "1.2.3.4.5");
    assert_eq!(ct["model_verified"], true);
    assert_eq!(ct["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(ct["input_sha256"].as_str().unwrap().len(), 64);
    assert!(ct["timings"]["infer_ms"].is_number());
    assert_eq!(site.events("failed").len(), 1);
    assert_eq!(site.events("service_start").len(), 1);
    assert_eq!(site.events("service_stop").len(), 1);

    // The scanner sends the same image again: recorded, not screened twice. A new image of an
    // old name gets its own result beside the first.
    site.drop_png("bright.png", 240);
    site.drop_png("dark.png", 10);
    let out = site.watch_until_idle();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(site.events("duplicate").len(), 1);
    assert_eq!(site.events("screened").len(), 3);
    assert_eq!(site.results().len(), 3);
    site.drop_png("dark.png", 20);
    let out = site.watch_until_idle();
    assert!(out.status.success(), "{}", stderr(&out));
    let results = site.results();
    assert_eq!(results.len(), 4, "{:?}", results.keys());
    assert_eq!(
        results
            .keys()
            .filter(|k| k.starts_with("dark.png.") && k.ends_with(".json"))
            .count(),
        2
    );
}

#[test]
fn a_second_service_on_the_same_folder_is_refused() {
    let site = Site::new();
    let first = site.spawn("watch", &[]);
    wait_until(
        "the first service to start",
        Duration::from_secs(30),
        || !site.events("service_start").is_empty(),
    );
    let second = site.watch_until_idle();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another scanside service"),
        "{}",
        stderr(&second)
    );
    let out = terminate(first);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The crash test: 1,000 images, the service killed with SIGKILL at random moments,
/// restarted each time; at the end every input has exactly one result and one audit record,
/// nothing is torn, nothing is lost.
/// A seeded generator of kill moments (xorshift64), its seed printed so that a failing
/// schedule can be replayed with `SCANSIDE_CRASH_SEED`.
fn crash_schedule() -> impl FnMut() -> u64 {
    let seed = std::env::var("SCANSIDE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash schedule seed {seed} (SCANSIDE_CRASH_SEED={seed} replays it)");
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_reports_nothing_twice() {
    const IMAGES: usize = 1000;
    let site = Site::new();
    for i in 0..IMAGES {
        // Distinct bytes per image (no duplicates to skip): the level and the size vary.
        let part = site.incoming.join(format!("img{i:04}.png.part"));
        let side = 4 + (i / 256) as u32;
        image::GrayImage::from_pixel(side, side, image::Luma([(i % 256) as u8]))
            .save_with_format(&part, image::ImageFormat::Png)
            .unwrap();
        fs::rename(&part, site.incoming.join(format!("img{i:04}.png"))).unwrap();
    }
    let mut next = crash_schedule();
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = site.spawn("watch", &["--exit-when-idle"]);
        let before = site.results().len();
        // Kill after some progress, at a random moment within an item.
        let target = (before + 20 + (next() % 120) as usize).min(IMAGES - 1);
        let start = Instant::now();
        while site.names_in(&site.results).len() < target
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_micros(next() % 3000));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 5, "only {kills} kills landed");
    let out = site.watch_until_idle();
    assert!(out.status.success(), "{}", stderr(&out));

    let results = site.results();
    let expected: HashSet<String> = (0..IMAGES).map(|i| format!("img{i:04}.png.json")).collect();
    let got: HashSet<String> = results.keys().cloned().collect();
    assert_eq!(
        got, expected,
        "exactly one result per input, named after it"
    );
    for (name, value) in &results {
        assert!(
            value["claim_id"].is_string() && value["top_class"].is_string(),
            "{name}"
        );
    }
    assert!(
        site.names_in(&site.incoming).is_empty(),
        "inputs left behind"
    );
    assert!(
        site.names_in(&site.incoming.join(".scanside-work"))
            .iter()
            .all(|n| n == "lock"),
        "items left in the work area"
    );
    assert_eq!(site.names_in(&site.incoming.join("done")).len(), IMAGES);
    let screened = site.events("screened");
    let inputs: HashSet<&str> = screened
        .iter()
        .map(|r| r["input"].as_str().unwrap())
        .collect();
    assert_eq!(screened.len(), IMAGES, "one audit record per input");
    assert_eq!(inputs.len(), IMAGES);
    // Each result is the one its audit record names.
    for record in &screened {
        let file = Path::new(record["result_file"].as_str().unwrap());
        let name = file.file_name().unwrap().to_string_lossy();
        assert_eq!(results[name.as_ref()]["claim_id"], record["claim_id"]);
    }
    // The kills landed inside items, not only between them: restarts found work to finish.
    let recovered: Vec<u64> = site
        .events("service_start")
        .iter()
        .map(|r| r["detail"]["recovered"].as_u64().unwrap())
        .collect();
    assert!(recovered.iter().sum::<u64>() >= 1, "{recovered:?}");
    eprintln!(
        "{kills} SIGKILLs; items in flight found at each start {recovered:?}; {IMAGES} inputs, \
         {IMAGES} results, {IMAGES} audit records"
    );
}

#[test]
fn sigterm_finishes_the_current_image_and_stops_cleanly() {
    let site = Site::new();
    for i in 0..300_u32 {
        // Distinct bytes (no duplicates, which get no result file of their own).
        let part = site.incoming.join(format!("p{i:03}.png.part"));
        image::RgbImage::from_pixel(9, 7, image::Rgb([(i % 256) as u8, (i / 256) as u8, 7]))
            .save_with_format(&part, image::ImageFormat::Png)
            .unwrap();
        fs::rename(&part, site.incoming.join(format!("p{i:03}.png"))).unwrap();
    }
    let child = site.spawn("watch", &[]);
    wait_until("some results", Duration::from_secs(60), || {
        site.names_in(&site.results).len() > 5
    });
    let out = terminate(child);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = site.results();
    assert_eq!(
        summary["screened"].as_u64().unwrap() as usize,
        results.len()
    );
    assert_eq!(site.events("service_stop").len(), 1);
    let work = site.names_in(&site.incoming.join(".scanside-work"));
    assert_eq!(work, ["lock"], "nothing half-done after SIGTERM");
    assert_eq!(
        site.names_in(&site.incoming).len() + results.len(),
        300,
        "every image is either done or still waiting"
    );
}

/// Mounts a tmpfs of `kib` KiB at `dir`; `None` when this machine does not allow it.
fn mount_tmpfs(dir: &Path, kib: usize) -> Option<TmpfsMount> {
    fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| TmpfsMount(dir.to_path_buf()))
}

struct TmpfsMount(PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_output_volume_keeps_the_input_pending_and_recovers_when_space_returns() {
    let site = Site::new();
    let Some(_mount) = mount_tmpfs(&site.results, 64) else {
        eprintln!(
            "SKIPPED a_full_output_volume_...: cannot mount a tmpfs here (needs root or \
             CAP_SYS_ADMIN); CI runs as root"
        );
        return;
    };
    // Fill the volume.
    let filler = site.results.join("filler");
    let chunk = vec![0_u8; 4096];
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        while f.write_all(&chunk).is_ok() {}
    }
    site.drop_png("scan.png", 200);
    let child = site.spawn("watch", &[]);
    let work = site.incoming.join(".scanside-work");
    wait_until("the claim", Duration::from_secs(60), || {
        site.names_in(&work).len() == 2
    });
    // Several write attempts fail meanwhile (backoff 0.25 s, 0.5 s, 1 s...).
    std::thread::sleep(Duration::from_secs(2));
    assert!(site.results().is_empty());
    assert!(
        site.names_in(&site.incoming.join("done")).is_empty(),
        "the input must not be marked done"
    );
    let pending = site.names_in(&site.incoming.join(".scanside-work"));
    assert_eq!(
        pending.len(),
        2,
        "the input waits in the work area: {pending:?}"
    );
    // Space returns.
    fs::remove_file(&filler).unwrap();
    wait_until("the pending result", Duration::from_secs(60), || {
        site.names_in(&site.incoming.join("done")).len() == 1
    });
    let out = terminate(child);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("No space left on device") && err.contains("scan.png"),
        "{err}"
    );
    assert_eq!(site.results().len(), 1);
    assert_eq!(site.events("screened").len(), 1);
}

fn dcmtk_missing() -> bool {
    ["storescu", "echoscu"].iter().any(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map_or(true, |o| !o.status.success())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn receive_stores_what_storescu_sends_screens_it_and_refuses_unknown_senders() {
    let site = Site::new();
    let Some((child, dcmtk)) = start_receiver(&site, &["--allow-calling-ae", "MODALITY"]) else {
        return;
    };
    let echo = dcmtk.run("echoscu", "MODALITY", &[]);
    assert!(echo.status.success(), "C-ECHO: {}", stderr(&echo));

    let sent = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let path = sent.path().join(format!("img{i}.dcm"));
            let uid = format!("1.2.826.0.1.3680043.2.1125.9.{i}");
            write_dicom(
                &path,
                &DicomFixture {
                    photometric: "MONOCHROME2",
                    pixels: &[1000 * (i as u16 + 1); 16],
                    rows: 4,
                    cols: 4,
                    window: None,
                    patient_id: Some("PAT-1"),
                    sop_instance_uid: Some(&uid),
                    study_uid: Some("1.2.826.0.1.3680043.2.1125.77"),
                },
            );
            path
        })
        .collect();
    let store = dcmtk.run("storescu", "MODALITY", &files);
    assert!(store.status.success(), "C-STORE: {}", stderr(&store));
    // The audit record is the commit point: the result and the study file are written by then.
    wait_until("three committed results", Duration::from_secs(60), || {
        site.events("screened").len() == 3
    });
    let results = site.results();
    for i in 0..3 {
        let name = format!("1.2.826.0.1.3680043.2.1125.9.{i}.dcm.json");
        let result = &results[&name];
        assert_eq!(result["dicom"]["patient_id"], "PAT-1", "{name}");
        assert_eq!(result["model_verified"], true);
    }
    // One study result folds the three images together.
    let study_path = site
        .results
        .join("studies/1.2.826.0.1.3680043.2.1125.77.json");
    let study: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&study_path).unwrap()).unwrap();
    let instances = study["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3);
    for class in ["dark", "bright"] {
        let best = results
            .values()
            .map(|r| r["probabilities"][class].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert!((study["probabilities"][class].as_f64().unwrap() - best).abs() < 1e-6);
    }
    // The stored files are the sent instances: same pixels, same identity.
    let original = fs::read(&files[0]).unwrap();
    let done = site.names_in(&site.incoming.join("done"));
    let stored = done.iter().find(|n| n.ends_with(".9.0.dcm")).unwrap();
    let stored = fs::read(site.incoming.join("done").join(stored)).unwrap();
    let tail = &original[original.len() - 32..];
    assert!(stored.ends_with(tail), "pixel data stored as received");
    assert_eq!(site.events("received").len(), 3);

    // Not on the allow-list: refused, audited, nothing stored.
    let intruder = dcmtk.run("storescu", "INTRUDER", &files[..1]);
    assert!(!intruder.status.success());
    wait_until(
        "the refusal in the audit log",
        Duration::from_secs(10),
        || !site.events("association_rejected").is_empty(),
    );
    assert_eq!(site.events("received").len(), 3);
    let out = terminate(child);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `receive` on a free port with `extra` arguments, and a runner of dcmtk's `storescu` /
/// `echoscu` against it (tool, calling AE title, files); `None` when dcmtk is missing.
fn start_receiver(site: &Site, extra: &[&str]) -> Option<(Child, Dcmtk)> {
    if dcmtk_missing() {
        eprintln!(
            "SKIPPED receive_...: dcmtk's storescu/echoscu not installed (apt install dcmtk)"
        );
        return None;
    }
    let port = free_port().to_string();
    let mut args = vec![
        "--port",
        &port,
        "--listen",
        "127.0.0.1",
        "--ae-title",
        "SCANSIDE",
    ];
    args.extend_from_slice(extra);
    let child = site.spawn("receive", &args);
    wait_until("the port to open", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok()
    });
    Some((child, Dcmtk { port }))
}

/// Runs dcmtk's `storescu` / `echoscu` against the receiver on `port`.
struct Dcmtk {
    port: String,
}

impl Dcmtk {
    fn run(&self, tool: &str, calling: &str, files: &[PathBuf]) -> Output {
        self.run_tool(tool, &[], calling, files)
    }

    /// `storescu` with `options` (e.g. `-xi`: propose implicit VR little endian only).
    fn run_with(&self, options: &[&str], calling: &str, files: &[PathBuf]) -> Output {
        self.run_tool("storescu", options, calling, files)
    }

    fn run_tool(&self, tool: &str, options: &[&str], calling: &str, files: &[PathBuf]) -> Output {
        // -v: the response status ("Refused: OutOfResources") is only logged verbosely.
        Command::new(tool)
            .args(options)
            .args([
                "-v",
                "-aet",
                calling,
                "-aec",
                "SCANSIDE",
                "127.0.0.1",
                &self.port,
            ])
            .args(files)
            .output()
            .unwrap()
    }
}

/// A small DICOM instance to send, `UID.sent`, in `study` when given.
fn write_instance(dir: &Path, uid: &str, study: Option<&str>) -> PathBuf {
    let path = dir.join(format!("{uid}.sent"));
    write_dicom(
        &path,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &[500; 16],
            rows: 4,
            cols: 4,
            window: None,
            patient_id: Some("PAT-2"),
            sop_instance_uid: Some(uid),
            study_uid: study,
        },
    );
    path
}

/// What storescu printed, for its report of the C-STORE status.
fn refused_out_of_resources(o: &Output) -> bool {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o)).to_lowercase();
    text.contains("outofresources") || text.contains("0xa700")
}

#[test]
fn receive_answers_out_of_resources_when_it_cannot_store_or_audit_and_keeps_nothing() {
    let site = Site::new();
    let Some((child, dcmtk)) = start_receiver(&site, &[]) else {
        return;
    };
    let send = |files: &[PathBuf]| dcmtk.run("storescu", "MODALITY", files);
    let sent = tempfile::tempdir().unwrap();
    let uid = "1.2.826.0.1.3680043.2.1125.9.50";
    let instance = write_instance(sent.path(), uid, None);
    let stored = site.incoming.join(format!("{uid}.dcm"));

    // The store fails (a folder holds the instance's name): "out of resources", nothing audited.
    fs::create_dir(&stored).unwrap();
    let out = send(std::slice::from_ref(&instance));
    assert!(refused_out_of_resources(&out), "{}", stderr(&out));
    assert!(site.events("received").is_empty());
    fs::remove_dir(&stored).unwrap();

    // Stored, but the audit log cannot take its record (the bug: the failure was dropped and the
    // instance accepted unaudited): refused, and the stored file taken back.
    let audit = site.results.join("audit.jsonl");
    let _ = fs::remove_file(&audit);
    fs::create_dir_all(&audit).unwrap();
    let out = send(std::slice::from_ref(&instance));
    assert!(refused_out_of_resources(&out), "{}", stderr(&out));
    assert!(!stored.exists(), "an unaudited instance was kept");
    fs::remove_dir(&audit).unwrap();

    // Both causes gone: the resent instance is stored, audited and screened once.
    let out = send(std::slice::from_ref(&instance));
    assert!(!refused_out_of_resources(&out), "{}", stderr(&out));
    wait_until("the screened instance", Duration::from_secs(60), || {
        site.events("screened").len() == 1
    });
    assert_eq!(site.events("received").len(), 1);
    let out = terminate(child);
    let err = stderr(&out);
    assert!(
        err.contains("cannot store") && err.contains("the audit log cannot record it"),
        "{err}"
    );
}

/// The two crash windows, set up by hand: an item whose audit record was written before the
/// crash is only moved on (no second result or record); one without a record is screened
/// again, and a temp file the crash left in the results folder is removed.
#[test]
fn restart_finishes_committed_items_without_rescreening_and_redoes_the_others() {
    let site = Site::new();
    let work = site.incoming.join(".scanside-work");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&site.results).unwrap();
    for name in [
        "00000000000000000001--committed.png",
        "00000000000000000002--torn.png",
    ] {
        image::RgbImage::from_pixel(9, 7, image::Rgb([200, 200, 200]))
            .save_with_format(work.join(name), image::ImageFormat::Png)
            .unwrap();
    }
    let record = serde_json::json!({
        "time": "2026-11-23T00:00:00.000Z",
        "event": "screened",
        "claim_id": "00000000000000000001",
        "input": site.incoming.join("committed.png"),
        "input_sha256": "0".repeat(64),
        "model_sha256": "0".repeat(64),
        "result_file": site.results.join("committed.png.json"),
    });
    fs::write(site.results.join("audit.jsonl"), format!("{record}\n")).unwrap();
    fs::write(
        site.results.join(".torn.png.json.4242.part"),
        b"{\"claim_id\": \"0000",
    )
    .unwrap();

    let out = site.watch_until_idle();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        site.names_in(&site.results),
        ["audit.jsonl", "torn.png.json"],
        "no second result for the committed item, no temp file left"
    );
    assert_eq!(
        site.results()["torn.png.json"]["claim_id"],
        "00000000000000000002"
    );
    assert_eq!(
        site.names_in(&site.incoming.join("done")),
        [
            "00000000000000000001--committed.png",
            "00000000000000000002--torn.png"
        ]
    );
    let screened = site.events("screened");
    assert_eq!(screened.len(), 2, "the old record and the redo's");
    assert_eq!(site.events("service_start")[0]["detail"]["recovered"], 2);
}

/// A chest film sent to a dermatology box: stored and reported `not_applicable` (audited, the
/// study counting it apart, no flags); with `--refuse-not-applicable`, refused at reception
/// (0x0122, audited) and never stored.
#[test]
fn receive_reports_instances_the_model_is_not_for_or_refuses_them_when_told() {
    let site = Site::dermatology();
    let Some((child, dcmtk)) = start_receiver(&site, &[]) else {
        return;
    };
    let sent = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.2.1125.78";
    let instance = write_instance(sent.path(), "1.2.826.0.1.3680043.2.1125.9.60", Some(study));
    let out = dcmtk.run("storescu", "MODALITY", std::slice::from_ref(&instance));
    assert!(out.status.success(), "C-STORE: {}", stderr(&out));
    wait_until("the committed result", Duration::from_secs(60), || {
        site.events("screened").len() == 1
    });
    let record = &site.events("screened")[0];
    assert_eq!(record["status"], "not_applicable");
    assert!(
        record["refused_by"].as_str().unwrap().contains("Modality"),
        "{record}"
    );
    let study_file = site.results.join("studies").join(format!("{study}.json"));
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(&study_file).unwrap()).unwrap();
    assert_eq!(
        (
            summary["screened"].as_u64(),
            summary["not_applicable"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert!(summary.get("top_class").is_none() && summary["flags"] == serde_json::json!([]));
    terminate(child);

    let Some((child, dcmtk)) = start_receiver(&site, &["--refuse-not-applicable"]) else {
        return;
    };
    let uid = "1.2.826.0.1.3680043.2.1125.9.61";
    let instance = write_instance(sent.path(), uid, Some(study));
    let out = dcmtk.run("storescu", "MODALITY", std::slice::from_ref(&instance));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)).to_lowercase();
    assert!(
        said.contains("0x0122") || said.contains("sopclassnotsupported"),
        "{said}"
    );
    wait_until(
        "the refusal's audit record",
        Duration::from_secs(30),
        || site.events("instance_refused").len() == 1,
    );
    let refused = &site.events("instance_refused")[0];
    assert!(
        refused["refused_by"].as_str().unwrap().contains("\"CR\""),
        "{refused}"
    );
    assert!(!site.incoming.join(format!("{uid}.dcm")).exists());
    terminate(child);
}

#[test]
fn a_watch_takes_its_folder_as_a_word_too() {
    let site = Site::new();
    let mut cmd = crate::util::scanside_command();
    let out = cmd
        .arg("watch")
        .arg("--bundle")
        .arg(&site.bundle)
        .arg("--public-key")
        .arg(site.bundle.with_extension("pub"))
        .arg("--out")
        .arg(&site.results)
        .args(["--settle-ms", "0", "--exit-when-idle"])
        .arg(&site.incoming)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let both = crate::util::scanside_command()
        .args([
            "watch",
            "--in",
            "a",
            "b",
            "--out",
            "c",
            "--bundle",
            "d",
            "--allow-unsigned",
        ])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
}

/// A file's data set as dcmtk's `dcmdump` reads it — every element in full — without group
/// lengths (a sender may add or drop them); the transfer syntax is checked apart.
fn dataset_dump(file: &Path) -> String {
    let out = Command::new("dcmdump")
        .args(["-q", "+L"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dcmdump {}: {}",
        file.display(),
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let data_set = text.split("# Dicom-Data-Set").nth(1).unwrap_or_default();
    data_set
        .lines()
        .filter(|l| !l.starts_with("# Used TransferSyntax"))
        .filter(|l| !l.trim_start().starts_with('(') || !l.trim_start()[5..].starts_with("0000)"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Transfer Syntax UID of a Part 10 file's meta group, (0002,0010) UI.
fn stored_syntax(file: &[u8]) -> String {
    let tag = b"\x02\x00\x10\x00UI";
    let at = file
        .windows(6)
        .position(|w| w == tag)
        .expect("(0002,0010) in the meta group");
    let length = u16::from_le_bytes([file[at + 6], file[at + 7]]) as usize;
    String::from_utf8_lossy(&file[at + 8..at + 8 + length])
        .trim_end_matches('\0')
        .to_string()
}

/// One instance in each transfer syntax the decoder reads, made by dcmtk from one fixture, sent
/// by storescu proposing only that syntax: each is stored in that syntax with the data set
/// it sent, element for element (pixel data fragments included), and screened — or, for 12-bit
/// lossy JPEG, refused by the decoder with its reason.
#[test]
fn receive_stores_every_transfer_syntax_as_sent_and_screens_it() {
    let site = Site::new();
    let Some((child, dcmtk)) = start_receiver(&site, &[]) else {
        return;
    };
    let sent = tempfile::tempdir().unwrap();
    let source = sent.path().join("source.dcm");
    let pixels: Vec<u16> = (0..256).map(|i| (i * 13 % 4096) as u16).collect();
    write_dicom(
        &source,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &pixels,
            rows: 16,
            cols: 16,
            window: None,
            patient_id: Some("PAT-TS"),
            sop_instance_uid: Some("1.2.826.0.1.3680043.2.1125.9.70"),
            study_uid: None,
        },
    );
    // (transfer syntax, dcmtk tool and options, storescu's option proposing that syntax only:
    // storescu converts between uncompressed syntaxes unless told); each variant gets its own
    // SOP Instance UID.
    // Deflated data sets are the exception: the receiver does not negotiate deflate, so storescu
    // falls back to explicit VR little endian and the same elements arrive in that syntax.
    // Not here: JPEG 2000, which this dcmtk cannot encode. Lossy JPEG keeps its SOP Instance UID
    // (`+un`: dcmcjpeg gives a lossy copy a new one by default).
    let variants: [(&str, &str, &[&str], &str); 7] = [
        ("1.2.840.10008.1.2.1", "dcmconv", &["+te"], "-xe"),
        ("1.2.840.10008.1.2", "dcmconv", &["+ti"], "-xi"),
        ("1.2.840.10008.1.2.1.99", "dcmconv", &["+td"], "-xd"),
        ("1.2.840.10008.1.2.5", "dcmcrle", &[], "-xr"),
        ("1.2.840.10008.1.2.4.70", "dcmcjpeg", &[], "-xs"),
        ("1.2.840.10008.1.2.4.51", "dcmcjpeg", &["+ee", "+un"], "-xx"),
        ("1.2.840.10008.1.2.4.80", "dcmcjpls", &[], "-xt"),
    ];
    let mut files = Vec::new();
    for (k, (syntax, tool, options, propose)) in variants.iter().enumerate() {
        let uid = format!("1.2.826.0.1.3680043.2.1125.9.7{k}1");
        let renamed = sent.path().join(format!("renamed-{k}.dcm"));
        let status = Command::new("dcmodify")
            .args(["-nb", "-m", &format!("(0008,0018)={uid}")])
            .arg(&source)
            .output()
            .unwrap();
        assert!(status.status.success(), "dcmodify: {}", stderr(&status));
        fs::copy(&source, &renamed).unwrap();
        let encoded = sent.path().join(format!("{k}.dcm"));
        let out = Command::new(tool)
            .args(*options)
            .arg(&renamed)
            .arg(&encoded)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool}: {}", stderr(&out));
        files.push((syntax.to_string(), uid, encoded, *propose));
    }
    for (syntax, uid, file, propose) in &files {
        let out = dcmtk.run_with(&[propose], "MODALITY", std::slice::from_ref(file));
        assert!(out.status.success(), "{syntax}: {}", stderr(&out));
        let stored = site.incoming.join(format!("{uid}.dcm"));
        let done = |event: &str| {
            site.events(event)
                .into_iter()
                .find(|r| r["dicom"]["sop_instance_uid"] == uid.as_str())
        };
        wait_until(&format!("{syntax} done"), Duration::from_secs(60), || {
            done("screened").is_some() || done("failed").is_some()
        });
        // 12-bit lossy JPEG is stored like the others, and refused by the decoder with the
        // reason (the pure-Rust JPEG decoders read 8-bit DCT only); everything else screens.
        let record = if syntax == "1.2.840.10008.1.2.4.51" {
            let failed = done("failed").expect("12-bit lossy JPEG is refused");
            let error = failed["error"].as_str().unwrap_or_default();
            assert!(error.contains("12-bit"), "{error}");
            failed
        } else {
            assert!(done("failed").is_none(), "{syntax}: {:?}", done("failed"));
            done("screened").unwrap()
        };
        let moved = PathBuf::from(record["moved_to"].as_str().unwrap());
        let (sent_dump, kept_dump) = (dataset_dump(file), dataset_dump(&moved));
        assert!(
            sent_dump == kept_dump,
            "{syntax}: the stored data set ({}) differs from the one sent:\n{sent_dump}\n---\n{kept_dump}",
            stored.display()
        );
        let expected = match syntax.as_str() {
            "1.2.840.10008.1.2.1.99" => "1.2.840.10008.1.2.1",
            other => other,
        };
        assert_eq!(
            stored_syntax(&fs::read(&moved).unwrap()),
            expected,
            "{syntax}"
        );
    }
    assert_eq!(
        site.events("failed").len(),
        1,
        "{:?}",
        site.events("failed")
    );
    terminate(child);
}

/// A fixture instance of `study` / `series` for a patient named `name` (the fixture writer
/// knows neither series nor names: added here, as a modality would have them).
fn write_study_instance(dir: &Path, uid: &str, study: &str, series: &str, name: &str) -> PathBuf {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let path = write_instance(dir, uid, Some(study));
    let mut obj = dicom_object::open_file(&path).unwrap();
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    for (tag, vr, value) in [
        (tags::SERIES_INSTANCE_UID, VR::UI, series),
        (tags::PATIENT_NAME, VR::PN, name),
        (tags::ACCESSION_NUMBER, VR::SH, "ACC-7"),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }
    let dcm = path.with_extension("dcm");
    obj.write_to_file(&dcm).unwrap();
    fs::remove_file(&path).unwrap();
    dcm
}

/// The reports in `OUT/sr/`, read back with dicom-rs.
fn read_reports(site: &Site) -> Vec<(PathBuf, dicom_object::DefaultDicomObject)> {
    let dir = site.results.join("sr");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let obj =
                dicom_object::open_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, obj)
        })
        .collect()
}

fn text_of(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// The SOP Instance UIDs a report's evidence sequence references.
fn evidence_uids(obj: &dicom_object::InMemDicomObject) -> Vec<String> {
    use dicom_dictionary_std::tags;
    let mut uids = Vec::new();
    let study = obj
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap();
    for study in study.items().unwrap() {
        for series in study
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
        {
            for sop in series
                .element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
            {
                assert_eq!(
                    text_of(sop, tags::REFERENCED_SOP_CLASS_UID),
                    "1.2.840.10008.5.1.4.1.1.7",
                    "the source's SOP class"
                );
                uids.push(text_of(sop, tags::REFERENCED_SOP_INSTANCE_UID));
            }
        }
    }
    uids.sort();
    uids
}

/// dcmtk's `dsrdump` must parse the report without a warning and show its content.
fn check_with_dsrdump(file: &Path, expected: &[&str]) {
    let out = Command::new("dsrdump").arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dsrdump {}: {}",
        file.display(),
        stderr(&out)
    );
    let complaints = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
        // dcmtk's value checker knows no UTF-8 (the report's character set); not a defect.
        .filter(|l| !l.contains("does not support this Specific Character Set: ISO_IR 192"))
        .count();
    assert!(
        complaints == 0,
        "dsrdump warned on {}: {}",
        file.display(),
        stderr(&out)
    );
    for want in expected {
        assert!(text.contains(want), "dsrdump shows no {want:?}:\n{text}");
    }
}

/// pydicom must read the report and find the same patient, study and content tree.
fn check_with_pydicom(file: &Path, patient: &str, study: &str) -> bool {
    const SCRIPT: &str = "import sys, pydicom\n\
        ds = pydicom.dcmread(sys.argv[1])\n\
        assert ds.SOPClassUID == '1.2.840.10008.5.1.4.1.1.88.33', ds.SOPClassUID\n\
        assert str(ds.PatientName) == sys.argv[2], ds.PatientName\n\
        assert ds.StudyInstanceUID == sys.argv[3]\n\
        assert ds.ValueType == 'CONTAINER' and ds.Modality == 'SR'\n\
        names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in ds.ContentSequence]\n\
        assert 'Probability' in [c.ConceptNameCodeSequence[0].CodeMeaning\n\
            for i in ds.ContentSequence if i.ValueType == 'CONTAINER' for c in i.ContentSequence], names\n\
        print('ok', len(names))\n";
    let Ok(out) = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(file)
        .args([patient, study])
        .output()
    else {
        return false;
    };
    if stderr(&out).contains("No module named 'pydicom'") {
        return false;
    }
    assert!(
        out.status.success(),
        "pydicom on {}: {}",
        file.display(),
        stderr(&out)
    );
    true
}

/// `watch --sr` writes one Comprehensive SR per study (and per instance when asked): the
/// patient and study copied, every source instance referenced, a probability per class, new
/// UIDs under the configured root; dcmtk and pydicom read it. A report is never written twice
/// (a one-instance study's report is its instance's report; a restart writes nothing again);
/// a study that gains an instance gets a new report in the same series.
#[test]
fn watch_writes_a_dicom_sr_per_study_that_dcmtk_and_pydicom_read_and_never_twice() {
    let site = Site::new();
    write_linear_bundle_edited(&site.bundle, |m| {
        m.calibration = Some(scanside_runtime::bundle::Calibration {
            temperature: 1.0,
            target_sensitivity: 0.9,
            thresholds: vec![None, Some(0.01)],
        })
    });
    let (study_a, study_b) = ("1.2.3.4.100", "1.2.3.4.200");
    write_study_instance(
        &site.incoming,
        "1.2.3.4.101",
        study_a,
        "1.2.3.4.110",
        "Müller^Anna",
    );
    write_study_instance(
        &site.incoming,
        "1.2.3.4.102",
        study_a,
        "1.2.3.4.110",
        "Müller^Anna",
    );
    write_study_instance(
        &site.incoming,
        "1.2.3.4.201",
        study_b,
        "1.2.3.4.210",
        "Doe^John",
    );
    let root = "1.2.826.0.1.3680043.10.999";
    let sr_flags = [
        "--exit-when-idle",
        "--sr",
        "--sr-per-instance",
        "--sr-uid-root",
        root,
    ];
    let out = site.command("watch", &sr_flags).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Study B's report says what its one instance's report says: the same object, one file.
    let reports = read_reports(&site);
    assert_eq!(reports.len(), 4, "study A's report and 3 instance reports");
    assert_eq!(site.events("report_written").len(), 4);
    let a = reports
        .iter()
        .find(|(_, r)| evidence_uids(r) == ["1.2.3.4.101", "1.2.3.4.102"])
        .expect("study A's report references both of its instances");
    {
        use dicom_dictionary_std::tags;
        let (file, obj) = a;
        assert_eq!(
            text_of(obj, tags::SOP_CLASS_UID),
            "1.2.840.10008.5.1.4.1.1.88.33"
        );
        assert_eq!(text_of(obj, tags::STUDY_INSTANCE_UID), study_a);
        assert_eq!(text_of(obj, tags::PATIENT_NAME), "Müller^Anna");
        assert_eq!(text_of(obj, tags::PATIENT_ID), "PAT-2");
        assert_eq!(text_of(obj, tags::ACCESSION_NUMBER), "ACC-7");
        let uid = text_of(obj, tags::SOP_INSTANCE_UID);
        assert!(
            uid.starts_with(root) && file.ends_with(format!("{uid}.dcm")),
            "{uid}"
        );
        assert!(text_of(obj, tags::SERIES_INSTANCE_UID).starts_with(root));
        if dcmtk_missing() {
            eprintln!("SKIPPED dsrdump check of the SR: dcmtk not installed (apt install dcmtk)");
        } else {
            check_with_dsrdump(
                file,
                &[
                    "Not for diagnostic use",
                    "Probability",
                    "bright",
                    "Screening threshold",
                    "sha256:",
                ],
            );
        }
        if !check_with_pydicom(file, "Müller^Anna", study_a) {
            eprintln!("SKIPPED pydicom check of the SR: pydicom not installed (tools/setup.sh)");
        }
    }
    let series_of = |study: &str| -> HashSet<String> {
        read_reports(&site)
            .iter()
            .filter(|(_, r)| text_of(r, dicom_dictionary_std::tags::STUDY_INSTANCE_UID) == study)
            .map(|(_, r)| text_of(r, dicom_dictionary_std::tags::SERIES_INSTANCE_UID))
            .collect()
    };
    assert_eq!(
        series_of(study_b).len(),
        1,
        "one series per study and model"
    );

    // A restart (the study results unchanged) writes nothing again.
    let again = site.command("watch", &sr_flags).output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(read_reports(&site).len(), 4);
    assert_eq!(site.events("report_written").len(), 4);

    // Study B gains an instance: a new study report and an instance report, same series.
    write_study_instance(
        &site.incoming,
        "1.2.3.4.202",
        study_b,
        "1.2.3.4.210",
        "Doe^John",
    );
    let more = site.command("watch", &sr_flags).output().unwrap();
    assert!(more.status.success(), "{}", stderr(&more));
    assert_eq!(read_reports(&site).len(), 6);
    assert_eq!(series_of(study_b).len(), 1);
    assert!(read_reports(&site)
        .iter()
        .any(|(_, r)| evidence_uids(r) == ["1.2.3.4.201", "1.2.3.4.202"]));
}

/// A data set's elements and values as dcmdump shows them, without how sequences and items
/// are delimited (explicit lengths or delimitation items: an encoding choice of the writer).
fn dataset_values(file: &Path) -> Vec<String> {
    dataset_dump(file)
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.starts_with("(fffe,e00d)") && !l.starts_with("(fffe,e0dd)"))
        .map(|l| match l.find(" SQ (").or_else(|| l.find(" na (")) {
            Some(at) => l[..at + 3].to_string(),
            None => l,
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// dcmtk's `storescp` as the PACS, storing into `dir`; its log (one line per stored object
/// with `-v`) in `dir/../storescp.log`.
fn start_pacs(dir: &Path, port: u16) -> Child {
    fs::create_dir_all(dir).unwrap();
    let log = fs::File::create(dir.with_file_name("storescp.log")).unwrap();
    Command::new("storescp")
        .args(["-v", "-aet", "PACS", "-od"])
        .arg(dir)
        .arg(port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The files `storescp` stored by SOP Instance UID (it names them `<modality code>.<UID>`).
fn stored_uids(dir: &Path) -> BTreeMap<String, PathBuf> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (_, uid) = name.split_once('.')?;
                    Some((uid.to_string(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reports are queued per destination and sent with C-STORE: while the PACS is down the
/// service retries (audited), kill -9 at random moments loses nothing, each report reaches the
/// PACS with the data set as written, and each is audited as forwarded exactly once.
#[test]
fn forward_sends_every_report_to_a_pacs_that_comes_and_goes_and_loses_none_across_kill_9() {
    if dcmtk_missing() {
        eprintln!("SKIPPED forward_...: dcmtk's storescp not installed (apt install dcmtk)");
        return;
    }
    const STUDIES: usize = 40;
    let site = Site::new();
    for i in 0..STUDIES {
        let study = format!("1.2.3.5.{}", 100 + i);
        let uid = format!("{study}.1");
        write_study_instance(&site.incoming, &uid, &study, &format!("{study}.9"), "Doe^J");
    }
    let port = free_port();
    let destination = format!("PACS@127.0.0.1:{port}");
    let flags = [
        "--sr",
        "--sr-stable-seconds",
        "0",
        "--forward",
        destination.as_str(),
        "--forward-retry-ms",
        "100",
    ];
    let spawn = || {
        site.command("watch", &flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let outbox = site.results.join("outbox").join("PACS");
    let queued = || {
        site.names_in(&outbox)
            .iter()
            .filter(|n| n.ends_with(".dcm"))
            .count()
    };

    // The PACS is down: every report is queued and the failures are audited as retries.
    let mut child = spawn();
    wait_until(
        "reports queued while the PACS is down",
        Duration::from_secs(60),
        || queued() == STUDIES && !site.events("forward_retry").is_empty(),
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // The PACS comes up; the service is killed at random moments while it sends.
    let root = tempfile::tempdir().unwrap();
    let received = root.path().join("pacs");
    let mut pacs = start_pacs(&received, port);
    let mut next = crash_schedule();
    // Each kill lands after a few more sends, at a random moment of the next one.
    let mut kills = 0;
    while kills < 4 && queued() > 4 {
        let target = queued() - 1 - (next() % 3) as usize;
        let mut child = spawn();
        wait_until("sends to progress", Duration::from_secs(60), || {
            queued() <= target
        });
        std::thread::sleep(Duration::from_micros(next() % 3000));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 2, "the service was killed while sending");
    let child = spawn();
    wait_until("the queue to drain", Duration::from_secs(120), || {
        queued() == 0
    });
    let out = terminate(child);
    assert!(out.status.success());
    pacs.kill().unwrap();
    pacs.wait().unwrap();

    let written: HashSet<String> = site
        .names_in(&site.results.join("sr"))
        .iter()
        .filter_map(|n| n.strip_suffix(".dcm").map(String::from))
        .collect();
    assert_eq!(written.len(), STUDIES, "one report per study");
    let stored = stored_uids(&received);
    assert_eq!(
        stored.keys().cloned().collect::<HashSet<_>>(),
        written,
        "the PACS holds every report"
    );
    let forwarded: Vec<String> = site
        .events("forwarded")
        .iter()
        .map(|r| r["detail"]["file"].as_str().unwrap().to_string())
        .collect();
    let distinct: HashSet<&String> = forwarded.iter().collect();
    assert_eq!(
        (forwarded.len(), distinct.len()),
        (STUDIES, STUDIES),
        "each report audited as forwarded exactly once"
    );
    let uid = written.iter().next().unwrap();
    assert_eq!(
        dataset_values(&stored[uid]),
        dataset_values(&site.results.join("sr").join(format!("{uid}.dcm"))),
        "the PACS stored the data set as written"
    );
}
