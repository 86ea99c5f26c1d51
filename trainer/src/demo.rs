//! The main job, end to end on real data: split → SimCLR pretraining → fine-tuning →
//! evaluation → export → screening held-out images with the `scanside` runtime binary.
//!
//! Data: `--data`, else `$SCANSIDE_DATA/ham10000`, else `../shared/data/ham10000`, else the
//! official DermaMNIST npz (MedMNIST v2, CC BY 4.0) from the cache, downloaded and checked
//! against its published MD5 when missing. Offline without data it says what to fetch and where
//! to put it, and fails: it never makes up results.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use md5::{Digest, Md5};
use serde::Serialize;

use crate::config::{
    DemoConfig, EvalSettings, ExportOptions, FinetuneConfig, PretrainConfig, QuantizeConfig,
};
use crate::data::{
    make_split, open_dataset, ImageRef, Partition, SplitFile, DEFAULT_SPLIT_FRACTIONS,
};
use crate::evaluate::{evaluate_run, EvalReport};
use crate::export::{export_run, ExportReport};
use crate::finetune::{finetune, FinetuneSummary, ValMetrics};
use crate::pretrain::{pretrain, PretrainSummary};
use crate::runlog::save_json;
use crate::{Error, Result};
use scanside_runtime::bundle::{signing, Trust};

/// Where the official DermaMNIST (28 px) file is published.
pub const DERMAMNIST_URL: &str =
    "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1";
/// Its published MD5.
pub const DERMAMNIST_MD5: &str = "0744692d530f8e62ec473284d019b0c7";

/// One screened image in the demo summary.
#[derive(Debug, Clone, Serialize)]
pub struct ScreenedImage {
    /// The file.
    pub file: String,
    /// Its true class.
    pub truth: String,
    /// The runtime's verdict: `screened`, `not_applicable`, `out_of_distribution`.
    pub status: String,
    /// The runtime's top class.
    pub predicted: String,
    /// Its probability.
    pub probability: f64,
    /// Largest difference between the runtime's and burn's probabilities for this image.
    pub max_prob_diff_vs_burn: f64,
}

/// Everything the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Dataset used.
    pub data: PathBuf,
    /// Images per partition.
    pub split_counts: std::collections::BTreeMap<Partition, usize>,
    /// Pretraining.
    pub pretrain: PretrainSummary,
    /// Fine-tuning.
    pub finetune: FinetuneSummary,
    /// Test-set evaluation.
    pub test: EvalReport,
    /// Export check.
    pub export: ExportReport,
    /// Runtime screening of held-out images.
    pub screened: Vec<ScreenedImage>,
    /// Wall time of the whole demo.
    pub seconds: f64,
}

/// Finds the dataset as described in the module docs.
pub fn locate_data(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Some(root) = std::env::var_os("SCANSIDE_DATA") {
        candidates.push(PathBuf::from(root).join("ham10000"));
    }
    candidates.push(PathBuf::from("../shared/data/ham10000"));
    if let Some(found) = candidates.iter().find(|p| p.join("metadata.csv").is_file()) {
        return Ok(found.clone());
    }
    let cache = cache_dir().join("dermamnist.npz");
    if cache.is_file() && md5_hex(&cache)? == DERMAMNIST_MD5 {
        return Ok(cache);
    }
    download_dermamnist(&cache)?;
    Ok(cache)
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCANSIDE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("scanside")
}

fn md5_hex(path: &Path) -> Result<String> {
    let bytes = scanside_runtime::persist::read(path)?;
    Ok(Md5::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Downloads DermaMNIST with `curl` (present on every machine we target; it keeps a TLS stack
/// out of the trainer for a one-off fetch), verifies the MD5, then moves it into place.
fn download_dermamnist(dest: &Path) -> Result<()> {
    let dir = dest.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir).map_err(crate::io_error(dir))?;
    let part = dest.with_extension("npz.part");
    let how_to = format!(
        "no dataset found: pass --data DIR (HAM10000 layout: metadata.csv + images/), set \
         SCANSIDE_DATA, or download {DERMAMNIST_URL} (MD5 {DERMAMNIST_MD5}) to {}",
        dest.display()
    );
    eprintln!(
        "scanside-train: no local dataset; downloading DermaMNIST to {}",
        dest.display()
    );
    let status = Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--silent",
            "--show-error",
            "--max-time",
            "600",
            "--output",
        ])
        .arg(&part)
        .arg(DERMAMNIST_URL)
        .status();
    let ok = matches!(status, Ok(s) if s.success());
    if !ok {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Data {
            path: dest.to_path_buf(),
            reason: format!("download failed; {how_to}"),
        });
    }
    let got = md5_hex(&part)?;
    if got != DERMAMNIST_MD5 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Data {
            path: dest.to_path_buf(),
            reason: format!("downloaded file has MD5 {got}, expected {DERMAMNIST_MD5}; {how_to}"),
        });
    }
    std::fs::rename(&part, dest).map_err(crate::io_error(dest))
}

/// Runs the demo.
pub fn run_demo<B: AutodiffBackend>(
    config: &DemoConfig,
    device: &B::Device,
) -> Result<DemoSummary> {
    let started = Instant::now();
    let data = locate_data(config.data.as_deref())?;
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(crate::io_error(out))?;
    eprintln!("[1/6] split {}", data.display());
    let index = open_dataset(&data)?;
    let split_path = out.join("split.json");
    let split = make_split(&index, config.seed, DEFAULT_SPLIT_FRACTIONS)?;
    split.save(&split_path)?;

    eprintln!("[2/6] SimCLR pretraining (labels unused)");
    let mut pre = PretrainConfig::new(data.clone(), split_path.clone());
    pre.image_size = config.image_size;
    pre.model.width_multiplier = config.width_multiplier;
    // Small batches keep the step rate up on a 2-core CPU; NT-Xent still sees 126 negatives.
    pre.batch_size = 64;
    pre.epochs = config.pretrain_epochs;
    pre.max_steps = config.max_steps;
    pre.seed = config.seed;
    let pretrain_summary = pretrain::<B>(&pre, &out.join("pretrain"), device)?;

    eprintln!("[3/6] fine-tuning");
    let mut fine =
        FinetuneConfig::new(data.clone(), split_path.clone(), Some(out.join("pretrain")));
    fine.epochs = config.finetune_epochs;
    fine.max_steps = config.max_steps;
    fine.seed = config.seed;
    let run = out.join("finetune");
    let finetune_summary = finetune::<B>(&fine, &run, device)?;

    eprintln!("[4/6] evaluation on the held-out test partition");
    let test =
        evaluate_run::<B::InnerBackend>(&run, Partition::Test, &EvalSettings::default(), device)?;

    eprintln!("[5/6] export");
    let bundle = out.join("bundle");
    // The demo signs with its own key pair (made once, kept in out/keys) and the runtime
    // screens only with that key trusted, as at a site.
    let key_stem = out.join("keys").join("demo");
    let key = if key_stem.with_extension("key").is_file() {
        signing::read_signing_key(&key_stem.with_extension("key"))?
    } else {
        let key = signing::generate_key()?;
        signing::write_key_pair(&key_stem, &key)?;
        key
    };
    let options = ExportOptions {
        check_images: 16,
        int8: true,
        quantize: QuantizeConfig {
            calibration_images: 128,
            validation_images: 256,
            ..QuantizeConfig::default()
        },
        ..ExportOptions::default()
    };
    let export = export_run::<B::InnerBackend>(&run, &bundle, &options, Some(&key), device)?;

    eprintln!("[6/6] screening held-out images with the runtime");
    let screened = screen_with_runtime::<B>(config, &index, &split, &run, &bundle, device)?;
    let summary = DemoSummary {
        data,
        split_counts: split.counts.clone(),
        pretrain: pretrain_summary,
        finetune: finetune_summary,
        test,
        export,
        screened,
        seconds: started.elapsed().as_secs_f64(),
    };
    save_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

fn screen_with_runtime<B: AutodiffBackend>(
    config: &DemoConfig,
    index: &crate::data::DatasetIndex,
    split: &SplitFile,
    run: &Path,
    bundle: &Path,
    device: &B::Device,
) -> Result<Vec<ScreenedImage>> {
    let binary = match &config.runtime_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(crate::io_error("scanside-train"))?
            .with_file_name(format!("scanside{}", std::env::consts::EXE_SUFFIX)),
    };
    if !binary.is_file() {
        return Err(Error::Config {
            path: binary,
            reason: "runtime binary not found; build it with `cargo build --release -p scanside-runtime`".into(),
        });
    }
    // Held-out test images, one per class first so the screen shows variety.
    let test = split.indices(index, Partition::Test);
    let mut picked: Vec<usize> = Vec::new();
    for class in 0..index.class_names.len() {
        if let Some(&i) = test
            .iter()
            .find(|&&i| index.samples[i].target.class() == Some(class))
        {
            picked.push(i);
        }
    }
    let rest: Vec<usize> = test
        .iter()
        .copied()
        .filter(|i| !picked.contains(i))
        .collect();
    picked.extend(rest);
    picked.truncate(config.screen_images.max(1));
    // Array datasets are written out as PNG so the runtime reads real files.
    let inputs_dir = config.out.join("screen-inputs");
    let mut files = Vec::new();
    for &i in &picked {
        match &index.samples[i].image {
            ImageRef::File(p) => files.push(p.clone()),
            ImageRef::Array(k) => {
                std::fs::create_dir_all(&inputs_dir).map_err(crate::io_error(&inputs_dir))?;
                let path = inputs_dir.join(format!("{}.png", index.samples[i].id));
                write_array_png(index, *k, &path)?;
                files.push(path);
            }
        }
    }
    let output = Command::new(&binary)
        .arg("screen")
        .arg("--bundle")
        .arg(bundle)
        .arg("--public-key")
        .arg(bundle.with_file_name("keys").join("demo.pub"))
        .args(&files)
        .output()
        .map_err(crate::io_error(&binary))?;
    if !output.status.success() {
        return Err(Error::Config {
            path: binary,
            reason: format!(
                "screen failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    // The same images through the burn model, for the probability comparison.
    let (fine, model) = crate::run_dir::load_finetuned::<B::InnerBackend>(run, device)?;
    let preprocess = fine.preprocess.clone().expect("completed run");
    let images = crate::data::load_images(index, &picked, &preprocess)?;
    // As the runtime reports them: with the bundle's temperature and output activation.
    let public = signing::read_verifying_key(&bundle.with_file_name("keys").join("demo.pub"))?;
    let manifest =
        scanside_runtime::bundle::Bundle::load(bundle, &Trust::Keys(vec![public]))?.manifest;
    let burn_probs: Vec<Vec<f32>> =
        crate::metrics::predict_logits(&model, &images, &preprocess, device)
            .iter()
            .map(|z| manifest.probabilities(z))
            .collect();
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap_or("")
        .lines()
        .collect();
    let runtime_error = |reason: String| Error::Config {
        path: binary.clone(),
        reason,
    };
    if lines.len() != picked.len() {
        return Err(runtime_error(format!(
            "screen printed {} lines for {} images",
            lines.len(),
            picked.len()
        )));
    }
    let mut screened = Vec::new();
    for ((line, &i), burn) in lines.iter().zip(&picked).zip(&burn_probs) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| runtime_error(format!("runtime printed bad JSON: {e}")))?;
        let max_diff = max_prob_diff(&v, &fine.class_names, burn).map_err(runtime_error)?;
        screened.push(ScreenedImage {
            file: v["file"].as_str().unwrap_or("").to_string(),
            truth: index.samples[i]
                .target
                .class()
                .map_or_else(String::new, |c| index.class_names[c].clone()),
            status: v["status"].as_str().unwrap_or("").to_string(),
            predicted: v["top_class"].as_str().unwrap_or("").to_string(),
            probability: v["top_probability"].as_f64().unwrap_or(f64::NAN),
            max_prob_diff_vs_burn: max_diff,
        });
    }
    Ok(screened)
}

/// The largest |Δp| between one screening line's probabilities and burn's. A class the line
/// lacks is an error: as NaN it would vanish from the maximum and read as agreement.
fn max_prob_diff(
    line: &serde_json::Value,
    class_names: &[String],
    burn: &[f32],
) -> std::result::Result<f64, String> {
    class_names
        .iter()
        .zip(burn)
        .try_fold(0.0_f64, |max, (class, &p)| {
            let runtime = line["probabilities"][class.as_str()]
                .as_f64()
                .ok_or_else(|| {
                    format!("the runtime reported no probability for class {class:?}: {line}")
                })?;
            Ok(max.max((runtime - f64::from(p)).abs()))
        })
}

fn write_array_png(index: &crate::data::DatasetIndex, k: usize, path: &Path) -> Result<()> {
    let a = index.arrays.as_ref().expect("array dataset");
    let len = (a.height * a.width * a.channels) as usize;
    let data = a.pixels[k * len..(k + 1) * len].to_vec();
    let color = if a.channels == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &data,
        a.width,
        a.height,
        color,
    )
    .map_err(|e| Error::Data {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    scanside_runtime::persist::write_atomically(path, &png)?;
    Ok(())
}

impl DemoSummary {
    /// The short human-readable summary printed at the end of the demo.
    pub fn render(&self) -> String {
        let m = &self.test.metrics;
        let mut s = String::new();
        s += &format!("scanside demo on {}\n", self.data.display());
        s += &format!("  split (grouped, stratified): {:?}\n", self.split_counts);
        s += &format!(
            "  pretrain: {} SimCLR steps, NT-Xent {:.3} -> {:.3}, {:.0} img/s\n",
            self.pretrain.steps,
            self.pretrain.first_loss,
            self.pretrain.final_loss,
            self.pretrain.images_per_second
        );
        let val_accuracy = match &self.finetune.best_val {
            ValMetrics::MultiClass(m) => format!("{:.3}", m.accuracy),
            ValMetrics::MultiLabel(_) => "n/a".into(),
        };
        s += &format!(
            "  finetune: {} steps, best epoch {}, val accuracy {val_accuracy}, val macro AUC {}\n",
            self.finetune.steps,
            self.finetune.best_epoch,
            self.finetune
                .best_val
                .selection_auc()
                .map_or("n/a".into(), |v| format!("{v:.3}"))
        );
        s += &format!(
            "  test ({} images): top-1 accuracy {:.3}, macro AUC {}\n",
            m.n,
            m.accuracy,
            m.macro_auc.map_or("n/a".into(), |v| format!("{v:.3}"))
        );
        s += &format!(
            "  export: {} ({} bytes), max |logit diff| burn vs tract {:.2e} on {} images\n",
            self.export.bundle.display(),
            self.export.model_bytes,
            self.export.max_abs_logit_diff,
            self.export.checked_images
        );
        if let Some(rules) = &self.export.input_rules {
            s += &format!(
                "  input rules: {}\n",
                rules.derived_from.as_deref().unwrap_or("set with --accept")
            );
        }
        if let Some(ood) = &self.export.ood {
            s += &format!(
                "  out-of-distribution guard: {:?} score, threshold {:.3}, rejects {:.3} of {} val images\n",
                ood.method, ood.threshold, ood.validation_rejection, ood.validation_images
            );
        }
        if let Some(int8) = &self.export.int8 {
            let best = &int8.methods[0];
            let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3}"));
            s += &format!(
                "  int8 ({} calibration): {} B blob, {} B arena; val top-1 fp32 {} -> int8 {}, agreement {:.3} on {} images\n",
                int8.method,
                int8.blob_bytes,
                int8.arena_bytes,
                pct(best.fp32_top1),
                pct(best.int8_top1),
                best.top1_agreement,
                best.images
            );
        }
        s += "  runtime screening of held-out images:\n";
        for r in &self.screened {
            s += &format!(
                "    {:<60} truth {:<6} -> {:<6} p={:.3} (|Δp| vs burn {:.1e}){}\n",
                r.file,
                r.truth,
                r.predicted,
                r.probability,
                r.max_prob_diff_vs_burn,
                match r.status.as_str() {
                    "screened" => String::new(),
                    other => format!(" [{other}]"),
                }
            );
        }
        s += &format!("  total {:.0} s\n", self.seconds);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_missing_from_the_runtime_line_is_an_error_not_a_zero_difference() {
        let classes = ["nv".to_string(), "mel".to_string()];
        let line = serde_json::json!({"probabilities": {"nv": 0.75, "mel": 0.25}});
        let diff = max_prob_diff(&line, &classes, &[0.5, 0.5]).unwrap();
        assert!((diff - 0.25).abs() < 1e-9, "{diff}");
        // The bug: "mel" absent became NaN, and f64::max(0, NaN) reported |Δp| = 0.
        let line = serde_json::json!({"probabilities": {"nv": 0.5}});
        let err = max_prob_diff(&line, &classes, &[0.5, 0.5]).unwrap_err();
        assert!(err.contains("\"mel\""), "{err}");
    }
}
