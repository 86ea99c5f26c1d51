//! Residual add, global average pooling and max pooling over NHWC int8 tensors.

use crate::arith::{
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_prepared,
    right_shift_constants,
};
#[cfg(all(feature = "std", target_arch = "x86_64"))]
use crate::kernels::conv::{requant_lanes, requantize_lanes, requantize_lanes16, store_lanes};
use crate::kernels::conv::{volume, ConvParams};
use crate::KernelError;

/// Fixed-point constants of an int8 addition of two differently quantised tensors (TFLite's
/// scheme): both inputs are shifted left by `left_shift`, rescaled to a common scale of twice
/// the larger input scale, added, and the sum rescaled to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddParams {
    /// Minus the first input's zero point.
    pub input1_offset: i32,
    /// Minus the second input's zero point.
    pub input2_offset: i32,
    /// The output zero point.
    pub output_offset: i32,
    /// Headroom bits given to the inputs before rescaling (TFLite uses 20 for int8).
    pub left_shift: i32,
    /// First input's multiplier and shift (`s1 / 2·max(s1, s2)`).
    pub input1_multiplier: (i32, i32),
    /// Second input's multiplier and shift (`s2 / 2·max(s1, s2)`).
    pub input2_multiplier: (i32, i32),
    /// Output multiplier and shift (`2·max(s1, s2) / (2^left_shift · s_out)`).
    pub output_multiplier: (i32, i32),
    /// Lower clamp (the zero point for a fused ReLU).
    pub activation_min: i8,
    /// Upper clamp.
    pub activation_max: i8,
}

/// Left shift TFLite gives int8 inputs of an add.
pub const ADD_LEFT_SHIFT: i32 = 20;

fn shift_ok(s: i32) -> bool {
    (-31..=30).contains(&s)
}

/// Below this many elements [`add`] computes every input rescaling directly; from here on it
/// tabulates them (2 × 256 rescalings, 2 KiB of stack) and looks each element up.
const ADD_TABLE_MIN_ELEMENTS: usize = 512;

/// `out = a + b` element by element, in real terms, bit for bit equal to [`add_reference`].
///
/// Each input's rescaling (offset, left shift, fixed-point multiply) depends on its int8 value
/// only, so for tensors of more than a few hundred elements both are tabulated once over the
/// 256 possible values; per element that leaves two table reads, the saturating sum and the
/// output requantisation (of ~80 instructions per element on Cortex-M4, two thirds were the
/// input rescalings).
pub fn add(params: &AddParams, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check_add(params, a, b, output)?;
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if add_avx512_applies(params)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("avx512f")
    {
        #[allow(unsafe_code)]
        // SAFETY: `add_avx512` requires AVX2 and AVX-512 F, checked just above.
        return unsafe { add_avx512(params, a, b, output) };
    }
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if add_avx2_applies(params) && std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `add_avx2` only requires the CPU to support AVX2, checked just above.
        return unsafe { add_avx2(params, a, b, output) };
    }
    add_portable(params, a, b, output)
}

/// The body of [`add`] without vector instructions (shapes checked by the caller): the
/// reference below [`ADD_TABLE_MIN_ELEMENTS`], the tabulated rescalings from there on.
fn add_portable(
    params: &AddParams,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    if output.len() < ADD_TABLE_MIN_ELEMENTS {
        return add_reference(params, a, b, output);
    }
    let p = params;
    let table = |offset: i32, (multiplier, shift): (i32, i32)| -> [i32; 256] {
        core::array::from_fn(|i| {
            let x = i32::from(i as u8 as i8);
            multiply_by_quantized_multiplier((x + offset) << p.left_shift, multiplier, shift)
        })
    };
    let scaled1 = table(p.input1_offset, p.input1_multiplier);
    let scaled2 = table(p.input2_offset, p.input2_multiplier);
    let (multiplier, shift) = p.output_multiplier;
    let (low, high) = (i32::from(p.activation_min), i32::from(p.activation_max));
    let pairs = output.iter_mut().zip(a).zip(b);
    if shift < 0 {
        // The output rescaling's constants once, not per element (equal to `add_output`).
        let (rounding, high_shift) = right_shift_constants(shift.unsigned_abs());
        for ((out, &x1), &x2) in pairs {
            let sum = scaled1[usize::from(x1 as u8)].saturating_add(scaled2[usize::from(x2 as u8)]);
            let scaled =
                multiply_by_quantized_multiplier_prepared(sum, multiplier, rounding, high_shift);
            *out = scaled.saturating_add(p.output_offset).max(low).min(high) as i8;
        }
    } else {
        for ((out, &x1), &x2) in pairs {
            let sum = scaled1[usize::from(x1 as u8)].saturating_add(scaled2[usize::from(x2 as u8)]);
            *out = add_output(p, sum);
        }
    }
    Ok(())
}

/// Whether [`add_avx2`] computes `params` exactly: input rescalings that do not shift left
/// (TFLite's scheme: each input multiplier is at most 1/2), a right-shifting output scale,
/// non-negative multipliers, offsets of int8 zero points (so every shifted input,
/// `(x + offset)·2^20`, stays below 2^29 in magnitude) and a small output offset.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn add_avx2_applies(p: &AddParams) -> bool {
    p.input1_multiplier.1 <= 0
        && p.input2_multiplier.1 <= 0
        && p.output_multiplier.1 < 0
        && p.input1_multiplier.0 >= 0
        && p.input2_multiplier.0 >= 0
        && p.output_multiplier.0 >= 0
        && p.input1_offset.unsigned_abs() <= 255
        && p.input2_offset.unsigned_abs() <= 255
        && p.left_shift <= 20
        && p.output_offset.unsigned_abs() <= 1 << 16
}

/// [`add`] eight elements at a time with the fixed-point arithmetic in vector lanes, bit for
/// bit equal to [`add_reference`]. Replaces table lookups by `vpgatherdd`, which measured
/// slower than the arithmetic (15 % of the host engine's time). Each input's rescaling is
/// [`rescale_lanes`]; the two rescaled values are below 2^29 in magnitude, so their sum cannot
/// saturate; the output is requantised as a convolution's ([`requantize_lanes`]). The last few
/// elements go through [`add_reference`].
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn add_avx2(p: &AddParams, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    use core::arch::x86_64::*;
    let (multiplier, shift) = p.output_multiplier;
    let lanes = requant_lanes(&[multiplier; 8], &[shift; 8]);
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    let left_shift = _mm_cvtsi32_si128(p.left_shift);
    // A multiplier of exactly ½ (2^30, no shift: the input with the larger scale, in TFLite's
    // scheme) on an even value `(x + offset)·2^left_shift` is exact: the rescaling is a shift
    // by one bit less, no multiply.
    let half_shift = _mm_cvtsi32_si128(p.left_shift - 1);
    let input = |bytes: &[i8], offset: i32, (multiplier, shift): (i32, i32)| {
        #[allow(unsafe_code)]
        // SAFETY: `bytes` is an 8-element chunk: 8 bytes read.
        let x = unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes.as_ptr().cast())) };
        let x = _mm256_add_epi32(x, _mm256_set1_epi32(offset));
        if (multiplier, shift) == (HALF, 0) && p.left_shift > 0 {
            return _mm256_sll_epi32(x, half_shift);
        }
        rescale_lanes(
            _mm256_sll_epi32(x, left_shift),
            multiplier,
            shift.unsigned_abs(),
        )
    };
    let whole = output.len() / 8 * 8;
    for ((out, x1), x2) in output[..whole]
        .chunks_exact_mut(8)
        .zip(a.chunks_exact(8))
        .zip(b.chunks_exact(8))
    {
        let sum = _mm256_add_epi32(
            input(x1, p.input1_offset, p.input1_multiplier),
            input(x2, p.input2_offset, p.input2_multiplier),
        );
        store_lanes(requantize_lanes(sum, &lanes, clamp), out);
    }
    add_reference(p, &a[whole..], &b[whole..], &mut output[whole..])
}

/// Whether [`add_avx512`] computes `params` exactly: where [`add_avx2`] does, with TFLite's
/// left shift of 20 and each input's multiplier either exactly ½ or a right shift by at most
/// 19 (the bounds of [`rescale_split`]).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn add_avx512_applies(p: &AddParams) -> bool {
    let input_ok = |(multiplier, shift): (i32, i32)| {
        (multiplier, shift) == (HALF, 0) || (-19..=0).contains(&shift)
    };
    add_avx2_applies(p)
        && p.left_shift == ADD_LEFT_SHIFT
        && input_ok(p.input1_multiplier)
        && input_ok(p.input2_multiplier)
}

/// [`add_avx2`] sixteen elements at a time in 512-bit registers, the input rescalings in
/// 32-bit arithmetic ([`rescale_split`], no 64-bit products), bit for bit equal to
/// [`add_reference`]. The last few elements go through [`add_avx2`].
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,avx512f")]
fn add_avx512(p: &AddParams, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    use core::arch::x86_64::*;
    let (multiplier, shift) = p.output_multiplier;
    let lanes: [[i32; 16]; 4] = requant_lanes(&[multiplier; 16], &[shift; 16]);
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    let input = |bytes: &[i8], offset: i32, (multiplier, shift): (i32, i32)| {
        #[allow(unsafe_code)]
        // SAFETY: `bytes` is a 16-element chunk: 16 bytes read, unaligned.
        let x = unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(bytes.as_ptr().cast())) };
        let v = _mm512_add_epi32(x, _mm512_set1_epi32(offset));
        if (multiplier, shift) == (HALF, 0) {
            // ((x + offset)·2^20)·½, exact (see `add_avx2`).
            return _mm512_slli_epi32::<{ ADD_LEFT_SHIFT as u32 - 1 }>(v);
        }
        rescale_split(v, multiplier, shift.unsigned_abs())
    };
    let whole = output.len() / 16 * 16;
    for ((out, x1), x2) in output[..whole]
        .chunks_exact_mut(16)
        .zip(a.chunks_exact(16))
        .zip(b.chunks_exact(16))
    {
        let sum = _mm512_add_epi32(
            input(x1, p.input1_offset, p.input1_multiplier),
            input(x2, p.input2_offset, p.input2_multiplier),
        );
        // Already clamped to int8: the saturating narrowing keeps every value.
        let bytes = _mm512_cvtsepi32_epi8(requantize_lanes16(sum, &lanes, clamp));
        #[allow(unsafe_code)]
        // SAFETY: `out` is a 16-element chunk: 16 bytes written, unaligned.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().cast(), bytes);
        }
    }
    add_avx2(p, &a[whole..], &b[whole..], &mut output[whole..])
}

/// `multiply_by_quantized_multiplier(v·2^20, multiplier, −exponent)` in sixteen lanes with
/// 32-bit products, for `|v| < 2^9`, `multiplier ≥ 0` and `exponent ≤ 19`. The 64-bit form
/// ([`rescale_lanes`]) is `⌊(v·2^20·m + q·2^30) / 2^(31+e)⌋ = ⌊(v·m + q·2^10) / 2^(11+e)⌋`;
/// with `m = mh·2^11 + ml` (`ml < 2^11`) that is `⌊(v·mh + ⌊(v·ml + q·2^10) / 2^11⌋) / 2^e⌋`
/// (nested floors of powers of two), where `|v·ml| < 2^20`, `q·2^10 ≤ (2^19 + 1)·2^10`,
/// `|v·mh| < 2^29`: every term fits an int32.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
#[inline]
fn rescale_split(
    v: core::arch::x86_64::__m512i,
    multiplier: i32,
    exponent: u32,
) -> core::arch::x86_64::__m512i {
    use core::arch::x86_64::*;
    let (high, low) = (multiplier >> 11, multiplier & 0x7FF);
    // q·2^10: 2^10 without a right shift; else (2^e + 1)·2^10 − n·2^11, n = 1 where v < 0.
    let rounding = if exponent == 0 {
        _mm512_set1_epi32(1 << 10)
    } else {
        let constant = _mm512_set1_epi32(((1 << exponent) + 1) << 10);
        _mm512_add_epi32(
            constant,
            _mm512_slli_epi32::<11>(_mm512_srai_epi32::<31>(v)),
        )
    };
    let fraction = _mm512_srai_epi32::<11>(_mm512_add_epi32(
        _mm512_mullo_epi32(v, _mm512_set1_epi32(low)),
        rounding,
    ));
    let whole = _mm512_add_epi32(_mm512_mullo_epi32(v, _mm512_set1_epi32(high)), fraction);
    _mm512_sra_epi32(whole, _mm_cvtsi32_si128(exponent as i32))
}

/// The fixed-point multiplier of ½.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
const HALF: i32 = 1 << 30;

/// `multiply_by_quantized_multiplier(x, multiplier, −exponent)` in eight lanes, for
/// `exponent` in `0..=31`, `multiplier ≥ 0` and `|x| < 2^30`: `⌊(x·m + q·2^30) / 2^(31+e)⌋` in 64 bits, with
/// `q = 2^e + 1 − 2n` (`n = 1` where `x` and `m` differ in sign) for a right shift — the form
/// proven equal to the two roundings at [`crate::arith::multiply_by_quantized_multiplier_right`]
/// — and `q = 1` for none (the rounding doubling high multiply alone). The sum is doubled
/// before its high word is taken, so one form covers `e = 0`: `|x·m| < 2^61` and
/// `q·2^30 ≤ 2^61 + 2^30` keep the doubled sum inside an i64.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
#[inline]
fn rescale_lanes(
    x: core::arch::x86_64::__m256i,
    multiplier: i32,
    exponent: u32,
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    let m = _mm256_set1_epi32(multiplier);
    let q = if exponent == 0 {
        _mm256_set1_epi32(1)
    } else {
        let rounding = (1_u32 << exponent).wrapping_add(1) as i32;
        // x and m differ in sign where x < 0 (m ≥ 0).
        let differ = _mm256_srai_epi32::<31>(x);
        _mm256_add_epi32(_mm256_set1_epi32(rounding), _mm256_slli_epi32::<1>(differ))
    };
    let low_words = _mm256_set1_epi64x(0xFFFF_FFFF);
    let even = _mm256_add_epi64(
        _mm256_mul_epi32(x, m),
        _mm256_slli_epi64::<30>(_mm256_and_si256(q, low_words)),
    );
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), m),
        _mm256_slli_epi64::<30>(_mm256_srli_epi64::<32>(q)),
    );
    let (even, odd) = (_mm256_slli_epi64::<1>(even), _mm256_slli_epi64::<1>(odd));
    let high_words = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
    _mm256_sra_epi32(high_words, _mm_cvtsi32_si128(exponent as i32))
}

fn check_add(params: &AddParams, a: &[i8], b: &[i8], output: &[i8]) -> Result<(), KernelError> {
    if a.len() != output.len() || b.len() != output.len() {
        return Err(KernelError::ShapeMismatch);
    }
    if params.activation_min > params.activation_max {
        return Err(KernelError::InvalidActivationRange);
    }
    let p = params;
    if !(0..=20).contains(&p.left_shift)
        || ![
            p.input1_multiplier.1,
            p.input2_multiplier.1,
            p.output_multiplier.1,
        ]
        .into_iter()
        .all(shift_ok)
    {
        return Err(KernelError::ShiftOutOfRange);
    }
    Ok(())
}

/// The sum's requantisation to the output, shared by both variants.
#[inline(always)]
fn add_output(p: &AddParams, sum: i32) -> i8 {
    // max/min, not `clamp` (which re-checks its bounds per element): `check_add` refused an
    // empty range.
    multiply_by_quantized_multiplier(sum, p.output_multiplier.0, p.output_multiplier.1)
        .saturating_add(p.output_offset)
        .max(i32::from(p.activation_min))
        .min(i32::from(p.activation_max)) as i8
}

/// `out = a + b` element by element, in real terms: the generic reference of [`add`].
pub fn add_reference(
    params: &AddParams,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    check_add(params, a, b, output)?;
    let p = params;
    for ((out, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
        let shifted1 = (i32::from(x1) + p.input1_offset) << p.left_shift;
        let shifted2 = (i32::from(x2) + p.input2_offset) << p.left_shift;
        let scaled1 = multiply_by_quantized_multiplier(
            shifted1,
            p.input1_multiplier.0,
            p.input1_multiplier.1,
        );
        let scaled2 = multiply_by_quantized_multiplier(
            shifted2,
            p.input2_multiplier.0,
            p.input2_multiplier.1,
        );
        *out = add_output(p, scaled1.saturating_add(scaled2));
    }
    Ok(())
}

/// Constants of a global average pool `[H][W][C] → [C]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPoolParams {
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Minus the input zero point.
    pub input_offset: i32,
    /// The output zero point.
    pub output_offset: i32,
    /// `s_in / (s_out · H · W)` as multiplier and shift: the division by the pixel count is
    /// part of the requantisation, so no integer division runs on the device.
    pub multiplier: (i32, i32),
}

/// `out[c] = requant(Σ_hw (x + input_offset))`. Generic reference.
pub fn global_avg_pool(
    params: &GlobalAvgPoolParams,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    let p = params;
    let pixels = p
        .height
        .checked_mul(p.width)
        .ok_or(KernelError::ShapeMismatch)?;
    // The int32 sum must not overflow: 255 · pixels < 2^31.
    if volume(p.height, p.width, p.channels) != Some(input.len())
        || output.len() != p.channels
        || pixels == 0
        || pixels > (i32::MAX / 256) as usize
    {
        return Err(KernelError::ShapeMismatch);
    }
    if !shift_ok(p.multiplier.1) {
        return Err(KernelError::ShiftOutOfRange);
    }
    for (c, out) in output.iter_mut().enumerate() {
        let sum = input[c..]
            .iter()
            .step_by(p.channels)
            .map(|&x| i32::from(x) + p.input_offset)
            .sum::<i32>();
        let raw = multiply_by_quantized_multiplier(sum, p.multiplier.0, p.multiplier.1)
            .saturating_add(p.output_offset);
        *out = raw.clamp(-128, 127) as i8;
    }
    Ok(())
}

/// Max pooling with the output in the input's quantisation; padded positions are ignored.
/// Uses [`ConvParams`] for the geometry (`input_channels == output_channels`; the offsets and
/// clamp are unused except `activation_min/max`).
pub fn max_pool(params: &ConvParams, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    let p = params;
    let extent_ok = ConvParams::output_extent(p.input_height, p.kernel, p.stride, p.padding)
        == Some(p.output_height)
        && ConvParams::output_extent(p.input_width, p.kernel, p.stride, p.padding)
            == Some(p.output_width);
    if !extent_ok
        || p.input_channels != p.output_channels
        || p.padding >= p.kernel
        || volume(p.input_height, p.input_width, p.input_channels) != Some(input.len())
        || volume(p.output_height, p.output_width, p.output_channels) != Some(output.len())
    {
        return Err(KernelError::ShapeMismatch);
    }
    if p.activation_min > p.activation_max {
        return Err(KernelError::InvalidActivationRange);
    }
    let c = p.input_channels;
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            for ch in 0..c {
                let best = p
                    .window(oy, ox)
                    .map(|(_, (iy, ix))| input[(iy * p.input_width + ix) * c + ch])
                    .max()
                    .unwrap_or(i8::MIN);
                output[(oy * p.output_width + ox) * c + ch] =
                    best.clamp(p.activation_min, p.activation_max);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::quantize_multiplier;

    fn add_params(s1: f64, z1: i32, s2: f64, z2: i32, so: f64, zo: i32) -> AddParams {
        let twice_max = 2.0 * s1.max(s2);
        AddParams {
            input1_offset: -z1,
            input2_offset: -z2,
            output_offset: zo,
            left_shift: ADD_LEFT_SHIFT,
            input1_multiplier: quantize_multiplier(s1 / twice_max),
            input2_multiplier: quantize_multiplier(s2 / twice_max),
            output_multiplier: quantize_multiplier(
                twice_max / (f64::from(1 << ADD_LEFT_SHIFT) * so),
            ),
            activation_min: -128,
            activation_max: 127,
        }
    }

    #[test]
    fn add_matches_real_addition_within_one_step() {
        let (s1, z1, s2, z2, so, zo) = (0.05, -128, 0.013, 7, 0.06, -20);
        let p = add_params(s1, z1, s2, z2, so, zo);
        let a: Vec<i8> = (-128..=127).collect();
        let b: Vec<i8> = (-128..=127).rev().collect();
        let mut out = vec![0; 256];
        add(&p, &a, &b, &mut out).unwrap();
        for i in 0..256 {
            let real =
                (f64::from(a[i]) - f64::from(z1)) * s1 + (f64::from(b[i]) - f64::from(z2)) * s2;
            let want = (real / so).round() + f64::from(zo);
            let want = want.clamp(-128.0, 127.0);
            assert!(
                (f64::from(out[i]) - want).abs() <= 1.0,
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn fast_and_tabulated_adds_equal_the_reference_bit_for_bit() {
        // Every pair of int8 values (65,536 elements), for scales that make either input the
        // larger one (one input multiplier 1/2, shift 0; the other a right shift), equal
        // scales (both 1/2) and a fused ReLU: the vector path on x86-64 with AVX2, the
        // tabulated one everywhere.
        let a: Vec<i8> = (0..65_536).map(|i| (i % 256) as u8 as i8).collect();
        let b: Vec<i8> = (0..65_536).map(|i| (i / 256) as u8 as i8).collect();
        for (s1, z1, s2, z2, so, zo, relu) in [
            (0.05, -128, 0.013, 7, 0.06, -20, false),
            (0.002, 3, 0.9, -100, 0.4, -128, true),
            (0.1, 0, 0.1, 0, 0.2, 5, false),
        ] {
            let mut p = add_params(s1, z1, s2, z2, so, zo);
            if relu {
                p.activation_min = zo as i8;
            }
            // All pairs, and a length that leaves a tail after whole SIMD blocks.
            for n in [a.len(), 1_003] {
                let (mut fast, mut tabulated, mut slow) =
                    (vec![0_i8; n], vec![0_i8; n], vec![0_i8; n]);
                add(&p, &a[..n], &b[..n], &mut fast).unwrap();
                add_portable(&p, &a[..n], &b[..n], &mut tabulated).unwrap();
                add_reference(&p, &a[..n], &b[..n], &mut slow).unwrap();
                assert_eq!(fast, slow, "scales {s1} {s2} → {so}, {n} elements");
                assert_eq!(
                    tabulated, slow,
                    "tables, scales {s1} {s2} → {so}, {n} elements"
                );
            }
        }
    }

    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    #[test]
    fn split_rescaling_equals_the_reference_for_every_input() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP: no AVX-512 F on this CPU");
            return;
        }
        // Every shifted input v (|v| ≤ 383: an int8 plus an int8 zero point's offset), every
        // allowed exponent, multipliers across [2^30, 2^31) with low bits set and clear.
        let values: Vec<i32> = (-383..=383).collect();
        for exponent in 0..=19_u32 {
            for multiplier in [
                1 << 30,
                (1 << 30) + 1,
                1_518_500_250,
                2_147_481_600,
                i32::MAX,
            ] {
                for chunk in values.chunks(16) {
                    let mut lanes = [0_i32; 16];
                    lanes[..chunk.len()].copy_from_slice(chunk);
                    #[allow(unsafe_code)]
                    // SAFETY: AVX-512 F checked above; `lanes` is 16 int32 (64 bytes).
                    let got: [i32; 16] = unsafe {
                        use core::arch::x86_64::*;
                        let v = _mm512_loadu_si512(lanes.as_ptr().cast());
                        let mut out = [0_i32; 16];
                        let r = rescale_split(v, multiplier, exponent);
                        _mm512_storeu_si512(out.as_mut_ptr().cast(), r);
                        out
                    };
                    for (&v, &got) in lanes.iter().zip(&got) {
                        let want = multiply_by_quantized_multiplier(
                            v << ADD_LEFT_SHIFT,
                            multiplier,
                            -(exponent as i32),
                        );
                        assert_eq!(got, want, "v {v}, m {multiplier}, e {exponent}");
                    }
                }
            }
        }
    }

    #[test]
    fn add_rejects_bad_constants() {
        let mut p = add_params(0.1, 0, 0.1, 0, 0.1, 0);
        let mut out = [0; 2];
        assert_eq!(
            add(&p, &[1, 2], &[1], &mut out),
            Err(KernelError::ShapeMismatch)
        );
        p.output_multiplier.1 = 40;
        assert_eq!(
            add(&p, &[1, 2], &[1, 2], &mut out),
            Err(KernelError::ShiftOutOfRange)
        );
    }

    #[test]
    fn global_average_is_the_mean_within_one_step() {
        let (h, w, c) = (3, 4, 2);
        let input: Vec<i8> = (0..24).map(|i| (i * 9 - 100) as i8).collect();
        let (s_in, z_in, s_out, z_out) = (0.02, -5, 0.015, 3);
        let p = GlobalAvgPoolParams {
            height: h,
            width: w,
            channels: c,
            input_offset: -z_in,
            output_offset: z_out,
            multiplier: quantize_multiplier(s_in / (s_out * 12.0)),
        };
        let mut out = [0; 2];
        global_avg_pool(&p, &input, &mut out).unwrap();
        for (ch, &got) in out.iter().enumerate() {
            let mean = input
                .iter()
                .skip(ch)
                .step_by(c)
                .map(|&x| (f64::from(x) - f64::from(z_in)) * s_in)
                .sum::<f64>()
                / 12.0;
            let want = (mean / s_out).round() + f64::from(z_out);
            assert!(
                (f64::from(got) - want).abs() <= 1.0,
                "{ch}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn max_pool_ignores_padding() {
        let p = ConvParams {
            input_height: 2,
            input_width: 2,
            input_channels: 1,
            output_height: 1,
            output_width: 1,
            output_channels: 1,
            kernel: 3,
            stride: 2,
            padding: 1,
            input_offset: 0,
            output_offset: 0,
            activation_min: -128,
            activation_max: 127,
        };
        let mut out = [0];
        max_pool(&p, &[-90, -100, -120, -128], &mut out).unwrap();
        assert_eq!(out, [-90]);
    }
}
