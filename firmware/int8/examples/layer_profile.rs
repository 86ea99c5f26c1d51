//! Per-layer timing of the int8 engine on the host: runs an int8 blob many times on a fixed
//! synthetic input and prints each layer's mean time and MAC rate, to find the layers worth
//! optimising.
//!
//! `cargo run --release -p scanside-int8 --features std --example layer_profile -- MODEL.i8 [RUNS]`

use std::time::Instant;

use scanside_int8::blob::Model;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: layer_profile MODEL.i8 [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = match args.next().map(|r| r.parse()) {
        None => 20_000,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("RUNS must be a positive integer");
            std::process::exit(2);
        }
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    });
    // The blob's int32 arrays are read in place: 4-byte aligned storage.
    let mut aligned = vec![0_u32; bytes.len().div_ceil(4)];
    bytemuck::cast_slice_mut::<u32, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
    let model = Model::parse(&bytemuck::cast_slice::<u32, u8>(&aligned)[..bytes.len()])
        .unwrap_or_else(|e| {
            eprintln!("{path}: not an int8 model blob: {e}");
            std::process::exit(1);
        });
    #[cfg(target_arch = "x86_64")]
    let prepared = scanside_int8::engine::HostPrepared::new(&model);
    let mut arena = vec![0_i8; model.arena_bytes()];
    let input: Vec<i8> = (0..model.input().len())
        .map(|i| (i * 37 % 251) as i8)
        .collect();
    let layers = model.layer_count();
    let mut seconds = vec![0_f64; layers];
    let mut stamps = Vec::with_capacity(layers + 1);
    for _ in 0..runs {
        stamps.clear();
        let on_layer = |_, _| stamps.push(Instant::now());
        #[cfg(target_arch = "x86_64")]
        let result =
            scanside_int8::engine::run_prepared(&model, &prepared, &mut arena, &input, on_layer);
        #[cfg(not(target_arch = "x86_64"))]
        let result = scanside_int8::engine::run(&model, &mut arena, &input, on_layer);
        if let Err(e) = result {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
        stamps.push(Instant::now());
        for (total, pair) in seconds.iter_mut().zip(stamps.windows(2)) {
            *total += (pair[1] - pair[0]).as_secs_f64();
        }
    }
    let mut sum_us = 0.0;
    for (index, total) in seconds.iter().enumerate() {
        let (Some(layer), us) = (model.layer(index), total / runs as f64 * 1e6) else {
            continue;
        };
        let Some(out) = model.tensor(layer.output) else {
            continue;
        };
        let macs = model.layer_macs(index);
        sum_us += us;
        println!(
            "{index:3} {:<16} out {:>3}x{:<3}x{:<4} {:>8} MACs {us:8.2} µs {:7.1} GMAC/s",
            format!("{:?}", layer.op),
            out.height,
            out.width,
            out.channels,
            macs,
            macs as f64 / us / 1e3
        );
    }
    println!("total {sum_us:.2} µs per run ({runs} runs)");
}
