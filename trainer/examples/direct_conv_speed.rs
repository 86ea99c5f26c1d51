//! Speed of the trainer's direct 3×3 convolution and its weight gradient (`model::cpu::direct`)
//! alone, at the SimCLR benchmark's shapes (128 views, ResNet-18 ×0.25 stages 1–3): ms per call and useful GMAC/s
//! (docs/benchmarks.md). Threads: rayon's default, or `RAYON_NUM_THREADS`.
//!
//!     cargo run --release -p scanside-trainer --example direct_conv_speed
use std::time::Instant;

use scanside_trainer::model::cpu::direct::{applies, conv3x3_same, conv3x3_same_weight_gradient};

fn main() {
    let batch = 128;
    for (ci, co, side) in [(16_usize, 16_usize, 32_usize), (32, 32, 16), (64, 64, 8)] {
        if !applies(side, ci, co) {
            println!("{ci}->{co} {side}x{side}: the direct kernel does not run on this host");
            continue;
        }
        let x: Vec<f32> = (0..batch * ci * side * side)
            .map(|i| (i % 97) as f32 * 0.01)
            .collect();
        let w: Vec<f32> = (0..co * ci * 9).map(|i| (i % 13) as f32 * 0.01).collect();
        let dy: Vec<f32> = (0..batch * co * side * side)
            .map(|i| (i % 89) as f32 * 0.01)
            .collect();
        let macs = (batch * co * ci * 9 * side * side) as f64;
        let time = |what: &str, run: &dyn Fn() -> Vec<f32>| {
            std::hint::black_box(run());
            let runs = 10;
            let started = Instant::now();
            for _ in 0..runs {
                std::hint::black_box(run());
            }
            let seconds = started.elapsed().as_secs_f64() / f64::from(runs);
            println!(
                "{ci}->{co} {side}x{side}, batch {batch}, {what}: {:.2} ms, {:.1} GMAC/s",
                seconds * 1e3,
                macs / seconds / 1e9
            );
        };
        time("forward", &|| {
            conv3x3_same(batch, [ci, side, side], co, &x, &w)
        });
        time("weight gradient", &|| {
            conv3x3_same_weight_gradient(batch, [ci, side, side], co, &x, &dy)
        });
    }
}
