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
    // Per output pixel, the window's input pixels folded in whole: channels are contiguous
    // (NHWC), so the element-wise max is a vector max on every target. Channel by channel
    // with strided reads it was 10 % of ResNet-18's int8 inference at 224 px.
    for (i, out) in output.chunks_exact_mut(c).enumerate() {
        let (oy, ox) = (i / p.output_width, i % p.output_width);
        out.fill(i8::MIN);
        for (_, (iy, ix)) in p.window(oy, ox) {
            let pixel = &input[(iy * p.input_width + ix) * c..][..c];
            for (o, &v) in out.iter_mut().zip(pixel) {
                *o = (*o).max(v);
            }
        }
        for o in out.iter_mut() {
            *o = (*o).clamp(p.activation_min, p.activation_max);
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

    /// Max pooling as first written: channel by channel over the window.
    fn max_pool_reference(p: &ConvParams, input: &[i8]) -> Vec<i8> {
        let c = p.input_channels;
        let mut output = vec![0; p.output_height * p.output_width * c];
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
        output
    }

    #[test]
    fn max_pool_equals_the_channel_by_channel_reference() {
        // ResNet's stem pool (3×3, stride 2, padding 1), a 2×2 without padding, a clamp.
        for (h, w, c, kernel, stride, padding, min) in [
            (9, 7, 5, 3, 2, 1, -128),
            (8, 8, 64, 3, 2, 1, -128),
            (6, 5, 3, 2, 2, 0, -128),
            (5, 5, 16, 3, 1, 1, -20),
        ] {
            let extent = |n: usize| (n + 2 * padding - kernel) / stride + 1;
            let p = ConvParams {
                input_height: h,
                input_width: w,
                input_channels: c,
                output_height: extent(h),
                output_width: extent(w),
                output_channels: c,
                kernel,
                stride,
                padding,
                input_offset: 0,
                output_offset: 0,
                activation_min: min,
                activation_max: 100,
            };
            let input: Vec<i8> = (0..h * w * c)
                .map(|i| ((i * 7919 + 13) % 256) as u8 as i8)
                .collect();
            let mut out = vec![0; p.output_height * p.output_width * c];
            max_pool(&p, &input, &mut out).unwrap();
            assert_eq!(out, max_pool_reference(&p, &input), "{h}×{w}×{c} k{kernel}");
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
