//! The residual add on x86-64 hosts (feature `std`): the fixed-point arithmetic in vector
//! lanes, eight elements per AVX2 register or sixteen per AVX-512 one, chosen at run time for
//! the layers whose constants it computes exactly. Bit for bit equal to `add_reference` (tests
//! in the parent module and here).
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw loads and
//! stores; every block with a `// SAFETY:` line). Its entry point is safe: it checks the CPU
//! itself.
#![allow(unsafe_code)]

use super::{add_reference, AddParams, ADD_LEFT_SHIFT};
use crate::kernels::conv::x86_64::{
    requant_lanes, requantize_lanes, requantize_lanes16, store_lanes,
};
use crate::KernelError;

/// [`add`](super::add) with AVX-512 or AVX2 where this CPU has them and they compute `params`
/// exactly ([`add_avx512_applies`], [`add_avx2_applies`]); `None` otherwise.
pub(super) fn add(
    params: &AddParams,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
) -> Option<Result<(), KernelError>> {
    if add_avx512_applies(params)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("avx512f")
    {
        // SAFETY: `add_avx512` requires AVX2 and AVX-512 F, checked just above.
        return Some(unsafe { add_avx512(params, a, b, output) });
    }
    if add_avx2_applies(params) && std::is_x86_feature_detected!("avx2") {
        // SAFETY: `add_avx2` only requires the CPU to support AVX2, checked just above.
        return Some(unsafe { add_avx2(params, a, b, output) });
    }
    None
}

/// Whether [`add_avx2`] computes `params` exactly: input rescalings that do not shift left
/// (TFLite's scheme: each input multiplier is at most 1/2), a right-shifting output scale,
/// non-negative multipliers, offsets of int8 zero points (so every shifted input,
/// `(x + offset)·2^20`, stays below 2^29 in magnitude) and a small output offset.
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
const HALF: i32 = 1 << 30;

/// `multiply_by_quantized_multiplier(x, multiplier, −exponent)` in eight lanes, for
/// `exponent` in `0..=31`, `multiplier ≥ 0` and `|x| < 2^30`: `⌊(x·m + q·2^30) / 2^(31+e)⌋` in 64 bits, with
/// `q = 2^e + 1 − 2n` (`n = 1` where `x` and `m` differ in sign) for a right shift — the form
/// proven equal to the two roundings at [`crate::arith::multiply_by_quantized_multiplier_right`]
/// — and `q = 1` for none (the rounding doubling high multiply alone). The sum is doubled
/// before its high word is taken, so one form covers `e = 0`: `|x·m| < 2^61` and
/// `q·2^30 ≤ 2^61 + 2^30` keep the doubled sum inside an i64.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::multiply_by_quantized_multiplier;

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
}
