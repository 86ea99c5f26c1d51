//! Fully connected (dense) layer: int8 input and weights, int32 accumulation and bias,
//! per-output-channel fixed-point requantisation, saturating int8 output.

use crate::arith::multiply_by_quantized_multiplier;
use crate::KernelError;

/// Shape and quantisation constants of one fully connected layer.
///
/// Weights are symmetric (zero point 0) per output channel; activations are asymmetric per
/// tensor, so the input's zero point enters as `input_offset = -input_zero_point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullyConnectedParams {
    /// Number of input features.
    pub input_len: usize,
    /// Number of output features (rows of the weight matrix).
    pub output_len: usize,
    /// Minus the input zero point.
    pub input_offset: i32,
    /// The output zero point.
    pub output_offset: i32,
    /// Lower clamp after requantisation (-128 for none, the zero point for a fused ReLU).
    pub activation_min: i8,
    /// Upper clamp after requantisation.
    pub activation_max: i8,
}

/// Per-output-channel requantisation pairs from [`crate::arith::quantize_multiplier`].
#[derive(Debug, Clone, Copy)]
pub struct PerChannelRequant<'a> {
    /// Q31 multipliers, one per output channel.
    pub multipliers: &'a [i32],
    /// Shifts in `-31..=30`, one per output channel.
    pub shifts: &'a [i32],
}

/// Generic reference: `out[o] = clamp(requant(bias[o] + Σ_i (in[i] + input_offset) · w[o][i]) + output_offset)`.
///
/// `weights` is row-major `[output_len][input_len]`. Every length and shift is checked before
/// any arithmetic, so a malformed model yields an error, never a panic or an out-of-bounds read.
pub fn fully_connected(
    params: &FullyConnectedParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    let weight_len = params
        .input_len
        .checked_mul(params.output_len)
        .ok_or(KernelError::ShapeMismatch)?;
    if input.len() != params.input_len
        || weights.len() != weight_len
        || bias.len() != params.output_len
        || requant.multipliers.len() != params.output_len
        || requant.shifts.len() != params.output_len
        || output.len() != params.output_len
    {
        return Err(KernelError::ShapeMismatch);
    }
    if params.activation_min > params.activation_max {
        return Err(KernelError::InvalidActivationRange);
    }
    if requant.shifts.iter().any(|s| !(-31..=30).contains(s)) {
        return Err(KernelError::ShiftOutOfRange);
    }
    for (o, out) in output.iter_mut().enumerate() {
        let row = &weights[o * params.input_len..(o + 1) * params.input_len];
        let mut acc = bias[o];
        for (&x, &w) in input.iter().zip(row) {
            acc = acc.wrapping_add((i32::from(x) + params.input_offset) * i32::from(w));
        }
        let scaled =
            multiply_by_quantized_multiplier(acc, requant.multipliers[o], requant.shifts[o]);
        let shifted = scaled.saturating_add(params.output_offset);
        let clamped = shifted.clamp(
            i32::from(params.activation_min),
            i32::from(params.activation_max),
        );
        *out = clamped as i8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::quantize_multiplier;

    fn params(input_len: usize, output_len: usize) -> FullyConnectedParams {
        FullyConnectedParams {
            input_len,
            output_len,
            input_offset: 0,
            output_offset: 0,
            activation_min: -128,
            activation_max: 127,
        }
    }

    #[test]
    fn matches_a_float_layer_to_within_one_step() {
        // A 3->2 layer with known float meaning: scales chosen so the answer is easy to check.
        let input_scale = 0.05_f64;
        let input_zero_point = 3_i32;
        let weight_scales = [0.01_f64, 0.02];
        let output_scale = 0.1_f64;
        let output_zero_point = -5_i32;
        let input: [i8; 3] = [23, -17, 100];
        let weights: [i8; 6] = [10, -20, 30, 127, 0, -128];
        let bias_real = [0.5_f64, -0.25];
        let bias: Vec<i32> = bias_real
            .iter()
            .zip(weight_scales)
            .map(|(b, ws)| (b / (input_scale * ws)).round() as i32)
            .collect();
        let (mults, shifts): (Vec<i32>, Vec<i32>) = weight_scales
            .iter()
            .map(|ws| quantize_multiplier(input_scale * ws / output_scale))
            .unzip();
        let mut p = params(3, 2);
        p.input_offset = -input_zero_point;
        p.output_offset = output_zero_point;
        let mut out = [0_i8; 2];
        fully_connected(
            &p,
            &input,
            &weights,
            &bias,
            PerChannelRequant {
                multipliers: &mults,
                shifts: &shifts,
            },
            &mut out,
        )
        .unwrap();
        for o in 0..2 {
            let mut real = bias_real[o];
            for i in 0..3 {
                let x = (f64::from(input[i]) - f64::from(input_zero_point)) * input_scale;
                real += x * f64::from(weights[o * 3 + i]) * weight_scales[o];
            }
            let want = (real / output_scale).round() + f64::from(output_zero_point);
            let want = want.clamp(-128.0, 127.0);
            assert!(
                (f64::from(out[o]) - want).abs() <= 1.0,
                "channel {o}: {} vs {want}",
                out[o]
            );
        }
    }

    #[test]
    fn saturates_and_clamps_to_the_activation_range() {
        let mut p = params(2, 2);
        p.activation_min = 0; // fused ReLU with zero point 0
        let (m, s) = quantize_multiplier(1.0);
        let mut out = [0_i8; 2];
        fully_connected(
            &p,
            &[127, 127],
            &[127, 127, -128, -128],
            &[0, 0],
            PerChannelRequant {
                multipliers: &[m, m],
                shifts: &[s, s],
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [127, 0]);
    }

    #[test]
    fn rejects_mismatched_lengths_and_bad_shifts_without_panicking() {
        let p = params(2, 1);
        let rq = PerChannelRequant {
            multipliers: &[1 << 30],
            shifts: &[0],
        };
        let mut out = [0_i8; 1];
        assert_eq!(
            fully_connected(&p, &[1], &[1, 1], &[0], rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        assert_eq!(
            fully_connected(&p, &[1, 1], &[1], &[0], rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        let bad = PerChannelRequant {
            multipliers: &[1 << 30],
            shifts: &[31],
        };
        assert_eq!(
            fully_connected(&p, &[1, 1], &[1, 1], &[0], bad, &mut out),
            Err(KernelError::ShiftOutOfRange)
        );
        let mut huge = params(usize::MAX, 2);
        huge.input_len = usize::MAX;
        assert_eq!(
            fully_connected(&huge, &[], &[], &[], rq, &mut []),
            Err(KernelError::ShapeMismatch)
        );
    }
}
