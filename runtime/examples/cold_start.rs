//! Where a cold start's time goes: each phase of loading a bundle's engine, timed alone, the
//! median of `ROUNDS` (default 15) fresh loads each (docs/benchmarks.md).
//!
//!     cargo run --release -p scanside-runtime --example cold_start -- BUNDLE PUBLIC_KEY [ROUNDS]
//!
//! PUBLIC_KEY `-` loads an unsigned bundle (development bundles under runs/). The file reads
//! come from the page cache after the first round, as they do for a service restarted on a
//! device that just copied its bundle.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use scanside_runtime::bundle::{sha256_hex, Bundle, ModelFile, Trust};
use scanside_runtime::infer::{decode_onnx, DirectClassifier, Engine, EngineKind, Int8Classifier};

/// Median milliseconds of `rounds` runs of `f`.
fn median_ms<T>(rounds: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, key, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: cold_start BUNDLE PUBLIC_KEY [ROUNDS]");
    };
    let rounds: usize = rest
        .first()
        .map_or(Ok(15), |r| r.parse())
        .context("ROUNDS")?;
    let trust = Trust::from_key_files(&[PathBuf::from(key)], key == "-")?;
    let dir = PathBuf::from(bundle);
    let b = Bundle::load(&dir, &trust)?;
    let p = &b.manifest.preprocess;
    let chw = [p.channels as usize, p.height as usize, p.width as usize];
    let classes = b.manifest.class_names.len();
    let bytes = b.read_model(ModelFile::Fp32)?;
    let path = b.model_path();
    let phases: Vec<(&str, f64)> = vec![
        (
            "manifest + signature",
            median_ms(rounds, || Ok(Bundle::load(&dir, &trust)?))?,
        ),
        (
            "fp32 model: read",
            median_ms(rounds, || Ok(std::fs::read(&path)?))?,
        ),
        (
            "fp32 model: sha256",
            median_ms(rounds, || Ok(sha256_hex(&bytes)))?,
        ),
        (
            "fp32 model: read + sha256 overlapped",
            median_ms(rounds, || Ok(b.read_model(ModelFile::Fp32)?))?,
        ),
        (
            "fp32 model: protobuf decode",
            median_ms(rounds, || Ok(decode_onnx(&bytes, &path)?))?,
        ),
        (
            "fp32 model: decode + direct plan and pack",
            median_ms(rounds, || {
                let mut proto = decode_onnx(&bytes, &path)?;
                Ok(DirectClassifier::from_proto(
                    &mut proto, &path, chw, classes,
                )?)
            })?,
        ),
        (
            "other model files: read + sha256",
            median_ms(rounds, || Ok(b.verify_models_except(ModelFile::Fp32)?))?,
        ),
    ];
    let mut phases = phases;
    if b.manifest.int8.is_some() {
        phases.push((
            "int8 blob: read + sha256",
            median_ms(rounds, || Ok(b.read_model(ModelFile::Int8Blob)?))?,
        ));
        phases.push((
            "int8 blob: read, sha256, parse and repack",
            median_ms(rounds, || Ok(Int8Classifier::load(&b)?))?,
        ));
        phases.push((
            "other model files (for int8): read + sha256",
            median_ms(rounds, || Ok(b.verify_models_except(ModelFile::Int8Blob)?))?,
        ));
    }
    for (name, ms) in phases {
        println!("{name:<44}{ms:9.1} ms");
    }
    let mut kinds = vec![EngineKind::Fp32];
    if b.manifest.int8.is_some() {
        kinds.push(EngineKind::Int8);
    }
    for kind in kinds {
        let ms = median_ms(rounds, || {
            Ok(Engine::load(&Bundle::load(&dir, &trust)?, kind)?)
        })?;
        println!(
            "{:<44}{ms:9.1} ms",
            format!("bundle + engine {kind:?}, all of it")
        );
    }
    Ok(())
}
