//! Where the direct fp32 engine's time goes: mean time per step (convolutions with their fused
//! residual add and ReLU) of a bundle's ONNX model on a fixed input (docs/benchmarks.md).
//!
//!     cargo run --release -p scanside-runtime --example fp32_profile -- BUNDLE PUBLIC_KEY [RUNS] [THREADS]
//!
//! PUBLIC_KEY `-` loads an unsigned bundle (development bundles under runs/).
use std::path::PathBuf;

use anyhow::Context;
use scanside_runtime::bundle::{Bundle, ModelFile, Trust};
use scanside_runtime::infer::DirectClassifier;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, key, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: fp32_profile BUNDLE PUBLIC_KEY [RUNS] [THREADS]");
    };
    let runs: usize = rest
        .first()
        .map_or(Ok(20_000), |r| r.parse())
        .context("RUNS")?;
    let threads: usize = rest
        .get(1)
        .map_or(Ok(1), |t| t.parse())
        .context("THREADS")?;
    let trust = Trust::from_key_files(&[PathBuf::from(key)], key == "-")?;
    let bundle = Bundle::load(bundle.as_ref(), &trust)?;
    let p = &bundle.manifest.preprocess;
    let chw = [p.channels as usize, p.height as usize, p.width as usize];
    let model = DirectClassifier::from_onnx(
        &bundle.read_model(ModelFile::Fp32)?,
        &bundle.model_path(),
        chw,
        bundle.manifest.class_names.len(),
    )?
    .with_threads(threads)?;
    let input: Vec<f32> = (0..chw.iter().product::<usize>())
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let steps = model.profile(&input, runs)?;
    let total: f64 = steps.iter().map(|(_, t)| t.as_secs_f64()).sum();
    for (what, t) in &steps {
        println!("{:8.2} µs  {what}", t.as_secs_f64() * 1e6);
    }
    println!("{:8.2} µs  total", total * 1e6);
    Ok(())
}
