//! `scanside bench`: latency (p50/p99), throughput, cold start and peak memory of a bundle's
//! models, on given images (turned into model inputs once by the screening pipeline, every
//! frame included, outside the timings) or on synthetic inputs. One inference at a time, as
//! the screening loop runs them. It never screens or reports: only the model runs are timed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::bundle::{Bundle, Trust};
use crate::infer::{Engine, EngineKind};
use crate::pipeline::read_model_inputs;
use crate::Result;

/// One engine's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBench {
    /// Which model.
    pub engine: EngineKind,
    /// Why `fp32` ran on tract (`direct engine declined: …; running on tract`), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_note: Option<String>,
    /// Loading the bundle (signature, hashes) and preparing the model, until ready to run.
    pub cold_start_ms: f64,
    /// The first inference after loading.
    pub first_inference_ms: f64,
    /// Timed inferences (after warm-up).
    pub runs: usize,
    /// Threads of one inference.
    pub threads: usize,
    /// Median latency of one inference.
    pub p50_ms: f64,
    /// 99th-percentile latency.
    pub p99_ms: f64,
    /// Inferences per second over the timed runs.
    pub throughput_per_s: f64,
    /// Peak resident memory of the process so far (Linux `VmHWM`), in KiB: it includes the
    /// engines measured before this one, so compare engines from separate runs.
    pub peak_rss_kib: Option<u64>,
}

/// What `scanside bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The bundle.
    pub bundle: PathBuf,
    /// Real images given (`0`: synthetic inputs).
    pub images: usize,
    /// One entry per engine, in the order asked.
    pub engines: Vec<EngineBench>,
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux only).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at]
}

/// Inputs for the benchmark: the model inputs of the given images (every frame under the
/// every-frame policy), or `synthetic` deterministic pseudo-random inputs.
fn inputs(bundle: &Bundle, files: &[PathBuf], synthetic: usize) -> Result<Vec<Vec<f32>>> {
    if !files.is_empty() {
        let mut inputs = Vec::new();
        for file in files {
            let made = read_model_inputs(file, &bundle.manifest.preprocess)?;
            inputs.extend(made.into_iter().map(|input| input.values));
        }
        return Ok(inputs);
    }
    let len = bundle.manifest.preprocess.input_len();
    let mut state = 0x2545_f491_u32;
    Ok((0..synthetic.max(1))
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1 << 23) as f32 - 1.0
                })
                .collect()
        })
        .collect())
}

/// What `scanside bench` measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Engines, in the order measured.
    pub engines: Vec<EngineKind>,
    /// Timed inferences per engine.
    pub runs: usize,
    /// Untimed inferences before timing.
    pub warmup: usize,
    /// Threads of one inference.
    pub threads: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            engines: vec![EngineKind::Fp32, EngineKind::Int8],
            runs: 200,
            warmup: 10,
            threads: crate::infer::all_cores(),
        }
    }
}

impl BenchConfig {
    /// Why the settings cannot run, if they cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.engines.is_empty() {
            return Err("--engine names no engine".into());
        }
        if self.runs == 0 || self.threads == 0 {
            return Err("--runs and --threads must be at least 1".into());
        }
        Ok(())
    }
}

/// Benchmarks each engine: cold start (bundle load + model preparation, its threads
/// started), first inference, then `runs` timed inferences cycling over the inputs after
/// `warmup` untimed ones.
pub fn bench(
    dir: &Path,
    trust: &Trust,
    files: &[PathBuf],
    config: &BenchConfig,
) -> Result<BenchReport> {
    let engines = config
        .engines
        .iter()
        .map(|&kind| bench_engine(dir, trust, kind, files, config))
        .collect::<Result<_>>()?;
    Ok(BenchReport {
        bundle: dir.to_path_buf(),
        images: files.len(),
        engines,
    })
}

/// One engine's measurements (the bundle loaded afresh: its cold start is part of them).
fn bench_engine(
    dir: &Path,
    trust: &Trust,
    kind: EngineKind,
    files: &[PathBuf],
    config: &BenchConfig,
) -> Result<EngineBench> {
    let t0 = Instant::now();
    let bundle = Bundle::load(dir, trust)?;
    let engine = Engine::load(&bundle, kind)?.with_threads(config.threads)?;
    let cold_start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs = inputs(&bundle, files, 16)?;
    let t1 = Instant::now();
    engine.logits(&inputs[0])?;
    let first_inference_ms = t1.elapsed().as_secs_f64() * 1e3;
    for i in 0..config.warmup {
        engine.logits(&inputs[i % inputs.len()])?;
    }
    let runs = config.runs.max(1); // `validate` refuses 0; a library caller gets one run.
    let mut times = Vec::with_capacity(runs);
    let start = Instant::now();
    for i in 0..runs {
        let t = Instant::now();
        engine.logits(&inputs[i % inputs.len()])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    Ok(EngineBench {
        engine: kind,
        engine_note: engine.note(),
        cold_start_ms,
        first_inference_ms,
        runs,
        threads: engine.threads(),
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        throughput_per_s: runs as f64 / total,
        peak_rss_kib: peak_rss_kib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }
}
