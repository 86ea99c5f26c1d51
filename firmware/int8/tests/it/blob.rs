//! The blob format end to end on the host: write, parse, plan, run; and refusal of every kind
//! of damaged blob without a panic.

use scanside_int8::arith::quantize_multiplier;
use scanside_int8::blob::write::{
    encode, plan_memory, AlignedBlob, LayerSpec, ModelSpec, TensorSpec,
};
use scanside_int8::blob::{BlobError, Model, Op};
use scanside_int8::engine::run;
use scanside_int8::kernels::add::{add, AddParams, ADD_LEFT_SHIFT};
use scanside_int8::kernels::conv::{conv2d_reference, ConvParams};
use scanside_int8::kernels::fully_connected::{
    fully_connected, FullyConnectedParams, PerChannelRequant,
};
use scanside_int8::kernels::pool::{global_avg_pool, GlobalAvgPoolParams};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as u8 as i8).collect()
    }
}

fn tensor(h: usize, w: usize, c: usize, zero_point: i8, scale: f32) -> TensorSpec {
    TensorSpec {
        height: h,
        width: w,
        channels: c,
        zero_point,
        scale,
    }
}

#[allow(clippy::too_many_arguments)] // a test helper mirroring the layer record
fn weighted(
    op: Op,
    k: usize,
    stride: usize,
    pad: usize,
    input: usize,
    output: usize,
    cin: usize,
    cout: usize,
    rng: &mut Rng,
) -> LayerSpec {
    let wlen = match op {
        Op::DepthwiseConv2d => k * k * cout,
        Op::FullyConnected => cin * cout,
        _ => k * k * cin * cout,
    };
    let (multipliers, shifts) = (0..cout)
        .map(|c| quantize_multiplier(0.002 + 0.0003 * c as f64))
        .unzip();
    LayerSpec {
        op,
        kernel: k,
        stride,
        padding: pad,
        inputs: vec![input],
        output,
        activation_min: -128,
        activation_max: 127,
        params: [0; 6],
        weights: rng.i8s(wlen),
        bias: (0..cout).map(|c| 500 - 97 * c as i32).collect(),
        multipliers,
        shifts,
    }
}

/// A residual network in miniature: conv → conv → add(skip) → depthwise → GAP → FC.
fn small_model() -> ModelSpec {
    let mut rng = Rng(42);
    let tensors = vec![
        tensor(8, 8, 3, -3, 0.02),   // 0 input
        tensor(8, 8, 4, -128, 0.05), // 1 conv a (ReLU)
        tensor(8, 8, 4, 5, 0.04),    // 2 conv b
        tensor(8, 8, 4, -128, 0.06), // 3 add (ReLU)
        tensor(4, 4, 4, -7, 0.05),   // 4 depthwise stride 2
        tensor(1, 1, 4, 2, 0.03),    // 5 gap
        tensor(1, 1, 3, 0, 0.1),     // 6 logits
    ];
    let mut conv_a = weighted(Op::Conv2d, 3, 1, 1, 0, 1, 3, 4, &mut rng);
    conv_a.activation_min = -128; // zero point of a ReLU output: real 0
    let conv_b = weighted(Op::Conv2d, 3, 1, 1, 1, 2, 4, 4, &mut rng);
    let twice = 2.0 * 0.05_f64.max(0.04);
    let m1 = quantize_multiplier(0.05 / twice);
    let m2 = quantize_multiplier(0.04 / twice);
    let mo = quantize_multiplier(twice / (f64::from(1 << ADD_LEFT_SHIFT) * 0.06));
    let add_layer = LayerSpec {
        op: Op::Add,
        kernel: 0,
        stride: 1,
        padding: 0,
        inputs: vec![1, 2],
        output: 3,
        activation_min: -128,
        activation_max: 127,
        params: [m1.0, m1.1, m2.0, m2.1, mo.0, mo.1],
        weights: vec![],
        bias: vec![],
        multipliers: vec![],
        shifts: vec![],
    };
    let dw = weighted(Op::DepthwiseConv2d, 3, 2, 1, 3, 4, 4, 4, &mut rng);
    let gm = quantize_multiplier(0.05 / (0.03 * 16.0));
    let gap = LayerSpec {
        op: Op::GlobalAvgPool,
        inputs: vec![4],
        output: 5,
        params: [gm.0, gm.1, 0, 0, 0, 0],
        ..add_layer.clone()
    };
    let fc = weighted(Op::FullyConnected, 0, 1, 0, 5, 6, 4, 3, &mut rng);
    ModelSpec {
        tensors,
        layers: vec![conv_a, conv_b, add_layer, dw, gap, fc],
        input: 0,
        output: 6,
    }
}

fn rq(l: &LayerSpec) -> PerChannelRequant<'_> {
    PerChannelRequant {
        multipliers: &l.multipliers,
        shifts: &l.shifts,
    }
}

/// The same network computed kernel by kernel with separate buffers (no arena, no blob).
fn direct(spec: &ModelSpec, input: &[i8]) -> Vec<i8> {
    let t = &spec.tensors;
    let conv = |l: &LayerSpec, x: &[i8], depthwise: bool| {
        let (a, b) = (&t[l.inputs[0]], &t[l.output]);
        let p = ConvParams {
            input_height: a.height,
            input_width: a.width,
            input_channels: a.channels,
            output_height: b.height,
            output_width: b.width,
            output_channels: b.channels,
            kernel: l.kernel,
            stride: l.stride,
            padding: l.padding,
            input_offset: -i32::from(a.zero_point),
            output_offset: i32::from(b.zero_point),
            activation_min: l.activation_min,
            activation_max: l.activation_max,
        };
        let mut out = vec![0; b.height * b.width * b.channels];
        if depthwise {
            scanside_int8::kernels::depthwise::depthwise_conv2d(
                &p,
                x,
                &l.weights,
                &l.bias,
                rq(l),
                &mut out,
            )
            .unwrap();
        } else {
            conv2d_reference(&p, x, &l.weights, &l.bias, rq(l), &mut out).unwrap();
        }
        out
    };
    let l = &spec.layers;
    let a = conv(&l[0], input, false);
    let b = conv(&l[1], &a, false);
    let mut s = vec![0; a.len()];
    let p = l[2].params;
    add(
        &AddParams {
            input1_offset: -i32::from(t[1].zero_point),
            input2_offset: -i32::from(t[2].zero_point),
            output_offset: i32::from(t[3].zero_point),
            left_shift: ADD_LEFT_SHIFT,
            input1_multiplier: (p[0], p[1]),
            input2_multiplier: (p[2], p[3]),
            output_multiplier: (p[4], p[5]),
            activation_min: -128,
            activation_max: 127,
        },
        &a,
        &b,
        &mut s,
    )
    .unwrap();
    let d = conv(&l[3], &s, true);
    let mut g = vec![0; 4];
    global_avg_pool(
        &GlobalAvgPoolParams {
            height: 4,
            width: 4,
            channels: 4,
            input_offset: -i32::from(t[4].zero_point),
            output_offset: i32::from(t[5].zero_point),
            multiplier: (l[4].params[0], l[4].params[1]),
        },
        &d,
        &mut g,
    )
    .unwrap();
    let mut out = vec![0; 3];
    fully_connected(
        &FullyConnectedParams {
            input_len: 4,
            output_len: 3,
            input_offset: -i32::from(t[5].zero_point),
            output_offset: 0,
            activation_min: -128,
            activation_max: 127,
        },
        &g,
        &l[5].weights,
        &l[5].bias,
        rq(&l[5]),
        &mut out,
    )
    .unwrap();
    out
}

fn input() -> Vec<i8> {
    Rng(7).i8s(8 * 8 * 3)
}

#[test]
fn a_blob_taken_from_a_vec_is_the_same_blob_as_a_copied_one() {
    let (bytes, _) = encode(&small_model()).unwrap();
    let copied = AlignedBlob::new(&bytes);
    let taken = AlignedBlob::from_vec(bytes.clone());
    assert_eq!(taken.bytes(), &bytes[..]);
    assert_eq!(taken.bytes().as_ptr().align_offset(4), 0);
    let mut arena = vec![0_i8; Model::parse(copied.bytes()).unwrap().arena_bytes()];
    let a = run(
        &Model::parse(copied.bytes()).unwrap(),
        &mut arena,
        &input(),
        |_, _| (),
    )
    .unwrap()
    .to_vec();
    let b = run(
        &Model::parse(taken.bytes()).unwrap(),
        &mut arena,
        &input(),
        |_, _| (),
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn blob_runs_exactly_like_the_kernels_called_directly() {
    let spec = small_model();
    let (bytes, plan) = encode(&spec).unwrap();
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.bytes()).unwrap();
    assert_eq!(model.arena_bytes(), plan.arena_bytes);
    let mut arena = vec![0_i8; model.arena_bytes()];
    let mut ops = Vec::new();
    let out = run(&model, &mut arena, &input(), |i, op| ops.push((i, op)))
        .unwrap()
        .to_vec();
    assert_eq!(out, direct(&spec, &input()));
    assert_eq!(ops.len(), 6);
    assert_eq!(ops[2], (2, Op::Add));
    // Deterministic: a second run in a dirty arena gives the same answer.
    let again = run(&model, &mut arena, &input(), |_, _| ()).unwrap();
    assert_eq!(again, &out[..]);
    // The host's prepared run (repacked filters on x86-64) gives the same bits, and so does
    // a run with the convolutions in bands of rows on 2, 3 and 5 threads.
    let prepared = scanside_int8::engine::HostPrepared::new(&model);
    let fast =
        scanside_int8::engine::run_prepared(&model, &prepared, &mut arena, &input(), |_, _| ())
            .unwrap();
    assert_eq!(fast, &out[..]);
    for threads in [2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let banded = pool
            .install(|| {
                let buffers = (&mut arena[..], &input()[..]);
                scanside_int8::engine::run_on_threads(&model, &prepared, buffers, threads)
                    .map(<[i8]>::to_vec)
            })
            .unwrap();
        assert_eq!(banded, out, "{threads} threads");
    }
}

#[test]
fn multiply_accumulates_are_counted_per_layer() {
    // conv a 8·8 outputs × 3·3·3·4 weights, conv b 8·8 × 3·3·4·4, add 0, depthwise 4·4 ×
    // 3·3·4, pool 0, fully connected 4·3.
    let (bytes, _) = encode(&small_model()).unwrap();
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.bytes()).unwrap();
    let per_layer: Vec<u64> = (0..model.layer_count() + 1)
        .map(|i| model.layer_macs(i))
        .collect();
    assert_eq!(per_layer, [6912, 9216, 0, 576, 0, 12, 0]);
    assert_eq!(model.macs(), per_layer.iter().sum::<u64>());
}

#[test]
fn blob_records_read_back_as_written() {
    let spec = small_model();
    let (bytes, _) = encode(&spec).unwrap();
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.bytes()).unwrap();
    assert_eq!((model.tensor_count(), model.layer_count()), (7, 6));
    for (i, t) in spec.tensors.iter().enumerate() {
        let got = model.tensor(i).unwrap();
        assert_eq!(
            (
                got.height,
                got.width,
                got.channels,
                got.zero_point,
                got.scale
            ),
            (t.height, t.width, t.channels, t.zero_point, t.scale)
        );
    }
    for (i, l) in spec.layers.iter().enumerate() {
        let got = model.layer(i).unwrap();
        assert_eq!(got.op, l.op);
        assert_eq!(got.weights, &l.weights[..]);
        assert_eq!(got.bias, &l.bias[..]);
        assert_eq!(got.multipliers, &l.multipliers[..]);
        assert_eq!(got.shifts, &l.shifts[..]);
        assert_eq!(got.params, l.params);
    }
    assert!(model.layer(6).is_none() && model.tensor(7).is_none());
}

#[test]
fn memory_plan_reuses_dead_tensors() {
    let spec = small_model();
    let plan = plan_memory(&spec);
    // The input (192 B) and the first two 256 B activations are live together at the add; the
    // planner must reuse memory for the rest rather than summing everything.
    assert!(plan.arena_bytes < plan.unplanned_bytes, "{plan:?}");
    assert!(plan.arena_bytes >= 3 * 256, "{plan:?}");
    assert!(plan.offsets.iter().all(|o| o % 4 == 0));
}

#[test]
fn damaged_blobs_are_refused_with_the_reason() {
    let (bytes, _) = encode(&small_model()).unwrap();
    let parse = |b: &[u8]| Model::parse(AlignedBlob::new(b).bytes()).map(|_| ());
    assert_eq!(parse(&bytes[..10]), Err(BlobError::Truncated));
    assert_eq!(parse(&bytes[..bytes.len() - 4]), Err(BlobError::Truncated));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(parse(&magic), Err(BlobError::BadMagic));
    let mut version = bytes.clone();
    version[4] = 9;
    assert_eq!(parse(&version), Err(BlobError::UnsupportedVersion));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(parse(&flipped), Err(BlobError::ChecksumMismatch));
    // Misaligned memory is reported, not read.
    let mut shifted = vec![0_u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let aligned = AlignedBlob::new(&shifted);
    assert_eq!(
        Model::parse(&aligned.bytes()[1..]).map(|_| ()),
        Err(BlobError::Misaligned)
    );
}

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = scanside_int8::blob::checksum(&b[16..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn a_memory_plan_that_overwrites_a_live_tensor_is_refused() {
    let (bytes, _) = encode(&small_model()).unwrap();
    // Move tensor 2 (conv b's output, read by the add) onto tensor 1 (also read by the add).
    let mut b = bytes.clone();
    let t1 = 40 + 16;
    let t2 = 40 + 2 * 16;
    let offset1: [u8; 4] = b[t1 + 8..t1 + 12].try_into().unwrap();
    b[t2 + 8..t2 + 12].copy_from_slice(&offset1);
    assert_eq!(
        Model::parse(AlignedBlob::new(&with_crc(b)).bytes()).map(|_| ()),
        Err(BlobError::BadMemoryPlan)
    );
}

#[test]
fn mutated_blobs_with_valid_checksums_never_panic_the_parser_or_the_engine() {
    // A deterministic stand-in for fuzzing: corrupt header and table bytes (fixing the CRC so
    // the parser's deeper checks are reached), then parse and, when accepted, run.
    let (bytes, _) = encode(&small_model()).unwrap();
    let tables_end = 40 + 7 * 16 + 6 * 64;
    let mut rng = Rng(3);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next() % 3 {
            let at = 16 + rng.next() as usize % (tables_end - 16);
            b[at] = rng.next() as u8;
        }
        let b = with_crc(b);
        let blob = AlignedBlob::new(&b);
        if let Ok(model) = Model::parse(blob.bytes()) {
            accepted += 1;
            let mut arena = vec![0_i8; model.arena_bytes()];
            let mut x = vec![0_i8; model.input().len()];
            x.iter_mut().enumerate().for_each(|(i, v)| *v = i as i8);
            let _ = run(&model, &mut arena, &x, |_, _| ());
        }
    }
    // Some mutations (e.g. of scales or biases' neighbours) are harmless and must still run.
    assert!(accepted > 0);
}

#[test]
fn the_engine_refuses_a_small_arena_and_a_wrong_input() {
    let (bytes, _) = encode(&small_model()).unwrap();
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.bytes()).unwrap();
    let mut small = vec![0_i8; model.arena_bytes() - 1];
    assert_eq!(
        run(&model, &mut small, &input(), |_, _| ()).map(|_| ()),
        Err(scanside_int8::engine::RunError::ArenaTooSmall)
    );
    let mut arena = vec![0_i8; model.arena_bytes()];
    assert_eq!(
        run(&model, &mut arena, &input()[1..], |_, _| ()).map(|_| ()),
        Err(scanside_int8::engine::RunError::InputLength)
    );
}

#[test]
fn fuzz_seeds_are_the_small_model_and_its_vectors() {
    // The cargo-fuzz targets (firmware/fuzz) start from these files; they must stay valid
    // as the format evolves. SCANSIDE_UPDATE_FUZZ_SEEDS=1 rewrites them.
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let (blob, _) = encode(&small_model()).unwrap();
    let x = input();
    let expected = direct(&small_model(), &x);
    let vectors = scanside_int8::vectors::write(&[(x, expected)]);
    if std::env::var_os("SCANSIDE_UPDATE_FUZZ_SEEDS").is_some() {
        std::fs::write(seeds.join("small_model.i8"), &blob).unwrap();
        std::fs::write(seeds.join("small_model.vectors"), &vectors).unwrap();
    }
    assert_eq!(
        std::fs::read(seeds.join("small_model.i8")).unwrap(),
        blob,
        "stale fuzz seed: rerun with SCANSIDE_UPDATE_FUZZ_SEEDS=1"
    );
    assert_eq!(
        std::fs::read(seeds.join("small_model.vectors")).unwrap(),
        vectors
    );
    assert!(Model::parse(AlignedBlob::new(&blob).bytes()).is_ok());
}
