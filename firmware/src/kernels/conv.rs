//! Convolutions over NHWC int8 tensors (batch 1): a standard 2-D convolution with OHWI weights
//! and a depthwise convolution with `[k][k][C]` weights. int32 accumulation, per-output-channel
//! requantisation, saturating int8 output, zero padding in real terms (the input zero point).

use crate::arith::multiply_by_quantized_multiplier;
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

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

    fn check(
        &self,
        depthwise: bool,
        input: &[i8],
        weights: &[i8],
        bias: &[i32],
        requant: &PerChannelRequant<'_>,
        output: &[i8],
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
        let output_len = volume(self.output_height, self.output_width, self.output_channels);
        if !extent_ok
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

    /// [`ConvParams::finish`] with the bias and constants prepared per layer: equal to
    /// `finish(bias + acc, multiplier, shift)`.
    #[cfg(feature = "dsp")]
    #[inline(always)]
    fn finish_prepared(&self, acc: i32, c: &ChannelConstants) -> i8 {
        let x = c.bias.wrapping_add(acc);
        let scaled = if c.high_shift == ChannelConstants::GENERAL {
            requantize_general(x, c.multiplier, c.rounding as i32)
        } else {
            crate::arith::multiply_by_quantized_multiplier_prepared(
                x,
                c.multiplier,
                c.rounding,
                c.high_shift,
            )
        };
        scaled
            .saturating_add(self.output_offset)
            .max(i32::from(self.activation_min))
            .min(i32::from(self.activation_max)) as i8
    }

    #[inline(always)]
    fn finish(&self, acc: i32, multiplier: i32, shift: i32) -> i8 {
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

/// Generic reference convolution: every output from [`conv_accumulate_reference`].
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
    let p = params;
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            for oc in 0..p.output_channels {
                let acc = conv_accumulate_reference(p, input, weights, bias[oc], oy, ox, oc);
                output[(oy * p.output_width + ox) * p.output_channels + oc] =
                    p.finish(acc, requant.multipliers[oc], requant.shifts[oc]);
            }
        }
    }
    Ok(())
}

/// Output channels whose requantisation constants the DSP path prepares at a time (2 KiB of
/// stack); a wider layer runs in blocks of this many channels.
#[cfg(feature = "dsp")]
const CHANNEL_BLOCK: usize = 128;

/// One output channel's bias and requantisation, prepared once per layer on the DSP path so
/// that each output costs one 64-bit multiply-add and a shift
/// ([`crate::arith::multiply_by_quantized_multiplier_prepared`]).
#[cfg(feature = "dsp")]
#[derive(Clone, Copy, Default)]
struct ChannelConstants {
    bias: i32,
    multiplier: i32,
    /// `2^e + 1` for a right shift by `e`; the shift itself when it is not a right shift.
    rounding: u32,
    /// `e − 1`, or [`ChannelConstants::GENERAL`]: requantise with the general form.
    high_shift: u32,
}

#[cfg(feature = "dsp")]
impl ChannelConstants {
    const GENERAL: u32 = u32::MAX;

    fn new(bias: i32, multiplier: i32, shift: i32) -> Self {
        let (rounding, high_shift) = if shift < 0 {
            crate::arith::right_shift_constants(shift.unsigned_abs())
        } else {
            (shift as u32, Self::GENERAL)
        };
        ChannelConstants {
            bias,
            multiplier,
            rounding,
            high_shift,
        }
    }
}

/// The general requantisation (a shift ≥ 0: scales of 0.5 and above, which trained layers do
/// not have) out of line, so the many inlined requantisations of the DSP path stay small.
#[cfg(feature = "dsp")]
#[inline(never)]
#[cold]
fn requantize_general(x: i32, multiplier: i32, shift: i32) -> i32 {
    multiply_by_quantized_multiplier(x, multiplier, shift)
}

/// Bytes of padded filters the DSP path copies onto the stack for a layer whose `k·k·Cin` is
/// not a multiple of eight (the stem: 16 × 32 for a 3×3 kernel over 3 channels).
#[cfg(feature = "dsp")]
const PADDED_WEIGHTS_MAX: usize = 2048;

/// Largest `k·k·Cin` the fast path gathers on the stack (3×3×512: 9 KiB of int16); larger
/// filters take the reference path.
pub const PATCH_MAX: usize = 3 * 3 * 512;

/// `Σ p·w` of an offset-applied int16 patch and an int8 filter: int16 × int16 products summed
/// in int32 (wrapping, so any summation order gives the same bits). On aarch64 with NEON
/// [`dot_neon`]; elsewhere the portable loop, which optimising compilers vectorise.
#[cfg(not(feature = "dsp"))]
#[inline(always)]
fn dot(patch: &[i16], filter: &[i8]) -> i32 {
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    #[allow(unsafe_code)]
    // SAFETY: this build enables NEON (`target_feature = "neon"`, aarch64's baseline).
    return unsafe { dot_neon(patch, filter) };
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

/// [`dot`] with NEON written out (8 MACs per `SMLAL`/`SMLAL2` pair): the edge binary is built
/// for size, where the compiler does not vectorise the portable loop.
#[cfg(all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon"))]
#[target_feature(enable = "neon")]
#[inline]
fn dot_neon(patch: &[i16], filter: &[i8]) -> i32 {
    use core::arch::aarch64::*;
    let n = patch.len().min(filter.len());
    let whole = n & !7;
    let (mut low, mut high) = (vdupq_n_s32(0), vdupq_n_s32(0));
    for i in (0..whole).step_by(8) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 8 ≤ whole ≤ n`, within both slices; NEON loads need no alignment.
        let (p, w) = unsafe {
            (
                vld1q_s16(patch.as_ptr().add(i)),
                vmovl_s8(vld1_s8(filter.as_ptr().add(i))),
            )
        };
        low = vmlal_s16(low, vget_low_s16(p), vget_low_s16(w));
        high = vmlal_high_s16(high, p, w);
    }
    let total = vaddvq_s32(vaddq_s32(low, high));
    total.wrapping_add(dot_portable(&patch[whole..n], &filter[whole..n]))
}

/// `dst[i] = src[i] + offset` (the input zero point applied while gathering a patch). On
/// aarch64 with NEON [`gather_neon`]; elsewhere the portable loop.
#[inline(always)]
fn gather(dst: &mut [i16], src: &[i8], offset: i16) {
    #[cfg(all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon"))]
    #[allow(unsafe_code)]
    // SAFETY: this build enables NEON (`target_feature = "neon"`, aarch64's baseline).
    return unsafe { gather_neon(dst, src, offset) };
    #[cfg(not(all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon")))]
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

/// [`gather`] with NEON written out (8 values per `SXTL` + `ADD`): in the size-optimised edge
/// build the scalar loop cost as much as the vectorised dot products it feeds.
#[cfg(all(not(feature = "dsp"), target_arch = "aarch64", target_feature = "neon"))]
#[target_feature(enable = "neon")]
#[inline]
fn gather_neon(dst: &mut [i16], src: &[i8], offset: i16) {
    use core::arch::aarch64::*;
    let n = dst.len().min(src.len());
    let whole = n & !7;
    let offsets = vdupq_n_s16(offset);
    for i in (0..whole).step_by(8) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 8 ≤ whole ≤ n`, within both slices; NEON loads and stores need no
        // alignment.
        unsafe {
            let x = vmovl_s8(vld1_s8(src.as_ptr().add(i)));
            vst1q_s16(dst.as_mut_ptr().add(i), vaddq_s16(x, offsets));
        }
    }
    gather_portable(&mut dst[whole..n], &src[whole..n], offset);
}

/// [`gather`] with AVX2 written out (16 values per `vpmovsxbw` + `vpaddw`), for the same
/// reason as [`gather_neon`].
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
#[inline]
fn gather_avx2(dst: &mut [i16], src: &[i8], offset: i16) {
    use core::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let whole = n & !15;
    let offsets = _mm256_set1_epi16(offset);
    for i in (0..whole).step_by(16) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 16 ≤ whole ≤ n`, within both slices (16 bytes read, 32 written);
        // unaligned loads and stores.
        unsafe {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(src.as_ptr().add(i).cast()));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), _mm256_add_epi16(x, offsets));
        }
    }
    gather_portable(&mut dst[whole..n], &src[whole..n], offset);
}

/// [`dot`] with AVX2 written out (16 MACs per `vpmaddwd`), for the same reason as
/// [`dot_neon`]; chosen at run time by [`conv2d`].
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(patch: &[i16], filter: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    let n = patch.len().min(filter.len());
    let whole = n & !15;
    let mut acc = _mm256_setzero_si256();
    for i in (0..whole).step_by(16) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 16 ≤ whole ≤ n`, within both slices (32 bytes of patch, 16 of filter);
        // unaligned loads.
        let (p, w) = unsafe {
            (
                _mm256_loadu_si256(patch.as_ptr().add(i).cast()),
                _mm_loadu_si128(filter.as_ptr().add(i).cast()),
            )
        };
        // |p| ≤ 383 and |w| ≤ 128: each pair's sum fits the int32 lanes exactly.
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_cvtepi8_epi16(w)));
    }
    let lanes = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32::<0b01_00_11_10>(lanes));
    let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32::<0b10_11_00_01>(lanes));
    _mm_cvtsi128_si32(lanes).wrapping_add(dot_portable(&patch[whole..n], &filter[whole..n]))
}

/// [`dot`] with the Cortex-M4/M7 DSP extension (feature `dsp`, ARMv7E-M only): per four
/// filter bytes, one word load, two `SXTB16` (sign-extending bytes 0, 2 and 1, 3 into 16-bit
/// halves) and two `SMLAD` (two 16×16 multiply-accumulates each). The patch holds each group of
/// four as (0, 2, 1, 3) — [`conv2d`] swaps it so — to match the halves `SXTB16` produces.
/// Integer results are identical to the portable [`dot`] (the QEMU golden test checks).
#[cfg(feature = "dsp")]
#[inline(always)]
fn dot(patch: &[i16], filter: &[i8]) -> i32 {
    let whole = filter.len() & !3;
    let (patch_quads, patch_tail) = patch.split_at(whole);
    let (filter_quads, filter_tail) = filter.split_at(whole);
    let mut acc = 0_i32;
    for (p, f) in patch_quads
        .chunks_exact(4)
        .zip(filter_quads.chunks_exact(4))
    {
        let weights = u32::from_le_bytes([f[0] as u8, f[1] as u8, f[2] as u8, f[3] as u8]);
        let pair = |a: i16, b: i16| u32::from(a as u16) | (u32::from(b as u16) << 16);
        let (even, odd) = (pair(p[0], p[1]), pair(p[2], p[3]));
        #[allow(unsafe_code)]
        // SAFETY: register-only arithmetic (no memory, stack or flags the compiler relies on);
        // SXTB16 and SMLAD exist on every ARMv7E-M core, the only targets the `dsp` feature is
        // for.
        unsafe {
            core::arch::asm!(
                "sxtb16 {w02}, {w}",
                "sxtb16 {w13}, {w}, ror #8",
                "smlad {acc}, {even}, {w02}, {acc}",
                "smlad {acc}, {odd}, {w13}, {acc}",
                w = in(reg) weights,
                w02 = out(reg) _,
                w13 = out(reg) _,
                even = in(reg) even,
                odd = in(reg) odd,
                acc = inout(reg) acc,
                options(pure, nomem, nostack),
            );
        }
    }
    for (&p, &w) in patch_tail.iter().zip(filter_tail) {
        acc = acc.wrapping_add(i32::from(p) * i32::from(w));
    }
    acc
}

/// Four patch values against two filters (the body of [`dot2`]'s loop, unrolled twice
/// there): one `LDRD` of the patch pair (0, 2) / (1, 3), then per channel one word of weights,
/// two `SXTB16` and two `SMLAD`. Channel 1 is at `f + len`, channel 0 at `f`, whose load
/// advances `f`.
#[cfg(feature = "dsp")]
macro_rules! dot2_four {
    () => {
        concat!(
            "ldrd {p0}, {p1}, [{patch}], #8\n",
            "ldr {w}, [{f}, {len}]\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {a1}, {p0}, {t}, {a1}\n",
            "smlad {a1}, {p1}, {w}, {a1}\n",
            "ldr {w}, [{f}], #4\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {a0}, {p0}, {t}, {a0}\n",
            "smlad {a0}, {p1}, {w}, {a0}\n",
        )
    };
}

/// Four values of two patches (pixels A and B) against two filters: the body of
/// [`dot_pixels`]'s loop. Each channel's weights are loaded and sign-extended once and used for
/// both pixels; the patch words are reloaded instead (`LDRD`, one instruction) because the
/// loop has no registers left to keep both pixels' words: 17 instructions per 16 MACs.
#[cfg(feature = "dsp")]
macro_rules! dot_pixels_four {
    () => {
        concat!(
            "ldrd {p0}, {p1}, [{pa}], #8\n",
            "ldr {w}, [{f}, {len}]\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {a1a}, {p0}, {t}, {a1a}\n",
            "smlad {a1a}, {p1}, {w}, {a1a}\n",
            "ldrd {p0}, {p1}, [{pb}], #8\n",
            "smlad {a1b}, {p0}, {t}, {a1b}\n",
            "smlad {a1b}, {p1}, {w}, {a1b}\n",
            "ldr {w}, [{f}], #4\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {a0b}, {p0}, {t}, {a0b}\n",
            "smlad {a0b}, {p1}, {w}, {a0b}\n",
            "ldrd {p0}, {p1}, [{pa}, #-8]\n",
            "smlad {a0a}, {p0}, {t}, {a0a}\n",
            "smlad {a0a}, {p1}, {w}, {a0a}\n",
        )
    };
}

/// Two output channels of two pixels in one pass: `(a0, a1, b0, b1)` for patches `a` and
/// `b` (each `len` values, `len` a multiple of eight, word-aligned) and `filters` holding the
/// two channels' `2 × len` weights. 36 instructions per 32 MACs with the loop (1.125 per MAC,
/// where [`dot2`] takes 1.42 with three channels of one pixel): every weight is loaded
/// and widened once for both pixels. Uses 13 registers. Returns zeros (nothing read) when the
/// shapes or alignment do not fit ([`dot_pixels_fits`], which the caller checks first).
#[cfg(feature = "dsp")]
#[inline(always)]
fn dot_pixels(a: &[i16], b: &[i16], filters: &[i8]) -> (i32, i32, i32, i32) {
    if !dot_pixels_fits(a, b, filters) {
        return (0, 0, 0, 0);
    }
    let len = a.len();
    let (mut a0a, mut a1a, mut a0b, mut a1b) = (0_i32, 0_i32, 0_i32, 0_i32);
    #[allow(unsafe_code)]
    // SAFETY: the loop runs `len / 8` times; each pass reads 8 values (16 bytes) of each patch
    // from its start onwards (pixel A's words twice: the `[pa, #-8]` reload re-reads the four
    // values just passed) and 8 bytes at `f` and at `f + len`, so it reads `a[..len]`,
    // `b[..len]`, `filters[..len]` and `filters[len..2·len]` — inside all three slices
    // (lengths checked above). `LDRD` needs the word alignment checked above; `LDR` may be
    // unaligned on ARMv7E-M. Only registers named here are written; no stack. SXTB16/SMLAD
    // exist on every ARMv7E-M core, the only targets of `dsp`.
    unsafe {
        core::arch::asm!(
            "2:",
            dot_pixels_four!(),
            dot_pixels_four!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            pa = inout(reg) a.as_ptr() => _,
            pb = inout(reg) b.as_ptr() => _,
            f = inout(reg) filters.as_ptr() => _,
            len = in(reg) len,
            n = inout(reg) len / 8 => _,
            p0 = out(reg) _,
            p1 = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            a0a = inout(reg) a0a,
            a1a = inout(reg) a1a,
            a0b = inout(reg) a0b,
            a1b = inout(reg) a1b,
            options(readonly, nostack),
        );
    }
    (a0a, a1a, a0b, a1b)
}

/// Whether [`dot_pixels`] takes these patches and filters: equal lengths, a multiple of eight,
/// word-aligned patches (it returns zeros otherwise, reading nothing).
#[cfg(feature = "dsp")]
#[inline(always)]
fn dot_pixels_fits(a: &[i16], b: &[i16], filters: &[i8]) -> bool {
    let len = a.len();
    len != 0
        && len.is_multiple_of(8)
        && b.len() == len
        && filters.len() == 2 * len
        && (a.as_ptr() as usize).is_multiple_of(4)
        && (b.as_ptr() as usize).is_multiple_of(4)
}

/// Every output channel of two pixels on the DSP path ([`dot_pixels`], channels in pairs; an
/// odd last channel through `single` for each pixel), each result requantised as it comes with
/// the layer's prepared constants (`table`, one per channel). Returns `false` (nothing
/// written) when the patches do not fit [`dot_pixels`].
#[cfg(feature = "dsp")]
#[inline(always)]
fn conv_pixel_pair_dsp(
    p: &ConvParams,
    (patch_a, patch_b): (&[i16], &[i16]),
    weights: &[i8],
    table: &[ChannelConstants],
    (out_a, out_b): (&mut [i8], &mut [i8]),
    single: impl Fn(&[i16], &[i8]) -> i32,
) -> bool {
    let channels = out_a.len();
    let len = patch_a.len();
    if out_b.len() != channels
        || weights.len() != channels * len
        || table.len() != channels
        || (channels >= 2 && !dot_pixels_fits(patch_a, patch_b, &weights[..2 * len]))
    {
        return false;
    }
    let (w2, w1) = weights.split_at(channels / 2 * 2 * len);
    let (c2, c1) = table.as_chunks::<2>();
    let (a2, a1) = out_a.as_chunks_mut::<2>();
    let (b2, b1) = out_b.as_chunks_mut::<2>();
    for (((f, [c0, c1]), a), b) in w2.chunks_exact(2 * len).zip(c2).zip(a2).zip(b2) {
        let (a0, a1, b0, b1) = dot_pixels(patch_a, patch_b, f);
        *a = [p.finish_prepared(a0, c0), p.finish_prepared(a1, c1)];
        *b = [p.finish_prepared(b0, c0), p.finish_prepared(b1, c1)];
    }
    for (((c, a), b), f) in c1.iter().zip(a1).zip(b1).zip(w1.chunks_exact(len)) {
        *a = p.finish_prepared(single(patch_a, f), c);
        *b = p.finish_prepared(single(patch_b, f), c);
    }
    true
}

/// Two consecutive output channels of one pixel in one pass over the patch (`filters` holds
/// their `2 × len` OHWI weights): per eight patch values, two `LDRD` feed both channels, each
/// channel's weights cost one word load and two `SXTB16` per four: 24 instructions per 16
/// MACs with the loop (1.5 per MAC, where the one-channel [`dot`] takes 2.5: it reloads the
/// patch for every channel). The one-pixel path: a row's odd last pixel and layers the
/// two-pixel [`dot_pixels`] does not take. Channel 1 is addressed as `[f + len]` (register
/// offset). Values past the last multiple of eight go through [`dot_tail`]. The patch must be
/// 4-byte aligned (`LDRD` faults otherwise): [`conv2d_patches`]'s buffer is.
#[cfg(feature = "dsp")]
#[inline(always)]
fn dot2(patch: &[i16], filters: &[i8]) -> [i32; 2] {
    let len = patch.len();
    if filters.len() != 2 * len {
        // Not the expected shapes (never, from conv_pixel_dsp): one channel at a time.
        return core::array::from_fn(|k| {
            filters
                .get(k * len..(k + 1) * len)
                .map_or(0, |filter| dot(patch, filter))
        });
    }
    let mut whole = len & !7;
    if !(patch.as_ptr() as usize).is_multiple_of(4) {
        whole = 0;
    }
    let (mut a0, mut a1) = (0_i32, 0_i32);
    if whole > 0 {
        #[allow(unsafe_code)]
        // SAFETY: the loop runs `whole / 8` times; each pass reads 8 patch values (16 bytes)
        // and 8 bytes at each of `f` and `f + len`, so it reads `patch[..whole]` and the
        // first `whole` bytes of each channel's `len` weights — inside both slices (`whole ≤
        // len`, `filters.len() = 2·len`, checked above). `LDRD` needs the word alignment
        // checked above; `LDR` may be unaligned on ARMv7E-M. Only registers named here are
        // written; no stack. SXTB16/SMLAD exist on every ARMv7E-M core, the only targets of
        // `dsp`.
        unsafe {
            core::arch::asm!(
                "2:",
                // Unrolled twice: 8 patch values per pass.
                dot2_four!(),
                dot2_four!(),
                "subs {n}, {n}, #1",
                "bne 2b",
                patch = inout(reg) patch.as_ptr() => _,
                f = inout(reg) filters.as_ptr() => _,
                len = in(reg) len,
                n = inout(reg) whole / 8 => _,
                p0 = out(reg) _,
                p1 = out(reg) _,
                w = out(reg) _,
                t = out(reg) _,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                options(readonly, nostack),
            );
        }
    }
    let mut acc = [a0, a1];
    if whole < len {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(dot_tail(patch, filters, k * len + whole, whole));
        }
    }
    acc
}

/// `Σ patch[i]·filters[start + i − from]` for `i` in `from..patch.len()`, in the patch's DSP
/// order: every complete group of four (counted from `from`, a multiple of eight) holds
/// values (0, 2, 1, 3), the last one to three values are in order. The values a pass of eight
/// leaves: a group of four when k·k·Cin is 4 mod 8, or the last few values of a filter too
/// wide for the padded copy. Out of line (rarely used); slices taken with `get`, so no panic
/// path.
#[cfg(feature = "dsp")]
#[inline(never)]
fn dot_tail(patch: &[i16], filters: &[i8], start: usize, from: usize) -> i32 {
    const DSP_ORDER: [usize; 4] = [0, 2, 1, 3];
    let values = patch.get(from..).unwrap_or(&[]);
    let weights = filters.get(start..).unwrap_or(&[]);
    let quads = values.len() & !3;
    values.iter().enumerate().fold(0_i32, |acc, (i, &p)| {
        let at = if i < quads {
            i - i % 4 + DSP_ORDER[i % 4]
        } else {
            i
        };
        let w = weights.get(at).map_or(0, |&w| i32::from(w));
        acc.wrapping_add(i32::from(p) * w)
    })
}

/// Every output channel of one pixel on the DSP path: channels in pairs ([`dot2`]), an odd
/// last one through `single` (the one-channel dot product); each result requantised as it
/// comes with the layer's prepared constants (`table`, one per channel).
#[cfg(feature = "dsp")]
#[inline(always)]
fn conv_pixel_dsp(
    p: &ConvParams,
    patch: &[i16],
    weights: &[i8],
    table: &[ChannelConstants],
    out: &mut [i8],
    single: impl Fn(&[i16], &[i8]) -> i32,
) {
    let len = patch.len();
    let (out2, out1) = out.as_chunks_mut::<2>();
    let (c2, c1) = table.as_chunks::<2>();
    let (w2, w1) = weights.split_at((out2.len() * 2 * len).min(weights.len()));
    for ((o, w), [c0, c1]) in out2.iter_mut().zip(w2.chunks_exact(2 * len)).zip(c2) {
        let [a0, a1] = dot2(patch, w);
        *o = [p.finish_prepared(a0, c0), p.finish_prepared(a1, c1)];
    }
    for ((o, w), c) in out1.iter_mut().zip(w1.chunks_exact(len)).zip(c1) {
        *o = p.finish_prepared(single(patch, w), c);
    }
}

/// Four int8 values (a little-endian word) plus `offsets` (the offset in both halves) as
/// int16 pairs (0, 2) and (1, 3), the order `SXTB16` produces and [`dot2`] reads.
#[cfg(feature = "dsp")]
#[inline(always)]
fn widen_four(bytes: u32, offsets: u32) -> [u32; 2] {
    let (even, odd): (u32, u32);
    #[allow(unsafe_code)]
    // SAFETY: register-only arithmetic (no memory, stack or flags the compiler relies on;
    // SADD16 sets only the GE bits, which nothing here reads); SXTB16 and SADD16 exist on
    // every ARMv7E-M core, the only targets of `dsp`.
    unsafe {
        core::arch::asm!(
            "sxtb16 {even}, {bytes}",
            "sxtb16 {odd}, {bytes}, ror #8",
            "sadd16 {even}, {even}, {offsets}",
            "sadd16 {odd}, {odd}, {offsets}",
            bytes = in(reg) bytes,
            offsets = in(reg) offsets,
            even = out(reg) even,
            odd = out(reg) odd,
            options(pure, nomem, nostack),
        );
    }
    [even, odd]
}

/// `dst[i] = src[i] + offset` for a multiple of four values, written in the (0, 2, 1, 3) order
/// of every four that [`dot2`] and the DSP [`dot`] read: per four bytes one word load,
/// two `SXTB16` (which produce exactly that order), two `SADD16` and one `STRD` — 8
/// instructions with the loop, where the compiler's version of the same steps spilled
/// registers and took 13.
#[cfg(feature = "dsp")]
#[inline(always)]
fn gather_swapped(dst: &mut [i16], src: &[i8], offset: i16) {
    let offsets = u32::from(offset as u16) * 0x0001_0001;
    let quads = src.len().min(dst.len()) / 4;
    let word = |x: &[i8; 4]| u32::from_le_bytes(x.map(|b| b as u8));
    if quads > 0 && (dst.as_ptr() as usize).is_multiple_of(4) {
        #[allow(unsafe_code)]
        // SAFETY: `quads` passes each read 4 bytes of `src` and write 8 bytes (4 values) of
        // `dst` from their starts: `4·quads ≤ src.len()` and `4·quads ≤ dst.len()` (values),
        // so every access is inside both slices. `STRD` needs the word alignment checked
        // above; `LDR` may be unaligned on ARMv7E-M. Only the registers named here and the
        // flags (not preserved, as declared) change; no stack. SXTB16/SADD16 exist on every
        // ARMv7E-M core, the only targets of `dsp`.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldr {bytes}, [{src}], #4",
                "sxtb16 {even}, {bytes}",
                "sxtb16 {odd}, {bytes}, ror #8",
                "sadd16 {even}, {even}, {offsets}",
                "sadd16 {odd}, {odd}, {offsets}",
                "strd {even}, {odd}, [{dst}], #8",
                "subs {n}, {n}, #1",
                "bne 2b",
                src = inout(reg) src.as_ptr() => _,
                dst = inout(reg) dst.as_mut_ptr() => _,
                n = inout(reg) quads => _,
                offsets = in(reg) offsets,
                bytes = out(reg) _,
                even = out(reg) _,
                odd = out(reg) _,
                options(nostack),
            );
        }
    } else {
        for (d, x) in dst
            .as_chunks_mut::<4>()
            .0
            .iter_mut()
            .zip(src.as_chunks::<4>().0)
        {
            let [even, odd] = widen_four(word(x), offsets);
            *d = [
                even as i16,
                (even >> 16) as i16,
                odd as i16,
                (odd >> 16) as i16,
            ];
        }
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
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `conv2d_avx2` only requires the CPU to support AVX2, checked just above.
        return unsafe { conv2d_avx2(params, input, weights, bias, requant, output) };
    }
    conv2d_patches(params, input, weights, bias, requant, output, (gather, dot))
}

/// A convolution's OHWI filters repacked on the host for [`conv2d_packed`]: per block of eight
/// output channels and per pair of patch positions `(2j, 2j + 1)`, the eight channels' two
/// weights as int16 — one 256-bit row that `vpmaddwd` multiplies with the pair broadcast.
/// Built once per model (the blob stays the microcontroller's format; this is host memory).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[derive(Debug, Clone)]
pub struct PackedFilters {
    channels: usize,
    len: usize,
    pairs: usize,
    data: Vec<i16>,
    /// Per block of eight channels, when every channel of the layer scales down (a right
    /// shift): bias, multiplier, `2^e + 1` and `e − 1` per lane, for the vector
    /// requantisation. `None`: the scalar one.
    requant: Option<Vec<[[i32; 8]; 4]>>,
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
impl PackedFilters {
    /// Output channels of a block.
    const LANES: usize = 8;

    /// Repacks `channels` filters of `weights.len() / channels` values each, with their bias
    /// and requantisation; `None` when the lengths do not describe `channels` filters.
    pub fn new(
        weights: &[i8],
        channels: usize,
        bias: &[i32],
        requant: PerChannelRequant<'_>,
    ) -> Option<Self> {
        if channels == 0
            || !weights.len().is_multiple_of(channels)
            || bias.len() != channels
            || requant.multipliers.len() != channels
            || requant.shifts.len() != channels
        {
            return None;
        }
        let len = weights.len() / channels;
        let pairs = len.div_ceil(2);
        let blocks = channels.div_ceil(Self::LANES);
        let mut data = vec![0_i16; blocks * pairs * 2 * Self::LANES];
        for (c, filter) in weights.chunks_exact(len).enumerate() {
            let (block, lane) = (c / Self::LANES, c % Self::LANES);
            for (k, &w) in filter.iter().enumerate() {
                data[(block * pairs + k / 2) * 2 * Self::LANES + 2 * lane + k % 2] = i16::from(w);
            }
        }
        let right_shifts = requant.shifts.iter().all(|&s| (-31..0).contains(&s));
        let requant = right_shifts.then(|| {
            (0..blocks)
                .map(|block| {
                    // Per lane (bias, multiplier, 2^e + 1, e − 1); lanes past the last channel
                    // get multiplier 0 and a shift of 1 (harmless, never stored).
                    let lane = |lane: usize| {
                        let c = block * Self::LANES + lane;
                        if c >= channels {
                            return [0, 0, 3, 0];
                        }
                        let (rounding, high_shift) =
                            crate::arith::right_shift_constants(requant.shifts[c].unsigned_abs());
                        [
                            bias[c],
                            requant.multipliers[c],
                            rounding as i32,
                            high_shift as i32,
                        ]
                    };
                    let per_lane: [[i32; 4]; 8] = core::array::from_fn(lane);
                    core::array::from_fn(|field| per_lane.map(|l| l[field]))
                })
                .collect()
        });
        Some(PackedFilters {
            channels,
            len,
            pairs,
            data,
            requant,
        })
    }

    /// Whether this packing was made from these filters' shape and constants.
    fn matches(&self, p: &ConvParams, bias: &[i32], requant: &PerChannelRequant<'_>) -> bool {
        let Some(lanes) = &self.requant else {
            return self.channels == p.output_channels;
        };
        self.channels == p.output_channels
            && (0..self.channels).all(|c| {
                let block = &lanes[c / Self::LANES];
                let lane = c % Self::LANES;
                let (rounding, high_shift) = if requant.shifts[c] < 0 {
                    crate::arith::right_shift_constants(requant.shifts[c].unsigned_abs())
                } else {
                    (0, u32::MAX)
                };
                block[0][lane] == bias[c]
                    && block[1][lane] == requant.multipliers[c]
                    && block[2][lane] == rounding as i32
                    && block[3][lane] == high_shift as i32
            })
    }
}

/// [`conv2d`] with filters repacked by [`PackedFilters`], bit for bit equal to
/// [`conv2d_reference`]: per output pixel the patch is gathered once (as in [`conv2d`]), then
/// every block of eight output channels accumulates vertically — per pair of patch values one
/// broadcast, one `vpmaddwd` (16 MACs) and one add, with no horizontal sums — and the eight
/// results are requantised. Falls back to [`conv2d`] without AVX2 or when the packing does not
/// match the layer.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub fn conv2d_packed(
    params: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(false, input, weights, bias, &requant, output)?;
    let p = params;
    let fits = packed.matches(p, bias, &requant)
        && packed.len == p.kernel * p.kernel * p.input_channels
        && packed.len <= PATCH_MAX
        && (-255..=255).contains(&p.input_offset);
    if !fits || !std::is_x86_feature_detected!("avx2") {
        return conv2d(params, input, weights, bias, requant, output);
    }
    #[allow(unsafe_code)]
    // SAFETY: `conv2d_packed_avx2` only requires the CPU to support AVX2, checked just above.
    unsafe {
        conv2d_packed_avx2(p, input, packed, bias, requant, output);
    }
    Ok(())
}

/// The body of [`conv2d_packed`] (shapes checked by the caller).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn conv2d_packed_avx2(
    p: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) {
    use core::arch::x86_64::*;
    const LANES: usize = PackedFilters::LANES;
    // Heap, sized to the layer (this is the host): zeroing a PATCH_MAX stack buffer per layer
    // cost more than the allocation. int32 storage, viewed as int16, so the pairs are aligned.
    // Even length: an odd filter's last pair ends in a zero weight and a zero value.
    let mut patch_pairs = vec![0_i32; packed.pairs];
    let patch: &mut [i16] = bytemuck::cast_slice_mut(&mut patch_pairs);
    let offset = p.input_offset as i16;
    let block_len = packed.pairs * 2 * LANES;
    let out_len = p.output_channels;
    let mut sums = [0_i32; LANES];
    // The vector requantisation adds the offset without saturating: exact while |offset| is
    // far below the ±2^30 a requantised value can reach.
    let small_offset = p.output_offset.unsigned_abs() <= 1 << 16;
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            gather_patch(p, input, (oy, ox), &mut patch[..packed.len], |dst, src| {
                gather_avx2(dst, src, offset)
            });
            let pairs: &[i32] = bytemuck::cast_slice(&patch[..]);
            let out = &mut output[(oy * p.output_width + ox) * out_len..][..out_len];
            for (block, filters) in packed.data.chunks_exact(block_len).enumerate() {
                let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                let rows = filters.as_chunks::<{ 2 * LANES }>().0;
                // Two accumulators: the adds of consecutive pairs do not wait on each other.
                let mut chunks = pairs.chunks_exact(2).zip(rows.chunks_exact(2));
                for (two, rows) in chunks.by_ref() {
                    #[allow(unsafe_code)]
                    // SAFETY: each row is 16 int16 (32 bytes) read in place; unaligned loads.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_loadu_si256(rows[0].as_ptr().cast()),
                            _mm256_loadu_si256(rows[1].as_ptr().cast()),
                        )
                    };
                    // |x + offset| ≤ 383 and |w| ≤ 128: each lane's pair sum fits int32.
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(two[0]), w0));
                    odd = _mm256_add_epi32(odd, _mm256_madd_epi16(_mm256_set1_epi32(two[1]), w1));
                }
                if pairs.len() % 2 == 1 {
                    let (last, row) = (pairs[pairs.len() - 1], &rows[rows.len() - 1]);
                    #[allow(unsafe_code)]
                    // SAFETY: a 16-value row read in place; unaligned load.
                    let w = unsafe { _mm256_loadu_si256(row.as_ptr().cast()) };
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(last), w));
                }
                let sum = _mm256_add_epi32(even, odd);
                let first = block * LANES;
                if let (Some(lanes), true) = (
                    packed.requant.as_ref().and_then(|r| r.get(block)),
                    small_offset,
                ) {
                    let values = requantize_lanes_avx2(sum, lanes, clamp);
                    for (o, &v) in out[first..].iter_mut().zip(&values) {
                        *o = v as i8;
                    }
                    continue;
                }
                #[allow(unsafe_code)]
                // SAFETY: `sums` is 8 int32 (32 bytes); unaligned store.
                unsafe {
                    _mm256_storeu_si256(sums.as_mut_ptr().cast(), sum);
                }
                for (lane, &sum) in sums.iter().enumerate().take(out_len - first) {
                    let oc = first + lane;
                    out[oc] = p.finish(
                        bias[oc].wrapping_add(sum),
                        requant.multipliers[oc],
                        requant.shifts[oc],
                    );
                }
            }
        }
    }
}

/// [`ConvParams::finish`] for eight channels at once with the prepared right-shift
/// constants (`lanes`: bias, multiplier, `2^e + 1`, `e − 1`): the formula of
/// [`crate::arith::multiply_by_quantized_multiplier_prepared`] in 64-bit lanes (`vpmuldq` on
/// the even and the odd channels), then offset and clamp. Equal to the scalar path for every
/// input (`vector_requantisation_equals_the_scalar_one`).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
pub(crate) fn requantize_lanes_avx2(
    sum: core::arch::x86_64::__m256i,
    lanes: &[[i32; 8]; 4],
    (offset, low, high): (i32, i32, i32),
) -> [i32; 8] {
    use core::arch::x86_64::*;
    #[allow(unsafe_code)]
    // SAFETY: each `lanes` row is 8 int32 (32 bytes), read in place; unaligned loads.
    let [bias, multiplier, rounding, high_shift] =
        lanes.map(|row| unsafe { _mm256_loadu_si256(row.as_ptr().cast()) });
    let x = _mm256_add_epi32(sum, bias);
    // q = (2^e + 1) − 2n, n = 1 where x and m differ in sign (as unsigned 32-bit values).
    let differ = _mm256_srai_epi32::<31>(_mm256_xor_si256(x, multiplier));
    let q = _mm256_add_epi32(rounding, _mm256_slli_epi32::<1>(differ));
    // x·m + q·2^30 in 64 bits, even channels in the low halves, odd ones shifted down.
    let low_words = _mm256_set1_epi64x(0xFFFF_FFFF);
    let even = _mm256_add_epi64(
        _mm256_mul_epi32(x, multiplier),
        _mm256_slli_epi64::<30>(_mm256_and_si256(q, low_words)),
    );
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(
            _mm256_srli_epi64::<32>(x),
            _mm256_srli_epi64::<32>(multiplier),
        ),
        _mm256_slli_epi64::<30>(_mm256_srli_epi64::<32>(q)),
    );
    // The high words: the even ones moved down into their channel's slot, the odd ones
    // already there.
    let high_words = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
    let scaled = _mm256_srav_epi32(high_words, high_shift);
    let out = _mm256_min_epi32(
        _mm256_max_epi32(
            _mm256_add_epi32(scaled, _mm256_set1_epi32(offset)),
            _mm256_set1_epi32(low),
        ),
        _mm256_set1_epi32(high),
    );
    let mut values = [0_i32; 8];
    #[allow(unsafe_code)]
    // SAFETY: `values` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        _mm256_storeu_si256(values.as_mut_ptr().cast(), out);
    }
    values
}

/// [`conv2d_patches`] compiled for AVX2 (16 int16 MACs per `vpmaddwd` instead of SSE2's 8):
/// the host build targets baseline x86-64, so the wider code is chosen at run time.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn conv2d_avx2(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    conv2d_patches(
        params,
        input,
        weights,
        bias,
        requant,
        output,
        (|d, s, o| gather_avx2(d, s, o), |p, f| dot_avx2(p, f)),
    )
}

/// The patch-gathering body of [`conv2d`] (shapes already checked), with the gather and dot
/// product of the CPU it runs on.
#[inline(always)]
fn conv2d_patches(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
    (gather, dot): (
        impl Fn(&mut [i16], &[i8], i16),
        impl Fn(&[i16], &[i8]) -> i32,
    ),
) -> Result<(), KernelError> {
    let p = params;
    let cin = p.input_channels;
    let filter_len = p.kernel * p.kernel * cin;
    if filter_len > PATCH_MAX || !(-255..=255).contains(&p.input_offset) {
        return conv2d_reference(params, input, weights, bias, requant, output);
    }
    // Word-aligned: the DSP loop reads the patch with LDRD.
    #[repr(align(8))]
    struct Patch([i16; PATCH_MAX]);
    let mut patch_buffer = Patch([0; PATCH_MAX]);
    let offset = p.input_offset as i16;
    // Whole groups of four channels per position: gathered straight into the DSP order.
    #[cfg(feature = "dsp")]
    let swapped_gather = cin.is_multiple_of(4);
    let fill = |oy: usize, ox: usize, patch: &mut [i16]| {
        // A padded patch (see `work_len` below) ends in zeros.
        let filled = filter_len.min(patch.len());
        patch[filled..].fill(0);
        gather_patch(p, input, (oy, ox), &mut patch[..filled], |dst, src| {
            #[cfg(feature = "dsp")]
            if swapped_gather {
                return gather_swapped(dst, src, offset);
            }
            gather(dst, src, offset)
        });
        // The DSP dot product pairs the patch's elements (0, 2) and (1, 3) of every four
        // (of the padded length too).
        #[cfg(feature = "dsp")]
        if !swapped_gather {
            patch.chunks_exact_mut(4).for_each(|four| four.swap(1, 2));
        }
    };
    let out_len = p.output_channels;
    #[cfg(feature = "dsp")]
    {
        // Filters whose length is not a multiple of eight (the 3-channel stem: 27) are copied
        // once per layer into a stack buffer, each padded with zeros to a multiple of eight,
        // and the patches padded to match: the zeros add nothing, and the layer runs on the
        // two-pixel loop instead of a slow tail per channel.
        let mut padded_weights = [0_i8; PADDED_WEIGHTS_MAX];
        let (work_len, work_weights) = {
            let padded_len = filter_len.next_multiple_of(8);
            match padded_weights.get_mut(..out_len * padded_len) {
                Some(padded) if padded_len != filter_len && 2 * padded_len <= PATCH_MAX => {
                    for (to, from) in padded
                        .chunks_exact_mut(padded_len)
                        .zip(weights.chunks_exact(filter_len))
                    {
                        to[..filter_len].copy_from_slice(from);
                    }
                    (padded_len, &*padded)
                }
                _ => (filter_len, weights),
            }
        };
        // Two pixels per pass when both patches fit the buffer and need no tail.
        let in_pairs = (swapped_gather || work_len != filter_len)
            && work_len.is_multiple_of(8)
            && 2 * work_len <= PATCH_MAX;
        // Output channels in blocks, each with its requantisation constants prepared once
        // (one block for every layer up to CHANNEL_BLOCK channels).
        let mut table = [ChannelConstants::default(); CHANNEL_BLOCK];
        for block_start in (0..out_len).step_by(CHANNEL_BLOCK) {
            let block_len = CHANNEL_BLOCK.min(out_len - block_start);
            let table = &mut table[..block_len];
            for (c, entry) in table.iter_mut().enumerate() {
                let oc = block_start + c;
                *entry =
                    ChannelConstants::new(bias[oc], requant.multipliers[oc], requant.shifts[oc]);
            }
            let table = &*table;
            let block_weights = &work_weights[block_start * work_len..][..block_len * work_len];
            for oy in 0..p.output_height {
                let out_row =
                    &mut output[oy * p.output_width * out_len..][..p.output_width * out_len];
                let mut ox = 0;
                while ox < p.output_width {
                    if in_pairs && ox + 1 < p.output_width {
                        let (patch_a, rest) = patch_buffer.0.split_at_mut(work_len);
                        let patch_b = &mut rest[..work_len];
                        fill(oy, ox, patch_a);
                        fill(oy, ox + 1, patch_b);
                        let (out_a, out_b) = out_row[ox * out_len..]
                            [..out_len + block_start + block_len]
                            .split_at_mut(out_len);
                        let out_a = &mut out_a[block_start..][..block_len];
                        let out_b = &mut out_b[block_start..][..block_len];
                        if conv_pixel_pair_dsp(
                            p,
                            (patch_a, patch_b),
                            block_weights,
                            table,
                            (out_a, out_b),
                            &dot,
                        ) {
                            ox += 2;
                            continue;
                        }
                    }
                    let patch = &mut patch_buffer.0[..work_len];
                    fill(oy, ox, patch);
                    let out = &mut out_row[ox * out_len + block_start..][..block_len];
                    conv_pixel_dsp(p, patch, block_weights, table, out, &dot);
                    ox += 1;
                }
            }
        }
    }
    #[cfg(not(feature = "dsp"))]
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            let patch = &mut patch_buffer.0[..filter_len];
            fill(oy, ox, patch);
            let out = &mut output[(oy * p.output_width + ox) * out_len..][..out_len];
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
    Ok(())
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
        row[..first * cin].fill(0);
        row[first * cin + inside..].fill(0);
        // Column of the first inside position: left + first − padding ≥ 0.
        let ix = left + first - p.padding;
        gather(
            &mut row[first * cin..][..inside],
            &input[(iy * p.input_width + ix) * cin..][..inside],
        );
    }
}

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
    let c = p.output_channels;
    let mut taps = [(0_usize, 0_usize); DEPTHWISE_WINDOW_MAX * DEPTHWISE_WINDOW_MAX];
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            let mut n = 0;
            for ((ky, kx), (iy, ix)) in p.window(oy, ox) {
                taps[n] = ((iy * p.input_width + ix) * c, (ky * p.kernel + kx) * c);
                n += 1;
            }
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
    use crate::arith::quantize_multiplier;
    use crate::testutil::Lcg;

    struct Case {
        p: ConvParams,
        input: Vec<i8>,
        weights: Vec<i8>,
        bias: Vec<i32>,
        mults: Vec<i32>,
        shifts: Vec<i32>,
    }

    #[allow(clippy::too_many_arguments)] // one argument per geometry parameter
    fn case(
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
            let rq = PerChannelRequant {
                multipliers: &c.mults,
                shifts: &c.shifts,
            };
            let n = c.p.output_height * c.p.output_width * cout;
            let (mut fast, mut reference) = (vec![0; n], vec![0; n]);
            conv2d(&c.p, &c.input, &c.weights, &c.bias, rq, &mut fast).unwrap();
            conv2d_reference(&c.p, &c.input, &c.weights, &c.bias, rq, &mut reference).unwrap();
            assert_eq!(fast, reference, "case {seed}");
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
        ] {
            let c = case(seed, h, w, cin, cout, k, s, pad);
            let rq = PerChannelRequant {
                multipliers: &c.mults,
                shifts: &c.shifts,
            };
            let n = c.p.output_height * c.p.output_width * cout;
            let (mut fast, mut reference) = (vec![0; n], vec![0; n]);
            let packed = PackedFilters::new(&c.weights, cout, &c.bias, rq).unwrap();
            conv2d_packed(&c.p, &c.input, &packed, &c.weights, &c.bias, rq, &mut fast).unwrap();
            conv2d_reference(&c.p, &c.input, &c.weights, &c.bias, rq, &mut reference).unwrap();
            assert_eq!(fast, reference, "case {seed}");
        }
        // A packing that does not match the layer is not used: the result is still right.
        let c = case(17, 6, 6, 4, 6, 3, 1, 1);
        let rq = PerChannelRequant {
            multipliers: &c.mults,
            shifts: &c.shifts,
        };
        let n = c.p.output_height * c.p.output_width * 6;
        let other = PackedFilters::new(
            &c.weights[..c.weights.len() / 2],
            3,
            &c.bias[..3],
            PerChannelRequant {
                multipliers: &c.mults[..3],
                shifts: &c.shifts[..3],
            },
        )
        .unwrap();
        let (mut fast, mut reference) = (vec![0; n], vec![0; n]);
        conv2d_packed(&c.p, &c.input, &other, &c.weights, &c.bias, rq, &mut fast).unwrap();
        conv2d_reference(&c.p, &c.input, &c.weights, &c.bias, rq, &mut reference).unwrap();
        assert_eq!(fast, reference);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_requantisation_equals_the_scalar_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("SKIP: no AVX2 on this CPU");
            return;
        }
        let p = ConvParams {
            input_height: 1,
            input_width: 1,
            input_channels: 1,
            output_height: 1,
            output_width: 1,
            output_channels: 8,
            kernel: 1,
            stride: 1,
            padding: 0,
            input_offset: 0,
            output_offset: 0,
            activation_min: -128,
            activation_max: 127,
        };
        let mut state = 0x0123_4567_89AB_CDEF_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 32) as i32
        };
        for round in 0..20_000 {
            let bias: [i32; 8] = core::array::from_fn(|_| next() >> 8);
            let multipliers: [i32; 8] = core::array::from_fn(|_| next());
            let shifts: [i32; 8] = core::array::from_fn(|_| -1 - (next().rem_euclid(31)));
            let sums: [i32; 8] = core::array::from_fn(|lane| match round % 4 {
                0 => next(),
                1 => next() >> 12,
                2 => [
                    i32::MIN,
                    i32::MAX,
                    0,
                    -1,
                    1,
                    i32::MIN + 1,
                    1 << 30,
                    -(1 << 30),
                ][lane],
                _ => next() >> 20,
            });
            let (offset, low, high) = (next() % 200, -128 + next().rem_euclid(100), 127);
            let rq = PerChannelRequant {
                multipliers: &multipliers,
                shifts: &shifts,
            };
            let packed = PackedFilters::new(&[1; 8], 8, &bias, rq).unwrap();
            let lanes = &packed.requant.as_ref().unwrap()[0];
            #[allow(unsafe_code)]
            // SAFETY: AVX2 checked above; `sums` is 8 int32.
            let got = unsafe {
                requantize_lanes_avx2(
                    core::arch::x86_64::_mm256_loadu_si256(sums.as_ptr().cast()),
                    lanes,
                    (offset, low, high),
                )
            };
            let q = ConvParams {
                output_offset: offset,
                activation_min: low as i8,
                activation_max: high as i8,
                ..p
            };
            for lane in 0..8 {
                let want = q.finish(
                    bias[lane].wrapping_add(sums[lane]),
                    multipliers[lane],
                    shifts[lane],
                );
                assert_eq!(got[lane] as i8, want, "round {round} lane {lane}");
            }
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
    fn fast_depthwise_equals_the_reference_bit_for_bit() {
        for (seed, h, w, ch, k, s, pad) in [
            (1, 9, 7, 5, 3, 1, 1),
            (2, 8, 8, 4, 3, 2, 1),
            (3, 6, 5, 3, 5, 1, 2),
            (4, 12, 12, 2, 9, 2, 4),
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

    #[test]
    fn rejects_inconsistent_shapes_without_panicking() {
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
