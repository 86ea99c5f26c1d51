//! `scanside validate`: a site's acceptance check. The site's own labelled images are screened
//! through exactly the pipeline `screen` uses ([`Screener`]); the model's discrimination and its
//! operating points are measured on them with intervals that resample whole patients (or
//! lesions), and compared with what the bundle records from its own evaluation. A figure that
//! falls below the recorded one by more than the margin fails the check.
//!
//! Labelled data: a folder with one sub-folder per class (named as the model's classes), or a
//! CSV file with columns `path` and `label` and optionally `group` (patient or lesion id; paths
//! relative to the CSV). Without a group column, a DICOM image's Patient ID groups it; any
//! other image is its own group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::BundleManifest;
use crate::decode::{self, FileFormat};
use crate::metrics::{group_bootstrap, group_members, roc_auc, roc_curve, Interval};
use crate::pipeline::Screener;
use crate::report::{argmax, Status};
use crate::{Error, Result};

/// How the check runs.
#[derive(Debug, Clone)]
pub struct ValidateConfig {
    /// The labelled data: a folder of class folders, or a CSV (`path,label[,group]`).
    pub data: PathBuf,
    /// How far below the recorded figure (its interval's lower end where recorded) a site's
    /// figure may fall before the check fails.
    pub margin: f64,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Seed of the resampling.
    pub seed: u64,
    /// Images screened at once.
    pub jobs: usize,
}

impl ValidateConfig {
    /// Defaults: margin 0.05, 1,000 resamples, seed 0, one job per core.
    pub fn new(data: PathBuf) -> Self {
        Self {
            data,
            margin: 0.05,
            resamples: 1000,
            seed: 0,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.margin) {
            return Err(format!("--margin {} is not in [0, 1]", self.margin));
        }
        if !(100..=100_000).contains(&self.resamples) {
            return Err(format!(
                "--resamples {} is not in 100..=100000",
                self.resamples
            ));
        }
        if self.jobs == 0 {
            return Err("--jobs must be at least 1".into());
        }
        Ok(())
    }
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    /// The file.
    pub path: PathBuf,
    /// Its class index in the model's order.
    pub label: usize,
    /// Its patient / lesion (what the intervals resample).
    pub group: String,
}

/// One figure compared with the bundle's record.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is compared (`macro_auc`, `auc[mel]`, `sensitivity[mel]`).
    pub figure: String,
    /// The site's value with its interval.
    pub site: Interval,
    /// The recorded value the site must reach, less the margin.
    pub reference: f64,
    /// Where the reference comes from.
    pub reference_source: String,
    /// `site.estimate >= reference - margin`.
    pub passed: bool,
}

/// Per class, on the site's screened images.
#[derive(Debug, Clone, Serialize)]
pub struct ClassFigures {
    /// Class name.
    pub class: String,
    /// Screened images of the class.
    pub positives: usize,
    /// One-vs-rest AUC.
    pub auc: Option<Interval>,
    /// The bundle's screening threshold.
    pub threshold: Option<f32>,
    /// Flagged positives / positives, at the threshold.
    pub sensitivity: Option<Interval>,
    /// Unflagged negatives / negatives, at the threshold.
    pub specificity: Option<Interval>,
    /// ROC points (false-positive rate, sensitivity) for the page.
    pub roc: Vec<(f64, f64)>,
}

/// The check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// The labelled data.
    pub data: PathBuf,
    /// The model.
    pub model_id: String,
    /// Images listed.
    pub images: usize,
    /// Images screened (the figures are theirs).
    pub screened: usize,
    /// Images the model is not for (input rules), out of distribution, or unreadable: not in
    /// the figures.
    pub not_screened: BTreeMap<String, usize>,
    /// Groups (patients / lesions) resampled.
    pub groups: usize,
    /// Resamples per interval.
    pub resamples: usize,
    /// Top-1 accuracy.
    pub accuracy: Option<Interval>,
    /// Mean of the per-class AUCs that are defined.
    pub macro_auc: Option<Interval>,
    /// Per class.
    pub classes: Vec<ClassFigures>,
    /// The comparisons with the bundle's own evaluation.
    pub checks: Vec<Check>,
    /// The margin the checks allow.
    pub margin: f64,
    /// Every check passed (and at least one image was screened).
    pub passed: bool,
}

/// Reads the labelled data in the model's class order.
pub fn read_labelled(data: &Path, class_names: &[String]) -> Result<Vec<LabelledImage>> {
    let images = if data.is_dir() {
        read_class_folders(data, class_names)?
    } else {
        read_csv(data, class_names)?
    };
    if images.is_empty() {
        return Err(bad_data(data, "no labelled images".into()));
    }
    Ok(images)
}

fn bad_data(path: &Path, reason: String) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason,
    }
}

fn class_index(class_names: &[String], label: &str, path: &Path) -> Result<usize> {
    class_names.iter().position(|c| c == label).ok_or_else(|| {
        bad_data(
            path,
            format!(
                "label {label:?} is not a class of the model ({})",
                class_names.join(", ")
            ),
        )
    })
}

fn read_class_folders(data: &Path, class_names: &[String]) -> Result<Vec<LabelledImage>> {
    let mut images = Vec::new();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(data)
        .map_err(|source| Error::Io {
            path: data.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    folders.sort();
    for folder in folders {
        let name = folder
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let label = class_index(class_names, &name, &folder)?;
        for path in crate::inputs::expand_inputs(std::slice::from_ref(&folder))?.files {
            let group = default_group(&path);
            images.push(LabelledImage { path, label, group });
        }
    }
    Ok(images)
}

fn read_csv(data: &Path, class_names: &[String]) -> Result<Vec<LabelledImage>> {
    let mut reader = csv::Reader::from_path(data).map_err(|e| bad_data(data, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| bad_data(data, e.to_string()))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(path_at), Some(label_at)) = (column("path"), column("label")) else {
        return Err(bad_data(
            data,
            "the CSV needs `path` and `label` columns".into(),
        ));
    };
    let group_at = column("group");
    let base = data.parent().unwrap_or(Path::new("."));
    let mut images = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad_data(data, e.to_string()))?;
        let field = |at: usize| record.get(at).unwrap_or_default().trim();
        let at_line = |reason: String| bad_data(data, format!("line {}: {reason}", line + 2));
        if field(path_at).is_empty() {
            return Err(at_line("empty path".into()));
        }
        let path = base.join(field(path_at));
        let label =
            class_index(class_names, field(label_at), data).map_err(|e| at_line(e.to_string()))?;
        let group = match group_at.map(field) {
            Some(g) if !g.is_empty() => g.to_string(),
            _ => default_group(&path),
        };
        images.push(LabelledImage { path, label, group });
    }
    Ok(images)
}

/// A DICOM image's Patient ID, else the file itself.
fn default_group(path: &Path) -> String {
    let patient = std::fs::read(path)
        .ok()
        .filter(|bytes| decode::sniff(bytes) == Some(FileFormat::Dicom))
        .and_then(|bytes| decode::dicom_identity_from_bytes(path, &bytes).ok())
        .and_then(|identity| identity.patient_id);
    match patient {
        Some(id) => format!("patient:{id}"),
        None => format!("file:{}", path.display()),
    }
}

/// Screens `images` and measures the model on them against the bundle's record.
pub fn validate(
    screener: &Screener,
    manifest: &BundleManifest,
    model_id: &str,
    images: &[LabelledImage],
    config: &ValidateConfig,
) -> ValidationReport {
    let files: Vec<PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let mut scored: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut not_screened = BTreeMap::new();
    // Outcomes arrive in input order.
    let mut next = 0;
    screener.screen_files(&files, config.jobs, |_, outcome| {
        let at = next;
        next += 1;
        match outcome {
            Ok(result) if result.status == Status::Screened => {
                let probabilities = result.probabilities.iter().map(|(_, p)| *p).collect();
                scored.push((at, probabilities));
            }
            Ok(result) => *not_screened.entry(status_name(result.status)).or_insert(0) += 1,
            Err(e) => {
                eprintln!("scanside: validate: {e}");
                *not_screened.entry("unreadable".to_string()).or_insert(0) += 1;
            }
        }
        true
    });
    let mut report = measure(screener, manifest, images, scored, not_screened, config);
    report.model_id = model_id.to_string();
    report
}

fn status_name(status: Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{status:?}"))
}

/// The site's screened images as the metrics see them.
struct Scored<'a> {
    labels: Vec<usize>,
    probabilities: Vec<Vec<f32>>,
    members: Vec<Vec<usize>>,
    thresholds: &'a [Option<f32>],
    config: &'a ValidateConfig,
}

impl Scored<'_> {
    fn interval(&self, metric: impl Fn(&[usize]) -> Option<f64> + Sync) -> Option<Interval> {
        group_bootstrap(
            &self.members,
            self.config.resamples,
            self.config.seed,
            metric,
        )
    }

    fn auc(&self, class: usize, idx: &[usize]) -> Option<f64> {
        let scores: Vec<f32> = idx.iter().map(|&i| self.probabilities[i][class]).collect();
        let positive: Vec<bool> = idx.iter().map(|&i| self.labels[i] == class).collect();
        roc_auc(&scores, &positive)
    }

    fn macro_auc(&self, idx: &[usize], classes: usize) -> Option<f64> {
        let aucs: Vec<f64> = (0..classes).filter_map(|c| self.auc(c, idx)).collect();
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    }

    /// Fraction of `idx` with (`want_positive`) label `class` flagged (positives) or not
    /// flagged (negatives) at the threshold.
    fn rate(
        &self,
        class: usize,
        threshold: f32,
        want_positive: bool,
        idx: &[usize],
    ) -> Option<f64> {
        let chosen: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| (self.labels[i] == class) == want_positive)
            .collect();
        let hits = chosen
            .iter()
            .filter(|&&i| (self.probabilities[i][class] >= threshold) == want_positive)
            .count();
        (!chosen.is_empty()).then(|| hits as f64 / chosen.len() as f64)
    }

    fn class_figures(&self, class: usize, name: &str) -> ClassFigures {
        let threshold = self.thresholds.get(class).copied().flatten();
        let scores: Vec<f32> = self.probabilities.iter().map(|p| p[class]).collect();
        let positive: Vec<bool> = self.labels.iter().map(|&l| l == class).collect();
        ClassFigures {
            class: name.to_string(),
            positives: positive.iter().filter(|&&p| p).count(),
            auc: self.interval(|idx| self.auc(class, idx)),
            threshold,
            sensitivity: threshold
                .and_then(|t| self.interval(|idx| self.rate(class, t, true, idx))),
            specificity: threshold
                .and_then(|t| self.interval(|idx| self.rate(class, t, false, idx))),
            roc: roc_curve(&scores, &positive, 200),
        }
    }
}

fn measure(
    screener: &Screener,
    manifest: &BundleManifest,
    images: &[LabelledImage],
    scored: Vec<(usize, Vec<f32>)>,
    not_screened: BTreeMap<String, usize>,
    config: &ValidateConfig,
) -> ValidationReport {
    let groups: Vec<String> = scored
        .iter()
        .map(|(i, _)| images[*i].group.clone())
        .collect();
    let scored = Scored {
        labels: scored.iter().map(|(i, _)| images[*i].label).collect(),
        probabilities: scored.into_iter().map(|(_, p)| p).collect(),
        members: group_members(&groups),
        thresholds: screener.thresholds(),
        config,
    };
    let names = screener.class_names();
    let accuracy = scored.interval(|idx| {
        let hits = idx
            .iter()
            .filter(|&&i| argmax(&scored.probabilities[i]) == scored.labels[i])
            .count();
        (!idx.is_empty()).then(|| hits as f64 / idx.len() as f64)
    });
    let macro_auc = scored.interval(|idx| scored.macro_auc(idx, names.len()));
    let classes: Vec<ClassFigures> = names
        .iter()
        .enumerate()
        .map(|(c, name)| scored.class_figures(c, name))
        .collect();
    let checks = compare(manifest, macro_auc, &classes, config.margin);
    let screened = scored.labels.len();
    ValidationReport {
        data: config.data.clone(),
        model_id: String::new(),
        images: images.len(),
        screened,
        not_screened,
        groups: scored.members.len(),
        resamples: config.resamples,
        accuracy,
        macro_auc,
        passed: screened > 0 && checks.iter().all(|c| c.passed),
        classes,
        checks,
        margin: config.margin,
    }
}

/// The site's figures against the bundle's record: macro AUC against the recorded interval's
/// lower end (or estimate), each class's AUC against its recorded AUC, each class's
/// sensitivity at its threshold against the sensitivity the thresholds were chosen for.
fn compare(
    manifest: &BundleManifest,
    macro_auc: Option<Interval>,
    classes: &[ClassFigures],
    margin: f64,
) -> Vec<Check> {
    let evaluation = manifest.provenance.evaluation.as_ref();
    let partition = evaluation
        .and_then(|e| e.get("partition")?.as_str().map(String::from))
        .unwrap_or_else(|| "its evaluation".into());
    let mut checks = Vec::new();
    let mut check =
        |figure: String, site: Option<Interval>, reference: Option<f64>, source: String| {
            if let (Some(site), Some(reference)) = (site, reference) {
                checks.push(Check {
                    passed: site.estimate >= reference - margin,
                    figure,
                    site,
                    reference,
                    reference_source: source,
                });
            }
        };
    let recorded_macro = evaluation.and_then(|e| {
        let interval = e.get("intervals")?.get("macro_auc")?;
        interval
            .get("low")
            .or_else(|| interval.get("estimate"))?
            .as_f64()
    });
    check(
        "macro_auc".into(),
        macro_auc,
        recorded_macro,
        format!("lower end of the recorded 95 % interval ({partition})"),
    );
    let per_class = evaluation.and_then(|e| e.get("metrics")?.get("per_class_auc")?.as_array());
    let target = manifest
        .calibration
        .as_ref()
        .map(|c| f64::from(c.target_sensitivity));
    for (c, figures) in classes.iter().enumerate() {
        let recorded = per_class.and_then(|a| a.get(c)?.as_f64());
        check(
            format!("auc[{}]", figures.class),
            figures.auc,
            recorded,
            format!("recorded AUC ({partition})"),
        );
        check(
            format!("sensitivity[{}]", figures.class),
            figures.sensitivity,
            target,
            "the sensitivity the thresholds were chosen for (validation)".into(),
        );
    }
    checks
}

/// The report as a self-contained HTML page: the checks, the per-class figures, and each
/// class's ROC curve as an inline SVG (written directly: a polyline needs no plotting crate on
/// the edge binary).
pub fn html_page(report: &ValidationReport) -> String {
    let fmt = |i: &Option<Interval>| {
        i.map_or("–".into(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
        })
    };
    let mut page = format!(
        "<!doctype html><meta charset=utf-8><title>scanside validate: {model}</title>\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:left}}\
         .fail{{color:#b00}}.pass{{color:#070}}</style>\
         <h1>Site acceptance: {verdict}</h1><p>Model {model} on {data}: {screened} of {images} \
         images screened, {groups} groups resampled {resamples} times. Macro AUC {macro_auc}, \
         top-1 {accuracy}.</p><h2>Checks (margin {margin})</h2><table><tr><th>figure<th>site\
         <th>reference<th>source<th>",
        model = escape(&report.model_id),
        verdict = if report.passed { "passed" } else { "FAILED" },
        data = escape(&report.data.display().to_string()),
        screened = report.screened,
        images = report.images,
        groups = report.groups,
        resamples = report.resamples,
        macro_auc = fmt(&report.macro_auc),
        accuracy = fmt(&report.accuracy),
        margin = report.margin,
    );
    for c in &report.checks {
        let (class, word) = if c.passed {
            ("pass", "pass")
        } else {
            ("fail", "FAIL")
        };
        page += &format!(
            "<tr><td>{}<td>{}<td>{:.3}<td>{}<td class={class}>{word}",
            escape(&c.figure),
            fmt(&Some(c.site)),
            c.reference,
            escape(&c.reference_source)
        );
    }
    page += "</table><h2>Per class</h2><table><tr><th>class<th>positives<th>AUC<th>threshold\
             <th>sensitivity<th>specificity<th>ROC";
    for c in &report.classes {
        page += &format!(
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}",
            escape(&c.class),
            c.positives,
            fmt(&c.auc),
            c.threshold.map_or("–".into(), |t| format!("{t:.3}")),
            fmt(&c.sensitivity),
            fmt(&c.specificity),
            roc_svg(&c.roc)
        );
    }
    page + "</table>\n"
}

fn roc_svg(points: &[(f64, f64)]) -> String {
    let line: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", x * 120.0, 120.0 - y * 120.0))
        .collect();
    format!(
        "<svg width=120 height=120 viewBox='0 0 120 120'><rect width=120 height=120 \
         fill=none stroke=#999/><line x1=0 y1=120 x2=120 y2=0 stroke=#ccc/>\
         <polyline fill=none stroke=#06c points='{}'/></svg>",
        line.join(" ")
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
