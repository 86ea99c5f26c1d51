//! The built-in layer the firmware runs: a 64 -> 8 int8 fully connected layer with fused ReLU
//! and per-channel requantisation. Shared verbatim with the host test
//! `firmware/int8/tests/it/device_layer.rs`, which recomputes `EXPECTED` with the reference kernel.

use scanside_int8::FullyConnectedParams;

/// Inputs per sample.
pub const INPUT_LEN: usize = 64;
/// Output channels.
pub const OUTPUT_LEN: usize = 8;

/// Layer constants as the exporter would write them.
pub const PARAMS: FullyConnectedParams = FullyConnectedParams {
    input_len: INPUT_LEN,
    output_len: OUTPUT_LEN,
    input_offset: 12,
    output_offset: 10,
    activation_min: -128,
    activation_max: 127,
};

/// Deterministic test data from a linear congruential generator (Numerical Recipes constants).
const fn lcg_bytes<const N: usize>(seed: u32) -> [i8; N] {
    let mut out = [0_i8; N];
    let mut state = seed;
    let mut i = 0;
    while i < N {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        out[i] = (state >> 24) as u8 as i8;
        i += 1;
    }
    out
}

/// The input activations.
pub const INPUT: [i8; INPUT_LEN] = lcg_bytes(7);
/// Row-major `[OUTPUT_LEN][INPUT_LEN]` weights.
pub const WEIGHTS: [i8; INPUT_LEN * OUTPUT_LEN] = lcg_bytes(11);
/// int32 biases in accumulator scale.
pub const BIAS: [i32; OUTPUT_LEN] = [1200, -3400, 560, 0, -90, 20_000, -15_000, 777];
/// Q31 multipliers (`quantize_multiplier` of scales between 5e-4 and 5e-3).
pub const MULTIPLIERS: [i32; OUTPUT_LEN] = [
    1_717_986_918,
    1_288_490_189,
    1_503_238_554,
    1_932_735_283,
    1_099_511_628,
    2_061_584_302,
    1_374_389_535,
    1_181_116_006,
];
/// Shifts matching `MULTIPLIERS`.
pub const SHIFTS: [i32; OUTPUT_LEN] = [-9, -10, -8, -9, -9, -9, -9, -7];
/// What the host reference kernel computes for this layer.
pub const EXPECTED: [i8; OUTPUT_LEN] = [-21, 56, 57, -83, -35, -58, -48, -39];
