//! `scanside-train report RUN...`: a self-contained HTML page (SVG plots inline, also written
//! beside it) for fine-tuning runs: training curves, ROC curves, confusion matrix,
//! reliability diagram, and the tables of the evaluation with its intervals and operating
//! points. Runs must have been evaluated (`eval-test.json` or `eval-val.json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::evaluate::{EvalReport, MultiLabelReport};
use crate::plots;
use crate::run_dir::evaluation_file;
use crate::runlog::load_json;
use crate::{Error, Result};

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Wraps sections in a page with a little CSS.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1340px;margin:1em auto;color:#222}}\
         table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #bbb;padding:2px 8px;text-align:right}}\
         th{{background:#eee}}td:first-child{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}\
         .note{{color:#555;font-size:90%}}</style></head>\n<body><h1>{t}</h1>\n{body}\n</body></html>\n",
        t = escape(title)
    )
}

fn metrics_lines(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Training loss per step (mean per epoch) and validation AUC per epoch.
fn training_chart(run: &Path) -> String {
    let lines = metrics_lines(run);
    let loss: Vec<plots::Point> = lines
        .iter()
        .filter_map(|v| {
            Some((
                v.get("epoch")?.as_f64()? + 1.0,
                v.get("train_loss")?.as_f64()?,
                None,
            ))
        })
        .collect();
    let auc: Vec<plots::Point> = lines
        .iter()
        .filter_map(|v| {
            let auc = v
                .get("val_auc")
                .or_else(|| v.get("val_macro_auc"))?
                .as_f64()?;
            Some((v.get("epoch")?.as_f64()? + 1.0, auc, None))
        })
        .collect();
    plots::line_chart_with_legend(
        "training: loss and validation AUC per epoch",
        "epoch",
        "value",
        &[("train loss".into(), loss), ("val AUC".into(), auc)],
        false,
        plotters::prelude::SeriesLabelPosition::MiddleRight,
    )
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

fn interval(i: Option<crate::metrics::Interval>) -> String {
    i.map_or(String::new(), |i| format!(" [{:.3}, {:.3}]", i.low, i.high))
}

fn operating_rows(points: &[crate::evaluate::calibration::OperatingPoint]) -> String {
    points
        .iter()
        .map(|p| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&p.class),
                p.threshold.map_or("n/a".into(), |t| format!("{t:.4}")),
                fmt(p.val_sensitivity),
                fmt(p.val_specificity),
                fmt(p.sensitivity),
                fmt(p.specificity)
            )
        })
        .collect()
}

/// The section of a multi-label evaluation: mean AUC, per-finding AUCs, operating points,
/// and the ROC curves of the findings in the mean.
fn multi_label_section(r: &MultiLabelReport, name: &str) -> (String, Vec<(String, String)>) {
    let mut html = String::new();
    let mut plots_out = Vec::new();
    let m = &r.metrics;
    let _ = writeln!(
        html,
        "<p>{n} {p:?} images; mean AUC <b>{a}</b>{ci} over the findings with ≥ {min} positives: {over}.</p>",
        n = m.n,
        p = r.partition,
        a = fmt(m.mean_auc),
        ci = interval(r.mean_auc_interval),
        min = m.min_positives,
        over = escape(&m.mean_over.join(", "))
    );
    html += "<table><tr><th>finding</th><th>positives</th><th>AUC</th></tr>";
    for (f, finding) in m.findings.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(finding),
            m.positives[f],
            fmt(m.per_finding_auc[f])
        );
    }
    html += "</table>\n";
    let _ = writeln!(
        html,
        "<h3>Operating points (sensitivity ≥ {:.2} on val)</h3>",
        r.target_sensitivity
    );
    html += "<table><tr><th>finding</th><th>threshold</th><th>val sens</th><th>val spec</th><th>sens</th><th>spec</th></tr>";
    html += &operating_rows(&r.operating_points);
    html += "</table>\n";
    let curves: Vec<(String, Vec<(f64, f64)>)> = m
        .findings
        .iter()
        .zip(&r.roc)
        .zip(&m.per_finding_auc)
        .filter(|((name, points), _)| !points.is_empty() && m.mean_over.contains(name))
        .map(|((name, points), auc)| (format!("{name} ({})", fmt(*auc)), points.clone()))
        .collect();
    if !curves.is_empty() {
        plots_out.push((
            format!("{name}-roc.svg"),
            plots::roc_chart("ROC per finding (those in the mean)", &curves),
        ));
    }
    (html, plots_out)
}

/// The section of a multi-class evaluation: metrics with their intervals, calibration,
/// per-class AUCs and operating points, ROC curves and the confusion matrix.
fn multi_class_section(r: &EvalReport, name: &str) -> (String, Vec<(String, String)>) {
    let mut html = String::new();
    let mut plots_out = Vec::new();
    let m = &r.metrics;
    let intervals = r.intervals.as_ref();
    let _ = writeln!(
        html,
        "<p>{n} {p:?} images. Top-1 <b>{acc:.3}</b>{acc_ci}, top-3 {top3:.3}, balanced accuracy {bal:.3}{bal_ci}, \
         macro one-vs-rest AUC <b>{auc}</b>{auc_ci}.</p>",
        n = m.n,
        p = r.partition,
        acc = m.accuracy,
        acc_ci = interval(intervals.and_then(|i| i.accuracy)),
        top3 = m.top3_accuracy,
        bal = m.balanced_accuracy,
        bal_ci = interval(intervals.and_then(|i| i.balanced_accuracy)),
        auc = fmt(m.macro_auc),
        auc_ci = interval(intervals.and_then(|i| i.macro_auc)),
    );
    if let Some(i) = intervals {
        let _ = writeln!(
            html,
            "<p class=\"note\">95 % intervals: {} bootstrap resamples of {} {} groups.</p>",
            i.resamples,
            i.groups,
            escape(&i.resampled_by)
        );
    }
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            html,
            "<p>Calibration: expected calibration error {:.3} → {:.3} with temperature {:.3} fitted on val.</p>",
            c.ece_before, c.ece_after, c.temperature
        );
        plots_out.push((
            format!("{name}-reliability.svg"),
            plots::reliability_chart("reliability", &c.reliability_before, &c.reliability_after),
        ));
    }
    html += "<table><tr><th>class</th><th>n</th><th>AUC</th></tr>";
    for (c, class) in r.class_names.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(class),
            m.class_counts[c],
            fmt(m.per_class_auc[c])
        );
    }
    html += "</table>\n";
    if let Some(t) = r.target_sensitivity {
        let _ = writeln!(
            html,
            "<h3>Operating points (sensitivity ≥ {t:.2} on val)</h3>"
        );
        html += "<table><tr><th>class</th><th>threshold</th><th>val sens</th><th>val spec</th><th>sens</th><th>spec</th></tr>";
        html += &operating_rows(&r.operating_points);
        html += "</table>\n";
    }
    if !r.roc.is_empty() {
        let curves: Vec<(String, Vec<(f64, f64)>)> = r
            .class_names
            .iter()
            .zip(&r.roc)
            .zip(&m.per_class_auc)
            .filter(|((_, points), _)| !points.is_empty())
            .map(|((class, points), auc)| (format!("{class} ({})", fmt(*auc)), points.clone()))
            .collect();
        plots_out.push((
            format!("{name}-roc.svg"),
            plots::roc_chart("ROC, one vs rest", &curves),
        ));
    }
    if !m.confusion.is_empty() {
        plots_out.push((
            format!("{name}-confusion.svg"),
            plots::confusion_chart(
                "confusion matrix (shade: share of the true class)",
                &r.class_names,
                &m.confusion,
            ),
        ));
    }
    (html, plots_out)
}

/// The HTML section and named SVG plots of one evaluated run.
fn run_section(run: &Path) -> Result<(String, Vec<(String, String)>)> {
    let eval_path = evaluation_file(run).ok_or_else(|| Error::Config {
        path: run.to_path_buf(),
        reason: "not evaluated yet: run `scanside-train evaluate --run` on it first".into(),
    })?;
    let raw: Value = load_json(&eval_path)?;
    let name = run
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let mut plots_out = vec![(format!("{name}-training.svg"), training_chart(run))];
    let mut html = format!("<h2>{}</h2>\n", escape(&run.display().to_string()));
    if raw.pointer("/metrics/findings").is_some() {
        let r: MultiLabelReport = serde_json::from_value(raw).map_err(|e| Error::Config {
            path: eval_path.clone(),
            reason: format!("unreadable evaluation: {e}"),
        })?;
        let (section, plots) = multi_label_section(&r, &name);
        html += &section;
        plots_out.extend(plots);
    } else {
        let r: EvalReport = serde_json::from_value(raw).map_err(|e| Error::Config {
            path: eval_path.clone(),
            reason: format!("unreadable evaluation: {e}"),
        })?;
        let (section, plots) = multi_class_section(&r, &name);
        html += &section;
        plots_out.extend(plots);
    }
    html += "<div class=\"plots\">\n";
    for (_, svg) in &plots_out {
        html += svg;
        html += "\n";
    }
    html += "</div>\n";
    Ok((html, plots_out))
}

/// Writes `out/index.html` and the plots of every run; returns the page's path.
pub fn write_report(runs: &[PathBuf], out: &Path) -> Result<PathBuf> {
    let mut body = String::new();
    let mut files = Vec::new();
    for run in runs {
        let (html, plots_out) = run_section(run)?;
        body += &html;
        files.extend(plots_out);
    }
    std::fs::create_dir_all(out).map_err(crate::io_error(out))?;
    for (name, svg) in files {
        scanside_runtime::persist::write_atomically(&out.join(name), svg.as_bytes())?;
    }
    let index = out.join("index.html");
    scanside_runtime::persist::write_atomically(
        &index,
        page("scanside evaluation report", &body).as_bytes(),
    )?;
    Ok(index)
}
