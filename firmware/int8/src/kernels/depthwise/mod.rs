//! The depthwise convolution (channel multiplier 1) over NHWC int8 tensors (batch 1) with
//! `[k][k][C]` weights: int32 accumulation, per-channel requantisation, saturating int8 output,
//! zero padding in real terms. Geometry and requantisation as the standard convolution's
//! ([`ConvParams`]).
//!
//! The kernel pattern (see [`crate::kernels`]): this file holds the generic reference,
//! [`depthwise_conv2d_reference`], the portable window loop and the dispatch; `x86_64.rs` the
//! AVX2 kernel (chosen at run time), tested against the reference bit for bit. No `unsafe`
//! here.

use crate::kernels::conv::ConvParams;
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86_64;

/// Largest kernel side whose window [`depthwise_conv2d`] tabulates (7×7 positions on the
/// stack); larger kernels take the reference path.
const DEPTHWISE_WINDOW_MAX: usize = 7;

/// The depthwise convolution the engine runs, bit for bit equal to
/// [`depthwise_conv2d_reference`]: the window of each output pixel (the positions inside the
/// input, with their input and weight offsets) is worked out once and shared by every channel,
/// instead of once per channel.
pub fn depthwise_conv2d(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(true, input, weights, bias, &requant, output)?;
    let p = params;
    if p.kernel > DEPTHWISE_WINDOW_MAX {
        return depthwise_conv2d_reference(params, input, weights, bias, requant, output);
    }
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if let Some(done) = x86_64::depthwise_conv2d(params, input, weights, bias, requant, output) {
        return done;
    }
    depthwise_conv2d_windows(params, input, weights, bias, requant, output)
}

/// Tabulates output pixel `(oy, ox)`'s window of a depthwise convolution: for each kernel
/// position inside the input, the offsets of its first channel in the input and the weights.
/// Returns how many there are.
#[inline]
fn depthwise_window(
    p: &ConvParams,
    oy: usize,
    ox: usize,
    taps: &mut [(usize, usize); DEPTHWISE_WINDOW_MAX * DEPTHWISE_WINDOW_MAX],
) -> usize {
    let c = p.output_channels;
    let mut n = 0;
    for (((ky, kx), (iy, ix)), tap) in p.window(oy, ox).zip(taps.iter_mut()) {
        *tap = ((iy * p.input_width + ix) * c, (ky * p.kernel + kx) * c);
        n += 1;
    }
    n
}

/// The body of [`depthwise_conv2d`] (shapes checked, kernel ≤ [`DEPTHWISE_WINDOW_MAX`]): each
/// output pixel's window tabulated once, then channel by channel.
fn depthwise_conv2d_windows(
    p: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    let c = p.output_channels;
    let mut taps = [(0_usize, 0_usize); DEPTHWISE_WINDOW_MAX * DEPTHWISE_WINDOW_MAX];
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            let n = depthwise_window(p, oy, ox, &mut taps);
            let out = &mut output[(oy * p.output_width + ox) * c..][..c];
            for (ch, o) in out.iter_mut().enumerate() {
                let mut acc = bias[ch];
                for &(at_input, at_weight) in &taps[..n] {
                    let x = i32::from(input[at_input + ch]);
                    let w = i32::from(weights[at_weight + ch]);
                    acc = acc.wrapping_add((x + p.input_offset) * w);
                }
                *o = p.finish(acc, requant.multipliers[ch], requant.shifts[ch]);
            }
        }
    }
    Ok(())
}

/// Depthwise convolution (channel multiplier 1), generic reference. `weights` is `[k][k][C]`.
pub fn depthwise_conv2d_reference(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(true, input, weights, bias, &requant, output)?;
    let p = params;
    let c = p.output_channels;
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            for ch in 0..c {
                let mut acc = bias[ch];
                for ((ky, kx), (iy, ix)) in p.window(oy, ox) {
                    let x = i32::from(input[(iy * p.input_width + ix) * c + ch]);
                    let w = i32::from(weights[(ky * p.kernel + kx) * c + ch]);
                    acc = acc.wrapping_add((x + p.input_offset) * w);
                }
                output[(oy * p.output_width + ox) * c + ch] =
                    p.finish(acc, requant.multipliers[ch], requant.shifts[ch]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv2d_reference;
    use crate::kernels::conv::tests::case;

    #[test]
    fn fast_depthwise_equals_the_reference_bit_for_bit() {
        // Channel counts the x86 kernel takes eight at a time (8, 16, 24) and ones it leaves
        // to the window loop; kernels with and without padding, strides 1 and 2.
        for (seed, h, w, ch, k, s, pad) in [
            (1, 9, 7, 5, 3, 1, 1),
            (2, 8, 8, 4, 3, 2, 1),
            (3, 6, 5, 3, 5, 1, 2),
            (4, 12, 12, 2, 9, 2, 4),
            (5, 7, 9, 8, 3, 1, 1),
            (6, 10, 6, 16, 3, 2, 1),
            (7, 5, 5, 24, 3, 1, 0),
            (8, 4, 4, 16, 5, 1, 2),
        ] {
            let c = case(seed, h, w, ch, ch, k, s, pad);
            let weights = &c.weights[..k * k * ch];
            let rq = PerChannelRequant {
                multipliers: &c.mults,
                shifts: &c.shifts,
            };
            let n = c.p.output_height * c.p.output_width * ch;
            let (mut fast, mut reference) = (vec![0; n], vec![0; n]);
            depthwise_conv2d(&c.p, &c.input, weights, &c.bias, rq, &mut fast).unwrap();
            depthwise_conv2d_reference(&c.p, &c.input, weights, &c.bias, rq, &mut reference)
                .unwrap();
            assert_eq!(fast, reference, "case {seed}");
        }
    }

    #[test]
    fn depthwise_matches_a_per_channel_standard_conv() {
        // A depthwise conv is a standard conv per channel with one input channel.
        let c = case(7, 6, 6, 3, 3, 3, 2, 1);
        let dw_weights: Vec<i8> = c.weights[..27].to_vec();
        let rq = PerChannelRequant {
            multipliers: &c.mults,
            shifts: &c.shifts,
        };
        let n = c.p.output_height * c.p.output_width * 3;
        let mut out = vec![0; n];
        depthwise_conv2d(&c.p, &c.input, &dw_weights, &c.bias, rq, &mut out).unwrap();
        for ch in 0..3 {
            let single = ConvParams {
                input_channels: 1,
                output_channels: 1,
                ..c.p
            };
            let input: Vec<i8> = c.input.iter().skip(ch).step_by(3).copied().collect();
            let weights: Vec<i8> = dw_weights.iter().skip(ch).step_by(3).copied().collect();
            let mut one = vec![0; n / 3];
            let rq1 = PerChannelRequant {
                multipliers: &c.mults[ch..ch + 1],
                shifts: &c.shifts[ch..ch + 1],
            };
            conv2d_reference(
                &single,
                &input,
                &weights,
                &c.bias[ch..ch + 1],
                rq1,
                &mut one,
            )
            .unwrap();
            let got: Vec<i8> = out.iter().skip(ch).step_by(3).copied().collect();
            assert_eq!(got, one, "channel {ch}");
        }
    }
}
