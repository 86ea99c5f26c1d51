//! Does batching help tract here? Times per-image fp32 inference of an exported model (3×28×28
//! input) at batch 1, 2, 4, 8 and 16 — the measurement behind screening images in parallel
//! sessions (`scanside screen --jobs`) rather than in batches (docs/benchmarks.md).
//!
//!     cargo run --release -p scanside-runtime --example tract_batch -- BUNDLE/model.onnx
use std::time::Instant;

use tract_onnx::prelude::*;
fn main() -> TractResult<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tract_batch MODEL.onnx"))?;
    let bytes = std::fs::read(&path)?;
    for batch in [1usize, 2, 4, 8, 16] {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])?
            .with_input_fact(0, f32::fact([batch, 3, 28, 28]).into())?
            .into_optimized()?
            .into_runnable()?;
        let input: Tensor =
            tract_ndarray::Array4::<f32>::from_shape_fn((batch, 3, 28, 28), |(n, c, y, x)| {
                ((n + c * 7 + y * 3 + x) % 17) as f32 / 17.0
            })
            .into();
        for _ in 0..20 {
            plan.run(tvec!(input.clone().into()))?;
        }
        let runs = 2000 / batch;
        let t0 = Instant::now();
        for _ in 0..runs {
            plan.run(tvec!(input.clone().into()))?;
        }
        let per_image = t0.elapsed().as_secs_f64() * 1e3 / (runs * batch) as f64;
        println!("batch {batch:2}: {per_image:.3} ms per image");
    }
    Ok(())
}
