//! The depthwise convolution on x86-64 hosts (feature `std`): AVX2, chosen at run time, eight
//! channels per register, requantised with the convolution's vector requantisation. Bit for
//! bit equal to `depthwise_conv2d_reference` (tests in the parent module).
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw loads; every
//! block with a `// SAFETY:` line). Its entry point is safe: it checks the CPU and the shapes
//! itself.
#![allow(unsafe_code)]

use super::{depthwise_conv2d_windows, depthwise_window, DEPTHWISE_WINDOW_MAX};
use crate::kernels::conv::x86_64::{
    requant_lanes, requantize_lanes, store_lanes, RequantLanes, LANES,
};
use crate::kernels::conv::ConvParams;
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

/// [`depthwise_conv2d`](super::depthwise_conv2d) with AVX2 where this CPU has it (`None` where
/// it does not, or where the shapes do not match the layer: the caller has already refused
/// those).
pub(super) fn depthwise_conv2d(
    p: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Option<Result<(), KernelError>> {
    if !std::is_x86_feature_detected!("avx2")
        || p.check(true, input, weights, bias, &requant, output)
            .is_err()
    {
        return None;
    }
    // SAFETY: `depthwise_conv2d_avx2` requires AVX2, checked just above, and a bias of one
    // value per channel (its one unchecked read), checked by `ConvParams::check` just above.
    Some(unsafe { depthwise_conv2d_avx2(p, input, weights, bias, requant, output) })
}

/// Depthwise convolution with AVX2: per output pixel, eight channels per register — the
/// window's input and weight bytes widened to int32, `(x + input_offset) · w` accumulated with
/// wrapping 32-bit arithmetic as the reference does, requantised eight at a time
/// ([`requantize_lanes`]). Layers whose channels are not a multiple of eight, or whose
/// requantisation constants the vector form does not take, run the window loop.
#[target_feature(enable = "avx2")]
fn depthwise_conv2d_avx2(
    p: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    use core::arch::x86_64::*;
    let c = p.output_channels;
    let vector_requant = requant
        .shifts
        .iter()
        .zip(requant.multipliers)
        .all(|(&s, &m)| (-31..0).contains(&s) && m >= 0)
        && p.output_offset.unsigned_abs() <= 1 << 16;
    if !c.is_multiple_of(LANES) || !vector_requant || p.kernel > DEPTHWISE_WINDOW_MAX {
        return depthwise_conv2d_windows(p, input, weights, bias, requant, output);
    }
    let lanes: Vec<RequantLanes> = requant
        .multipliers
        .chunks_exact(LANES)
        .zip(requant.shifts.chunks_exact(LANES))
        .map(|(m, s)| requant_lanes(m, s))
        .collect();
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    let offset = _mm256_set1_epi32(p.input_offset);
    let k = p.kernel;
    // A window wholly inside the input: its taps are fixed offsets from its top-left pixel,
    // tabulated once; only the border pixels walk `window`.
    let mut full = [(0_usize, 0_usize); DEPTHWISE_WINDOW_MAX * DEPTHWISE_WINDOW_MAX];
    for (t, tap) in full.iter_mut().take(k * k).enumerate() {
        *tap = (((t / k) * p.input_width + t % k) * c, t * c);
    }
    let inside = |o: usize, extent: usize| {
        (o * p.stride)
            .checked_sub(p.padding)
            .filter(|&first| first + k <= extent)
    };
    let mut taps = [(0_usize, 0_usize); DEPTHWISE_WINDOW_MAX * DEPTHWISE_WINDOW_MAX];
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            let n = if let (Some(iy), Some(ix)) =
                (inside(oy, p.input_height), inside(ox, p.input_width))
            {
                let corner = (iy * p.input_width + ix) * c;
                for (tap, &(at_input, at_weight)) in taps.iter_mut().zip(&full[..k * k]) {
                    *tap = (corner + at_input, at_weight);
                }
                k * k
            } else {
                depthwise_window(p, oy, ox, &mut taps)
            };
            let out = &mut output[(oy * p.output_width + ox) * c..][..c];
            for (group, constants) in lanes.iter().enumerate() {
                let first = group * LANES;
                // SAFETY: `check` sized the bias to `c` values; `first + 8 ≤ c`.
                let mut acc = unsafe { _mm256_loadu_si256(bias.as_ptr().add(first).cast()) };
                for &(at_input, at_weight) in &taps[..n] {
                    // Bounds-checked slices of eight bytes (the window is inside the input,
                    // the kernel inside the weights: `check`).
                    let (x, w) = (
                        &input[at_input + first..][..LANES],
                        &weights[at_weight + first..][..LANES],
                    );
                    // SAFETY: eight bytes each, just checked; unaligned 64-bit loads.
                    let (x, w) = unsafe {
                        (
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(x.as_ptr().cast())),
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(w.as_ptr().cast())),
                        )
                    };
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_add_epi32(x, offset), w));
                }
                store_lanes(requantize_lanes(acc, constants, clamp), &mut out[first..]);
            }
        }
    }
    Ok(())
}
