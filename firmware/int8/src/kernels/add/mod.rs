//! The residual add of two differently quantised int8 tensors, element by element, in real
//! terms (TFLite's fixed-point scheme).
//!
//! The kernel pattern (see [`crate::kernels`]): this file holds the generic reference,
//! [`add_reference`], the portable tabulated kernel and the dispatch; `x86_64.rs` the AVX2 and
//! AVX-512 kernels (chosen at run time where they compute the layer's constants exactly),
//! tested against the reference bit for bit. No `unsafe` here.

use crate::arith::{
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_prepared,
    right_shift_constants, shift_supported,
};
use crate::KernelError;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86_64;

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
    if let Some(done) = x86_64::add(params, a, b, output) {
        return done;
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
        .all(shift_supported)
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
}
