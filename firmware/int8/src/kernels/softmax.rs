//! int8 softmax with TFLite's int8 output convention (scale 1/256, zero point -128), integer
//! only on the device: `exp` is tabulated at export time for the input's scale, indexed by
//! `x - max(x)` (always in `-255..=0`), so the kernel needs no floating point and no `exp`.
//! Used by devices that act on probabilities (a threshold on the top class) rather than
//! logits; the host applies temperature and softmax/sigmoid in float from the logits.

use crate::KernelError;

/// `exp(0)` in the table's fixed-point format (Q16).
pub const SOFTMAX_ONE: u32 = 1 << 16;

/// The exp table for an input tensor of scale `input_scale`, with softmax temperature
/// `1 / beta`: `table[k] = round(2^16 · exp(beta · input_scale · (k - 255)))`. Computed once at
/// export (needs `std` for `exp`); entries decrease to 0 for differences whose probability
/// would round to 0 anyway.
#[cfg(feature = "std")]
pub fn softmax_table(input_scale: f32, beta: f32) -> [u32; 256] {
    let mut table = [0_u32; 256];
    for (k, entry) in table.iter_mut().enumerate() {
        let x = f64::from(beta) * f64::from(input_scale) * (k as f64 - 255.0);
        *entry = (f64::from(SOFTMAX_ONE) * x.exp()).round() as u32;
    }
    table
}

/// Generic reference (there is no optimised variant: one division per class, run once per
/// image). `output[i] = clamp(round(256 · e_i / Σe) - 128)` with `e_i = table[x_i - max + 255]`.
/// Up to 65,535 classes (the sum stays within `u32`).
pub fn softmax(input: &[i8], table: &[u32; 256], output: &mut [i8]) -> Result<(), KernelError> {
    if input.len() != output.len() || input.is_empty() || input.len() > 65_535 {
        return Err(KernelError::ShapeMismatch);
    }
    if table.iter().any(|&e| e > SOFTMAX_ONE) {
        return Err(KernelError::ShapeMismatch);
    }
    let max = input.iter().copied().max().unwrap_or(0);
    let entry = |x: i8| table[(i32::from(x) - i32::from(max) + 255) as usize];
    let sum: u32 = input.iter().map(|&x| entry(x)).sum();
    if sum == 0 {
        // Only when the table is all zeros (a broken blob): refuse rather than divide by 0.
        return Err(KernelError::ShapeMismatch);
    }
    for (out, &x) in output.iter_mut().zip(input) {
        let scaled = (u64::from(entry(x)) * 256 + u64::from(sum) / 2) / u64::from(sum);
        *out = (scaled as i32 - 128).clamp(-128, 127) as i8;
    }
    Ok(())
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::testutil::Lcg;

    #[test]
    fn matches_float_softmax_within_one_step_and_sums_to_one() {
        let mut rng = Lcg(11);
        for case in 0..500 {
            let n = 2 + (rng.next_u8() % 14) as usize;
            let scale = 0.01 + (rng.next_u8() % 100) as f32 / 400.0;
            let input: Vec<i8> = (0..n).map(|_| rng.next_u8() as i8).collect();
            let table = softmax_table(scale, 1.0);
            let mut out = vec![0_i8; n];
            softmax(&input, &table, &mut out).unwrap();
            let logits: Vec<f64> = input
                .iter()
                .map(|&x| f64::from(scale) * f64::from(x))
                .collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for (i, (&q, e)) in out.iter().zip(&exps).enumerate() {
                let want = ((e / total) * 256.0).round().min(255.0) - 128.0;
                assert!(
                    (f64::from(q) - want).abs() <= 1.0,
                    "case {case} class {i}: {q} vs {want} ({input:?}, scale {scale})"
                );
            }
            let probability_sum: f64 = out.iter().map(|&q| (f64::from(q) + 128.0) / 256.0).sum();
            assert!(
                (probability_sum - 1.0).abs() <= n as f64 / 256.0,
                "{probability_sum}"
            );
        }
    }

    #[test]
    fn bad_shapes_and_tables_are_errors_not_panics() {
        let table = softmax_table(0.1, 1.0);
        let mut out = [0_i8; 2];
        assert_eq!(
            softmax(&[1, 2, 3], &table, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        assert_eq!(
            softmax(&[], &table, &mut []),
            Err(KernelError::ShapeMismatch)
        );
        assert_eq!(
            softmax(&[1, 2], &[0; 256], &mut out),
            Err(KernelError::ShapeMismatch)
        );
        assert_eq!(
            softmax(&[1, 2], &[u32::MAX; 256], &mut out),
            Err(KernelError::ShapeMismatch)
        );
        // One dominant class saturates at 127 (probability 255/256), as in TFLite.
        softmax(&[127, -128], &softmax_table(0.5, 1.0), &mut out).unwrap();
        assert_eq!(out, [127, -128]);
    }
}
