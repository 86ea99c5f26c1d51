//! Global average pooling and max pooling over NHWC int8 tensors: portable code only (no
//! architecture files, so one file instead of a folder).

use crate::arith::{multiply_by_quantized_multiplier, shift_supported};
use crate::kernels::conv::{volume, ConvParams};
use crate::KernelError;

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
    if !shift_supported(p.multiplier.1) {
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
