//! The standard 2-D convolution over NHWC int8 tensors (batch 1) with OHWI weights: int32
//! accumulation, per-output-channel requantisation, saturating int8 output, zero padding in
//! real terms (the input zero point). [`ConvParams`] is also the geometry of the depthwise
//! convolution and max pooling.
//!
//! The kernel pattern (see [`crate::kernels`]): this file holds the generic reference,
//! [`conv2d_reference`], the portable patch convolution and the dispatch; [`conv2d`] picks the
//! fastest bit-exact path for the build: the Cortex-M4/M7 assembly of `dsp.rs` (feature
//! `dsp`), AVX2 on x86-64 hosts (`x86_64.rs`, chosen at run time, plus the repacked-filter
//! kernels of [`conv2d_packed`]), NEON dot products on aarch64 (`aarch64.rs`), else the
//! portable patch loop. Each is tested against [`conv2d_reference`] bit for bit. No `unsafe`
//! here: the architecture files expose safe functions that check the CPU themselves.

use core::ops::Range;

use crate::arith::multiply_by_quantized_multiplier;
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

#[cfg(all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon"))]
mod aarch64;
#[cfg(feature = "dsp")]
mod dsp;
// The vector requantisation here is shared with the depthwise and add kernels' x86-64 code.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86_64;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub use x86_64::{conv2d_packed, conv2d_packed_rows, PackedFilters};
#[cfg(all(feature = "threads", not(feature = "dsp")))]
mod threads;
#[cfg(all(feature = "threads", not(feature = "dsp")))]
pub use threads::conv2d_on_threads;

/// Shape and quantisation constants of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    /// Input rows.
    pub input_height: usize,
    /// Input columns.
    pub input_width: usize,
    /// Input channels.
    pub input_channels: usize,
    /// Output rows: `(input_height + 2·padding − kernel) / stride + 1`.
    pub output_height: usize,
    /// Output columns.
    pub output_width: usize,
    /// Output channels (equal to the input channels for a depthwise convolution).
    pub output_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride in both directions (≥ 1).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Minus the input zero point.
    pub input_offset: i32,
    /// The output zero point.
    pub output_offset: i32,
    /// Lower clamp after requantisation (the zero point for a fused ReLU).
    pub activation_min: i8,
    /// Upper clamp after requantisation.
    pub activation_max: i8,
}

impl ConvParams {
    /// The output extent a convolution of this input, kernel, stride and padding has, or
    /// `None` when the kernel does not fit or the numbers overflow.
    pub fn output_extent(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Option<usize> {
        let padded = input.checked_add(padding.checked_mul(2)?)?;
        if stride == 0 || kernel == 0 || padded < kernel {
            return None;
        }
        Some((padded - kernel) / stride + 1)
    }

    /// The kernel positions `(ky, kx)` of output pixel `(oy, ox)` that fall inside the input,
    /// with the input pixel `(iy, ix)` each reads; positions in the padding are skipped.
    pub(crate) fn window(
        &self,
        oy: usize,
        ox: usize,
    ) -> impl Iterator<Item = ((usize, usize), (usize, usize))> + '_ {
        let inside = |o: usize, k: usize, extent: usize| {
            (o * self.stride + k)
                .checked_sub(self.padding)
                .filter(|&i| i < extent)
        };
        (0..self.kernel)
            .filter_map(move |ky| inside(oy, ky, self.input_height).map(|iy| (ky, iy)))
            .flat_map(move |(ky, iy)| {
                (0..self.kernel).filter_map(move |kx| {
                    inside(ox, kx, self.input_width).map(|ix| ((ky, kx), (iy, ix)))
                })
            })
    }

    /// Refuses buffers that do not match the shape, an empty clamp and unsupported shifts:
    /// what every convolution kernel (standard or `depthwise`) checks before its first read.
    pub(crate) fn check(
        &self,
        depthwise: bool,
        input: &[i8],
        weights: &[i8],
        bias: &[i32],
        requant: &PerChannelRequant<'_>,
        output: &[i8],
    ) -> Result<(), KernelError> {
        let rows = 0..self.output_height;
        self.check_rows(depthwise, input, weights, bias, requant, (rows, output))
    }

    /// [`ConvParams::check`] for output rows `rows` only, held in `output` (a band of the
    /// output: what one thread of a convolution writes).
    pub(crate) fn check_rows(
        &self,
        depthwise: bool,
        input: &[i8],
        weights: &[i8],
        bias: &[i32],
        requant: &PerChannelRequant<'_>,
        (rows, output): (Range<usize>, &[i8]),
    ) -> Result<(), KernelError> {
        let extent_ok =
            Self::output_extent(self.input_height, self.kernel, self.stride, self.padding)
                == Some(self.output_height)
                && Self::output_extent(self.input_width, self.kernel, self.stride, self.padding)
                    == Some(self.output_width);
        let weight_len = if depthwise {
            self.kernel
                .checked_mul(self.kernel)
                .and_then(|k| k.checked_mul(self.output_channels))
        } else {
            self.kernel
                .checked_mul(self.kernel)
                .and_then(|k| k.checked_mul(self.input_channels))
                .and_then(|k| k.checked_mul(self.output_channels))
        };
        let input_len = volume(self.input_height, self.input_width, self.input_channels);
        let output_len = volume(rows.len(), self.output_width, self.output_channels);
        if !extent_ok
            || rows.end > self.output_height
            || (depthwise && self.input_channels != self.output_channels)
            || weight_len != Some(weights.len())
            || input_len != Some(input.len())
            || output_len != Some(output.len())
            || bias.len() != self.output_channels
            || requant.multipliers.len() != self.output_channels
            || requant.shifts.len() != self.output_channels
        {
            return Err(KernelError::ShapeMismatch);
        }
        if self.activation_min > self.activation_max {
            return Err(KernelError::InvalidActivationRange);
        }
        if requant.shifts.iter().any(|s| !(-31..=30).contains(s)) {
            return Err(KernelError::ShiftOutOfRange);
        }
        Ok(())
    }

    /// The output value of accumulator `acc`: requantised, offset and clamped.
    #[inline(always)]
    pub(crate) fn finish(&self, acc: i32, multiplier: i32, shift: i32) -> i8 {
        let scaled = multiply_by_quantized_multiplier(acc, multiplier, shift);
        // max/min rather than `clamp`, which re-checks min ≤ max (a compare and a panic
        // branch per output); `check` refused an empty range before any arithmetic.
        scaled
            .saturating_add(self.output_offset)
            .max(i32::from(self.activation_min))
            .min(i32::from(self.activation_max)) as i8
    }
}

pub(crate) fn volume(h: usize, w: usize, c: usize) -> Option<usize> {
    h.checked_mul(w)?.checked_mul(c)
}

/// The accumulator of one output value, straight from the definition: the sum over the kernel
/// positions that fall inside the input of `(x + input_offset) · w`, plus the bias.
#[inline]
fn conv_accumulate_reference(
    p: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: i32,
    oy: usize,
    ox: usize,
    oc: usize,
) -> i32 {
    let mut acc = bias;
    for ((ky, kx), (iy, ix)) in p.window(oy, ox) {
        let x = &input[(iy * p.input_width + ix) * p.input_channels..][..p.input_channels];
        let w = &weights[((oc * p.kernel + ky) * p.kernel + kx) * p.input_channels..]
            [..p.input_channels];
        for (&xv, &wv) in x.iter().zip(w) {
            acc = acc.wrapping_add((i32::from(xv) + p.input_offset) * i32::from(wv));
        }
    }
    acc
}

/// Generic reference convolution: every output from `conv_accumulate_reference` (the sum over
/// the kernel positions inside the input, straight from the definition).
///
/// `input` is `[H][W][Cin]`, `weights` `[Cout][k][k][Cin]`, `output` `[OH][OW][Cout]`.
pub fn conv2d_reference(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(false, input, weights, bias, &requant, output)?;
    reference_rows(
        params,
        (input, weights, bias),
        requant,
        0..params.output_height,
        output,
    );
    Ok(())
}

/// Output rows `rows` of [`conv2d_reference`] into `output` (those rows only; shapes already
/// checked).
fn reference_rows(
    p: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let band = rows.start;
    for oy in rows {
        for ox in 0..p.output_width {
            for oc in 0..p.output_channels {
                let acc = conv_accumulate_reference(p, input, weights, bias[oc], oy, ox, oc);
                output[((oy - band) * p.output_width + ox) * p.output_channels + oc] =
                    p.finish(acc, requant.multipliers[oc], requant.shifts[oc]);
            }
        }
    }
}

/// Largest `k·k·Cin` the fast path gathers on the stack (3×3×512: 9 KiB of int16); larger
/// filters take the reference path.
pub const PATCH_MAX: usize = 3 * 3 * 512;

/// `Σ p·w` of an offset-applied int16 patch and an int8 filter: int16 × int16 products summed
/// in int32 (wrapping, so any summation order gives the same bits). On aarch64 with NEON
/// `aarch64::dot`; elsewhere the portable loop, which optimising compilers vectorise.
#[cfg(not(feature = "dsp"))]
#[inline(always)]
fn dot(patch: &[i16], filter: &[i8]) -> i32 {
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    return aarch64::dot(patch, filter);
    #[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
    dot_portable(patch, filter)
}

/// The generic form of [`dot`].
#[cfg(not(feature = "dsp"))]
#[cfg_attr(
    all(target_arch = "aarch64", target_feature = "neon"),
    allow(dead_code)
)]
#[inline(always)]
fn dot_portable(patch: &[i16], filter: &[i8]) -> i32 {
    patch
        .iter()
        .zip(filter)
        .map(|(&p, &w)| i32::from(p) * i32::from(i16::from(w)))
        .fold(0_i32, i32::wrapping_add)
}

/// `dst[i] = src[i] + offset` (the input zero point applied while gathering a patch). On
/// aarch64 with NEON `aarch64::gather`; elsewhere the portable loop.
#[cfg(not(feature = "dsp"))]
#[inline(always)]
fn gather(dst: &mut [i16], src: &[i8], offset: i16) {
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    return aarch64::gather(dst, src, offset);
    #[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
    gather_portable(dst, src, offset)
}

#[cfg_attr(
    all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon"),
    allow(dead_code)
)]
#[inline(always)]
fn gather_portable(dst: &mut [i16], src: &[i8], offset: i16) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = i16::from(x) + offset;
    }
}

/// The convolution the engine runs, bit for bit equal to [`conv2d_reference`].
///
/// Per output pixel the receptive field is gathered once into a stack patch of `x + offset`
/// values (0 where the kernel leaves the input, i.e. the zero point in real terms, exactly as
/// the reference skips those positions), then every output channel is one contiguous
/// `k·k·Cin` dot product against its OHWI filter.
pub fn conv2d(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(false, input, weights, bias, &requant, output)?;
    #[cfg(feature = "dsp")]
    return dsp::conv2d_dsp(params, input, weights, bias, requant, output);
    #[cfg(not(feature = "dsp"))]
    {
        conv2d_rows_unchecked(
            params,
            (input, weights, bias),
            requant,
            0..params.output_height,
            output,
        );
        Ok(())
    }
}

/// Output rows `rows` of [`conv2d`] into `output`, which holds those rows only: one band of a
/// convolution run on several threads, bit for bit the same rows as a whole run.
#[cfg(not(feature = "dsp"))]
pub fn conv2d_rows(
    params: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    (rows, output): (Range<usize>, &mut [i8]),
) -> Result<(), KernelError> {
    params.check_rows(
        false,
        input,
        weights,
        bias,
        &requant,
        (rows.clone(), output),
    )?;
    conv2d_rows_unchecked(params, (input, weights, bias), requant, rows, output);
    Ok(())
}

/// Output rows `rows` of [`conv2d`] into `output` (those rows only), shapes already checked:
/// AVX2 where the x86-64 host has it, else the patch loop with this CPU's gather and dot.
#[cfg(not(feature = "dsp"))]
pub(crate) fn conv2d_rows_unchecked(
    params: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if x86_64::conv2d(
        params,
        (input, weights, bias),
        requant,
        rows.clone(),
        output,
    ) {
        return;
    }
    conv2d_patches(
        params,
        (input, weights, bias),
        requant,
        (rows, output),
        (gather, dot),
    );
}

/// The patch-gathering body of [`conv2d`] (shapes already checked), with the gather and dot
/// product of the CPU it runs on.
#[cfg(not(feature = "dsp"))]
#[inline(always)]
fn conv2d_patches(
    params: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    (rows, output): (Range<usize>, &mut [i8]),
    (gather, dot): (
        impl Fn(&mut [i16], &[i8], i16),
        impl Fn(&[i16], &[i8]) -> i32,
    ),
) {
    let p = params;
    let cin = p.input_channels;
    let filter_len = p.kernel * p.kernel * cin;
    if filter_len > PATCH_MAX || !(-255..=255).contains(&p.input_offset) {
        return reference_rows(p, (input, weights, bias), requant, rows, output);
    }
    let mut patch_buffer = [0_i16; PATCH_MAX];
    let offset = p.input_offset as i16;
    let fill = |oy: usize, ox: usize, patch: &mut [i16]| {
        gather_patch(p, input, (oy, ox), patch, |dst, src| {
            gather(dst, src, offset)
        });
    };
    let out_len = p.output_channels;
    let band = rows.start;
    for oy in rows {
        for ox in 0..p.output_width {
            let patch = &mut patch_buffer[..filter_len];
            fill(oy, ox, patch);
            let out = &mut output[((oy - band) * p.output_width + ox) * out_len..][..out_len];
            for (oc, (o, filter)) in out
                .iter_mut()
                .zip(weights.chunks_exact(filter_len))
                .enumerate()
            {
                let acc = bias[oc].wrapping_add(dot(patch, filter));
                *o = p.finish(acc, requant.multipliers[oc], requant.shifts[oc]);
            }
        }
    }
}

/// The patch of output pixel `(oy, ox)` (`k·k·Cin` values): `x + offset` over its receptive
/// field (`gather(dst, src)` widens a run of input values), 0 in the padding. The kernel
/// columns inside the input are the same for every kernel row, and each row's run of them is
/// contiguous in the input (NHWC) and in the patch: one `gather` call per kernel row.
#[inline(always)]
fn gather_patch(
    p: &ConvParams,
    input: &[i8],
    (oy, ox): (usize, usize),
    patch: &mut [i16],
    gather: impl Fn(&mut [i16], &[i8]),
) {
    let cin = p.input_channels;
    let left = ox * p.stride;
    let first = p.padding.saturating_sub(left).min(p.kernel);
    let end = (p.input_width + p.padding)
        .saturating_sub(left)
        .min(p.kernel);
    let inside = end.saturating_sub(first) * cin;
    for (ky, row) in patch.chunks_exact_mut(p.kernel * cin).enumerate() {
        let iy = (oy * p.stride + ky)
            .checked_sub(p.padding)
            .filter(|&y| y < p.input_height);
        let Some(iy) = iy.filter(|_| inside > 0) else {
            row.fill(0);
            continue;
        };
        // Only at the borders: a `fill` of nothing still costs a `memset` call per row.
        let (left_pad, rest) = row.split_at_mut(first * cin);
        if !left_pad.is_empty() {
            left_pad.fill(0);
        }
        if rest.len() > inside {
            rest[inside..].fill(0);
        }
        // Column of the first inside position: left + first − padding ≥ 0.
        let ix = left + first - p.padding;
        gather(
            &mut rest[..inside],
            &input[(iy * p.input_width + ix) * cin..][..inside],
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arith::quantize_multiplier;
    use crate::testutil::Lcg;

    /// A random convolution layer (also the depthwise kernel's test cases).
    pub(crate) struct Case {
        pub(crate) p: ConvParams,
        pub(crate) input: Vec<i8>,
        pub(crate) weights: Vec<i8>,
        pub(crate) bias: Vec<i32>,
        pub(crate) mults: Vec<i32>,
        pub(crate) shifts: Vec<i32>,
    }

    #[allow(clippy::too_many_arguments)] // one argument per geometry parameter
    pub(crate) fn case(
        seed: u32,
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        pad: usize,
    ) -> Case {
        let mut rng = Lcg(seed);
        let oh = ConvParams::output_extent(h, k, s, pad).unwrap();
        let ow = ConvParams::output_extent(w, k, s, pad).unwrap();
        let (mults, shifts) = (0..cout)
            .map(|_| quantize_multiplier(0.0005 + f64::from(rng.next_u8()) * 1e-5))
            .unzip();
        Case {
            p: ConvParams {
                input_height: h,
                input_width: w,
                input_channels: cin,
                output_height: oh,
                output_width: ow,
                output_channels: cout,
                kernel: k,
                stride: s,
                padding: pad,
                input_offset: 128 - i32::from(rng.next_u8() % 40),
                output_offset: -10,
                activation_min: -128,
                activation_max: 127,
            },
            input: rng.bytes(h * w * cin),
            weights: rng.bytes(k * k * cin * cout),
            bias: (0..cout)
                .map(|_| i32::from(rng.next_u8()) * 37 - 4000)
                .collect(),
            mults,
            shifts,
        }
    }

    impl Case {
        fn requant(&self) -> PerChannelRequant<'_> {
            PerChannelRequant {
                multipliers: &self.mults,
                shifts: &self.shifts,
            }
        }

        /// The outputs of `fast` and of [`conv2d_reference`] on this case.
        fn fast_and_reference(&self, fast: impl FnOnce(&Case, &mut [i8])) -> (Vec<i8>, Vec<i8>) {
            let n = self.p.output_height * self.p.output_width * self.p.output_channels;
            let (mut out, mut reference) = (vec![0; n], vec![0; n]);
            fast(self, &mut out);
            conv2d_reference(
                &self.p,
                &self.input,
                &self.weights,
                &self.bias,
                self.requant(),
                &mut reference,
            )
            .unwrap();
            (out, reference)
        }

        /// `run(rows, band)` over the output in two bands of rows, split at row `split`, put
        /// together: what a run on two threads writes.
        fn in_bands(&self, split: usize, run: impl Fn(Range<usize>, &mut [i8])) -> Vec<i8> {
            let row_len = self.p.output_width * self.p.output_channels;
            let mut out = vec![0; self.p.output_height * row_len];
            let (top, bottom) = out.split_at_mut(split * row_len);
            run(0..split, top);
            run(split..self.p.output_height, bottom);
            out
        }
    }

    #[test]
    fn fast_conv_equals_the_reference_bit_for_bit() {
        for (seed, h, w, cin, cout, k, s, pad) in [
            (1, 9, 7, 3, 5, 3, 1, 1),
            (2, 8, 8, 4, 6, 3, 2, 1),
            (3, 5, 6, 2, 3, 1, 1, 0),
            (4, 7, 7, 8, 4, 1, 2, 0),
            (5, 11, 10, 3, 4, 7, 2, 3),
            (6, 3, 3, 5, 2, 3, 1, 0),
            // Whole SIMD blocks only (144 = 9 × 16), and one with a long tail (9 × 13).
            (7, 6, 6, 16, 12, 3, 1, 1),
            (8, 5, 5, 13, 7, 3, 1, 1),
        ] {
            let c = case(seed, h, w, cin, cout, k, s, pad);
            let (fast, reference) = c.fast_and_reference(|c, out| {
                conv2d(&c.p, &c.input, &c.weights, &c.bias, c.requant(), out).unwrap()
            });
            assert_eq!(fast, reference, "case {seed}");
            for split in [1, c.p.output_height / 2] {
                let banded = c.in_bands(split, |rows, band| {
                    let filters = (&c.input[..], &c.weights[..], &c.bias[..]);
                    conv2d_rows(&c.p, filters, c.requant(), (rows, band)).unwrap()
                });
                assert_eq!(
                    banded, reference,
                    "case {seed} in bands split at row {split}"
                );
            }
            let n = reference.len();
            let distinct = reference
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            assert!(
                distinct > n.min(20) / 2,
                "case {seed}: degenerate outputs {reference:?}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packed_conv_equals_the_reference_bit_for_bit() {
        // Odd and even filter lengths, channel counts on both sides of a block of eight.
        for (seed, h, w, cin, cout, k, s, pad) in [
            (11, 9, 7, 3, 5, 3, 1, 1),
            (12, 8, 8, 4, 8, 3, 2, 1),
            (13, 6, 6, 16, 12, 3, 1, 1),
            (14, 5, 5, 13, 17, 3, 1, 1),
            (15, 7, 7, 8, 9, 1, 2, 0),
            (16, 4, 4, 32, 64, 3, 1, 1),
            // Pixel counts that are not a multiple of the VNNI kernel's four, a long filter
            // (3×3×128), a strided 1×1 shortcut.
            (18, 5, 3, 3, 8, 3, 1, 1),
            (19, 3, 3, 128, 16, 3, 1, 1),
            (20, 6, 6, 16, 32, 1, 2, 0),
            // Eight channels with the vector requantisation (odd seeds): the one-pixel-per-lane
            // kernel, neighbours one quad apart (RGB, stride 1) and two (8 channels, stride 1;
            // 4 channels, stride 2), rows of 9 and 11 pixels (a short last pass), a 1×1.
            (21, 6, 9, 8, 8, 3, 1, 1),
            (23, 5, 11, 3, 8, 3, 1, 1),
            (25, 9, 17, 4, 8, 3, 2, 1),
            (27, 4, 8, 8, 8, 1, 1, 0),
            // Pairs of blocks with the vector requantisation (odd seeds): the 512-bit kernel,
            // strided, a 1×1 over channels padded to a multiple of four, a pixel count not a
            // multiple of four.
            (29, 7, 7, 16, 32, 3, 1, 1),
            (31, 6, 6, 8, 16, 3, 2, 1),
            (33, 5, 5, 13, 48, 1, 2, 0),
            (35, 3, 5, 5, 16, 3, 1, 1),
        ] {
            let mut c = case(seed, h, w, cin, cout, k, s, pad);
            if seed % 2 == 0 {
                // A scale of 0.75 (shift 0) in one channel: the scalar requantisation path.
                (c.mults[0], c.shifts[0]) = quantize_multiplier(0.75);
            }
            // Both layouts where the CPU runs both (the VNNI one needs AVX-512 VNNI), with the
            // extreme offsets of int8 zero points: real zero as unsigned byte 255 and 0.
            let layouts: &[bool] = if x86_64::avx512_vnni() {
                &[false, true]
            } else {
                eprintln!("no AVX-512 VNNI on this CPU: the quad layout is not tested");
                &[false]
            };
            for &quads in layouts {
                for input_offset in [c.p.input_offset, -127, 128] {
                    c.p.input_offset = input_offset;
                    let packed = PackedFilters::with_layout(
                        &c.weights,
                        (cout, cin),
                        (&c.bias, input_offset),
                        c.requant(),
                        quads,
                    )
                    .unwrap();
                    let (fast, reference) = c.fast_and_reference(|c, out| {
                        conv2d_packed(
                            &c.p,
                            &c.input,
                            &packed,
                            &c.weights,
                            &c.bias,
                            c.requant(),
                            out,
                        )
                        .unwrap()
                    });
                    assert_eq!(
                        fast, reference,
                        "case {seed}, quads {quads}, offset {input_offset}"
                    );
                    for split in [1, c.p.output_height / 2] {
                        let banded = c.in_bands(split, |rows, band| {
                            let filters = (&c.input[..], &c.weights[..], &c.bias[..]);
                            let packing = (&packed, c.requant());
                            conv2d_packed_rows(&c.p, filters, packing, (rows, band)).unwrap()
                        });
                        assert_eq!(
                            banded, reference,
                            "case {seed}, quads {quads} in bands at {split}"
                        );
                    }
                }
            }
        }
        // A packing that does not match the layer is not used: the result is still right.
        let c = case(17, 6, 6, 4, 6, 3, 1, 1);
        let other_shape = PackedFilters::new(
            &c.weights[..c.weights.len() / 2],
            (3, 4),
            &c.bias[..3],
            PerChannelRequant {
                multipliers: &c.mults[..3],
                shifts: &c.shifts[..3],
            },
            c.p.input_offset,
        )
        .unwrap();
        // Same filters, packed for another input offset or another bias.
        let rq = c.requant();
        let other_offset =
            PackedFilters::new(&c.weights, (6, 4), &c.bias, rq, c.p.input_offset - 1).unwrap();
        let other_bias: Vec<i32> = c.bias.iter().map(|b| b + 1).collect();
        let other_bias =
            PackedFilters::new(&c.weights, (6, 4), &other_bias, rq, c.p.input_offset).unwrap();
        for other in [other_shape, other_offset, other_bias] {
            let (fast, reference) = c.fast_and_reference(|c, out| {
                conv2d_packed(
                    &c.p,
                    &c.input,
                    &other,
                    &c.weights,
                    &c.bias,
                    c.requant(),
                    out,
                )
                .unwrap()
            });
            assert_eq!(fast, reference);
        }
    }

    #[test]
    fn conv_matches_float_arithmetic_within_one_step() {
        // 1×1 input channel, known scales: compare against the real-valued convolution.
        let c = case(9, 6, 5, 2, 3, 3, 1, 1);
        let rq = PerChannelRequant {
            multipliers: &c.mults,
            shifts: &c.shifts,
        };
        let n = c.p.output_height * c.p.output_width * 3;
        let mut out = vec![0; n];
        conv2d(&c.p, &c.input, &c.weights, &c.bias, rq, &mut out).unwrap();
        let p = &c.p;
        for oy in 0..p.output_height {
            for ox in 0..p.output_width {
                for oc in 0..3 {
                    let acc =
                        conv_accumulate_reference(p, &c.input, &c.weights, c.bias[oc], oy, ox, oc);
                    let real = f64::from(c.mults[oc]) * 2_f64.powi(c.shifts[oc] - 31);
                    let want = (f64::from(acc) * real).round() + f64::from(p.output_offset);
                    let want = want.clamp(-128.0, 127.0);
                    let got = f64::from(out[(oy * p.output_width + ox) * 3 + oc]);
                    assert!((got - want).abs() <= 1.0, "{oy},{ox},{oc}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn padding_contributes_nothing_in_real_terms() {
        // An input equal to its zero point everywhere is real zero: the output is the bias alone.
        let mut c = case(3, 4, 4, 2, 2, 3, 1, 1);
        c.input = vec![(-c.p.input_offset) as i8; 32];
        let rq = PerChannelRequant {
            multipliers: &c.mults,
            shifts: &c.shifts,
        };
        let mut out = vec![0; 32];
        conv2d(&c.p, &c.input, &c.weights, &c.bias, rq, &mut out).unwrap();
        for (i, &v) in out.iter().enumerate() {
            assert_eq!(
                v,
                c.p.finish(c.bias[i % 2], c.mults[i % 2], c.shifts[i % 2])
            );
        }
    }

    #[test]
    fn rejects_inconsistent_shapes_without_panicking() {
        // A band of rows past the output, or an output that is not the band's length.
        let c = case(41, 6, 6, 4, 6, 3, 1, 1);
        let filters = (&c.input[..], &c.weights[..], &c.bias[..]);
        let row_len = c.p.output_width * c.p.output_channels;
        let mut band = vec![0; 2 * row_len];
        let past = conv2d_rows(&c.p, filters, c.requant(), (5..7, &mut band));
        assert_eq!(past, Err(KernelError::ShapeMismatch));
        let short = conv2d_rows(&c.p, filters, c.requant(), (0..3, &mut band));
        assert_eq!(short, Err(KernelError::ShapeMismatch));
        let c = case(1, 5, 5, 2, 2, 3, 1, 1);
        let rq = PerChannelRequant {
            multipliers: &c.mults,
            shifts: &c.shifts,
        };
        let mut out = vec![0; 50];
        let mut wrong = c.p;
        wrong.output_height = 4;
        assert_eq!(
            conv2d(&wrong, &c.input, &c.weights, &c.bias, rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        assert_eq!(
            conv2d(&c.p, &c.input[1..], &c.weights, &c.bias, rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        let mut zero_stride = c.p;
        zero_stride.stride = 0;
        assert_eq!(
            conv2d(&zero_stride, &c.input, &c.weights, &c.bias, rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
        let mut huge = c.p;
        huge.input_channels = usize::MAX / 2;
        assert_eq!(
            conv2d_reference(&huge, &c.input, &c.weights, &c.bias, rq, &mut out),
            Err(KernelError::ShapeMismatch)
        );
    }
}
