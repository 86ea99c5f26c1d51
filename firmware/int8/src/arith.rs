//! Fixed-point requantisation arithmetic (TensorFlow Lite compatible).
//!
//! A real scale `s = input_scale * weight_scale / output_scale` is stored as a Q31 multiplier
//! `m` in `[2^30, 2^31)` and a power-of-two `shift`, so that `s ≈ m * 2^(shift - 31)`. The
//! device then rescales an int32 accumulator with integer operations only.

/// Splits a positive real scale into a Q31 multiplier and a shift (`s ≈ m · 2^(shift−31)`).
///
/// Runs at export time on the host; it uses only core float arithmetic so it also builds
/// without `std`. Returns `(0, 0)` for zero, negative, non-finite or vanishingly small scales
/// (they would round to zero anyway) and saturates scales of 2^30 and above, which no sane
/// quantised layer produces.
pub fn quantize_multiplier(real_multiplier: f64) -> (i32, i32) {
    if !(real_multiplier.is_finite() && real_multiplier > 0.0) {
        return (0, 0);
    }
    // frexp by hand: bring q into [0.5, 1) and count the power of two taken out.
    let mut q = real_multiplier;
    let mut shift: i32 = 0;
    while q >= 1.0 {
        q /= 2.0;
        shift += 1;
    }
    while q < 0.5 {
        q *= 2.0;
        shift -= 1;
    }
    // Round half away from zero; q is positive here.
    let mut q_fixed = (q * 2_147_483_648.0 + 0.5) as i64;
    if q_fixed == 1 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    if shift > 30 {
        return (i32::MAX, 30);
    }
    (q_fixed as i32, shift)
}

/// `round(a * b / 2^31)` with saturation of the single overflowing case, as in gemmlowp.
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    // gemmlowp adds a nudge of 2^30 (1 − 2^30 when ab < 0) and divides truncating toward
    // zero. That is floor((ab + 2^30) / 2^31) for every product: for ab < 0, truncating the
    // negative (ab + 1 − 2^30) / 2^31 is flooring (ab + 1 − 2^30 + 2^31 − 1) / 2^31. One
    // multiply-accumulate and a shift instead of a select and a signed division (Cortex-M:
    // SMLAL; checked against the gemmlowp form in `high_mul_equals_gemmlowps_nudge_and_truncation`).
    ((ab + (1 << 30)) >> 31) as i32
}

/// `x / 2^exponent` rounded to nearest, ties away from zero. `exponent` must be in `0..=31`.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    debug_assert!((0..=31).contains(&exponent));
    // u32 arithmetic: 2^31 − 1 still fits, and no 64-bit shift is needed on 32-bit cores.
    let mask = ((1_u32 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// Whether a requantisation shift lies in `-31..=30`, the range the fixed-point math supports
/// (the kernels refuse any other before their first multiply).
pub(crate) fn shift_supported(shift: i32) -> bool {
    (-31..=30).contains(&shift)
}

/// Rescales an int32 accumulator by the fixed-point pair from [`quantize_multiplier`].
/// `shift` must be in `-31..=30` (checked by the kernels before they call this).
///
/// Equal bit for bit to [`multiply_by_quantized_multiplier_reference`] (TFLite's two roundings,
/// written out step by step); a right shift — every layer of a trained model scales down —
/// takes [`multiply_by_quantized_multiplier_right`], one 64-bit multiply-add and one shift.
#[inline(always)]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    if shift < 0 {
        multiply_by_quantized_multiplier_right(x, multiplier, shift.unsigned_abs())
    } else {
        multiply_by_quantized_multiplier_reference(x, multiplier, shift)
    }
}

/// [`multiply_by_quantized_multiplier_reference`] for `shift = −exponent`, `exponent` in
/// `1..=31`, with both roundings folded into one: `(x·m + q·2^30) >> (31 + e)` in 64 bits,
/// `q = 2^e + 1 − 2n`, `n = 1` when `x` and `m` differ in sign. On a Cortex-M4 that is an
/// `SMLAL` into a constant and an `ASR` of its high word, instead of ~30 instructions of
/// nudges, masks and compares.
///
/// Why it is equal. The reference computes `r1 = ⌊(ab + 2^30) / 2^31⌋` (gemmlowp's high
/// multiply, see [`saturating_rounding_doubling_high_mul`]) and then
/// `r2 = ⌊(r1 + h − [r1 < 0]) / 2^e⌋` with `h = 2^(e−1)` (that is [`rounding_divide_by_pot`]:
/// round half away from zero). Nested floors of integer divisions compose, so
/// `r2 = ⌊(ab + 2^30 + (h − [r1 < 0])·2^31) / 2^(31+e)⌋ = ⌊(ab + q'·2^30) / 2^(31+e)⌋` with
/// `q' = 2^e + 1 − 2·[r1 < 0]`, and `r1 < 0` exactly when `ab < −2^30`. The sign test used here,
/// `n = [x, m differ in sign]`, agrees with that except for `ab` in `[−2^30, 0]`, where both
/// choices put the numerator in `[0, 2^(31+e))` and give 0. The one saturating case of the
/// reference (`x = m = i32::MIN`, high multiply `2^31 − 1`) also gives `2^(31−e)` both ways.
/// Range: `|ab| ≤ 2^62` and `q·2^30 < 2^61 + 2^30`, so the sum fits in an i64. Checked against
/// the reference in `right_shift_form_equals_the_two_roundings`.
#[inline(always)]
pub fn multiply_by_quantized_multiplier_right(x: i32, multiplier: i32, exponent: u32) -> i32 {
    debug_assert!((1..=31).contains(&exponent));
    let (rounding, high_shift) = right_shift_constants(exponent);
    multiply_by_quantized_multiplier_prepared(x, multiplier, rounding, high_shift)
}

/// The per-channel constants of [`multiply_by_quantized_multiplier_prepared`] for a right
/// shift by `exponent` (`1..=31`): `2^e + 1` and `e − 1`. Kernels that requantise many outputs
/// per channel compute them once.
#[inline(always)]
pub fn right_shift_constants(exponent: u32) -> (u32, u32) {
    ((1_u32 << exponent).wrapping_add(1), exponent - 1)
}

/// [`multiply_by_quantized_multiplier_right`] with its constants from
/// [`right_shift_constants`] (see there for why it equals the reference).
#[inline(always)]
pub fn multiply_by_quantized_multiplier_prepared(
    x: i32,
    multiplier: i32,
    rounding: u32,
    high_shift: u32,
) -> i32 {
    // 0 or 0xFFFF_FFFF: the sign of x·m (up to the product-zero cases shown harmless above).
    let differ = ((x ^ multiplier) >> 31) as u32;
    // q = 2^e + 1 − 2n: in 1..=2^31 + 1, so u32 arithmetic holds it without overflow.
    let q = rounding.wrapping_add(differ.wrapping_mul(2));
    let sum = i64::from(x) * i64::from(multiplier) + (i64::from(q) << 30);
    // sum >> (31 + e), taken as the high word shifted by e − 1 (no 64-bit shift on 32-bit cores).
    ((sum >> 32) as i32) >> high_shift
}

/// TFLite's `MultiplyByQuantizedMultiplier` step by step: a saturating left shift, the
/// rounding doubling high multiply, a rounding right shift. The reference
/// [`multiply_by_quantized_multiplier`] is tested against.
#[inline]
pub fn multiply_by_quantized_multiplier_reference(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left_shift = if shift > 0 { shift } else { 0 };
    let right_shift = if shift > 0 { 0 } else { -shift };
    let scaled = x.saturating_mul(1 << left_shift);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(scaled, multiplier),
        right_shift,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(multiplier: i32, shift: i32) -> f64 {
        f64::from(multiplier) * libm_pow2(shift - 31)
    }

    fn libm_pow2(e: i32) -> f64 {
        let mut v = 1.0;
        for _ in 0..e.unsigned_abs() {
            v = if e > 0 { v * 2.0 } else { v / 2.0 };
        }
        v
    }

    #[test]
    fn quantize_multiplier_round_trips_within_one_part_in_two_to_the_thirty() {
        for &s in &[
            1.0e-6,
            0.000_123,
            0.0034,
            0.25,
            0.5,
            0.999_999_9,
            1.0,
            3.75,
            1234.5,
        ] {
            let (m, shift) = quantize_multiplier(s);
            assert!(
                (1 << 30..=i32::MAX).contains(&m),
                "{s}: multiplier {m} not normalised"
            );
            let rel = (real(m, shift) - s).abs() / s;
            assert!(rel < 1e-9, "{s}: got {} (rel err {rel})", real(m, shift));
        }
    }

    #[test]
    fn quantize_multiplier_rejects_unusable_scales() {
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(-1.0), (0, 0));
        assert_eq!(quantize_multiplier(f64::NAN), (0, 0));
        assert_eq!(quantize_multiplier(1e-30), (0, 0));
    }

    #[test]
    fn rounding_divide_rounds_half_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(7, 0), 7);
    }

    #[test]
    fn high_mul_equals_gemmlowps_nudge_and_truncation() {
        let gemmlowp = |a: i32, b: i32| -> i32 {
            if a == i32::MIN && b == i32::MIN {
                return i32::MAX;
            }
            let ab = i64::from(a) * i64::from(b);
            let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
            ((ab + nudge) / (1_i64 << 31)) as i32
        };
        // Exact ties and their neighbours (ab = k·2^31 ± 2^30 ± 1), both signs, the extremes,
        // then a pseudo-random sweep.
        let mut cases = vec![
            (i32::MIN, i32::MAX),
            (i32::MAX, i32::MAX),
            (i32::MIN, 1),
            (i32::MIN, -1),
            (0, i32::MIN),
        ];
        for k in -4_i32..=4 {
            for delta in [-1_i32, 0, 1] {
                // a · 2 = k·2^31 + 2^30 + delta·2 is a tie (or next to one) when b = 2.
                let a = k
                    .wrapping_mul(1 << 30)
                    .wrapping_add(1 << 29)
                    .wrapping_add(delta);
                cases.push((a, 2));
                cases.push((a, -2));
                cases.push((-a, 2));
            }
        }
        let mut state = 0x1234_5678_u64;
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            cases.push(((state >> 32) as i32, state as i32));
            cases.push((
                (state >> 40) as i32 - (1 << 23),
                (1 << 30) + (state as i32 & 0x3FFF_FFFF),
            ));
        }
        for (a, b) in cases {
            assert_eq!(
                saturating_rounding_doubling_high_mul(a, b),
                gemmlowp(a, b),
                "{a} × {b}"
            );
        }
    }

    #[test]
    fn right_shift_form_equals_the_two_roundings() {
        let mut cases: Vec<(i32, i32)> = Vec::new();
        let edges = [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 30) - 1,
            -(1 << 30),
            -(1 << 30) + 1,
            -65_537,
            -2,
            -1,
            0,
            1,
            2,
            65_537,
            (1 << 30) - 1,
            1 << 30,
            i32::MAX - 1,
            i32::MAX,
        ];
        for &a in &edges {
            for &b in &edges {
                cases.push((a, b));
            }
        }
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (hi, lo) = ((state >> 32) as i32, state as i32);
            // Full-range pairs, and accumulator-sized values against normalised multipliers.
            cases.push((hi, lo));
            cases.push((hi >> 12, (1 << 30) | (lo & 0x3FFF_FFFF)));
        }
        for shift in -31..=30 {
            for &(x, m) in &cases {
                assert_eq!(
                    multiply_by_quantized_multiplier(x, m, shift),
                    multiply_by_quantized_multiplier_reference(x, m, shift),
                    "{x} × {m}, shift {shift}"
                );
            }
        }
        // Exact ties of both roundings: x·m/2^31 = k + ½ and r1/2^e = j + ½.
        for exponent in 1..=31_u32 {
            for x in -2_000..2_000 {
                let m = 1 << 30; // x·m / 2^31 = x / 2
                let shift = -(exponent as i32);
                assert_eq!(
                    multiply_by_quantized_multiplier(x << (exponent.min(20)), m, shift),
                    multiply_by_quantized_multiplier_reference(x << (exponent.min(20)), m, shift),
                );
                assert_eq!(
                    multiply_by_quantized_multiplier(x, m, shift),
                    multiply_by_quantized_multiplier_reference(x, m, shift),
                );
            }
        }
    }

    #[test]
    fn high_mul_saturates_the_single_overflow_case() {
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
    }

    #[test]
    fn requantisation_matches_float_rounding_on_a_sweep() {
        for &s in &[0.0007, 0.013, 0.4, 0.77, 2.5] {
            let (m, shift) = quantize_multiplier(s);
            // TFLite rounds twice (high-mul, then shift): within one step of the exact product,
            // and equal to that double rounding recomputed exactly in f64 (|x·m| < 2^53 here):
            // the high-mul rounds ties up (gemmlowp's nudge), the shift rounds them away from 0.
            let round_half_away = |v: f64| {
                if v >= 0.0 {
                    (v + 0.5).floor()
                } else {
                    -((-v + 0.5).floor())
                }
            };
            for x in (-200_000..200_000).step_by(997) {
                let got = multiply_by_quantized_multiplier(x, m, shift);
                let want = f64::from(x) * s;
                assert!((f64::from(got) - want).abs() < 1.0, "{x}*{s}: {got}");
                let left = f64::from(1_i32 << shift.max(0));
                let high = (f64::from(x) * left * f64::from(m) / 2_147_483_648.0 + 0.5).floor();
                let twice = round_half_away(high / f64::from(1_i32 << (-shift).max(0)));
                assert_eq!(f64::from(got), twice, "{x}*{s}");
            }
        }
    }
}
