//! The convolution's Cortex-M4/M7 path (feature `dsp`, ARMv7E-M only): `SXTB16` + `SMLAD`
//! (two 16-bit multiply-accumulates per instruction) in inline assembly — the firmware's only
//! kernel `unsafe` — two output pixels × two output channels per pass, requantisation constants
//! prepared once per layer. Every function here is bit for bit equal to the generic reference
//! (`conv2d_reference`): the QEMU golden run and the device's start-up kernel check compare
//! them (the host cannot run this code).
//!
//! One of the per-architecture files where `unsafe` is allowed (the inline assembly; every
//! block with a `// SAFETY:` line). Compiled only for `dsp` builds, which target ARMv7E-M, so
//! its safe entry point needs no run-time check.
#![allow(unsafe_code)]

use super::{conv2d_reference, gather_patch, gather_portable, ConvParams, PATCH_MAX};
use crate::arith::multiply_by_quantized_multiplier;
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

/// The convolution on the DSP path ([`conv2d`](super::conv2d) on a `dsp` build; shapes
/// already checked), bit for bit equal to [`conv2d_reference`]. Per output pixel the receptive
/// field is gathered once into a word-aligned patch of `x + offset` int16 values in the order
/// `SXTB16` produces (0, 2, 1, 3 in every four); pairs of pixels then run
/// [`conv_pixel_pair_dsp`], a row's odd last pixel [`conv_pixel_dsp`].
pub(super) fn conv2d_dsp(
    p: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    let cin = p.input_channels;
    let filter_len = p.kernel * p.kernel * cin;
    if filter_len > PATCH_MAX || !(-255..=255).contains(&p.input_offset) {
        return conv2d_reference(p, input, weights, bias, requant, output);
    }
    // Word-aligned: the loops read the patch with LDRD.
    #[repr(align(8))]
    struct Patch([i16; PATCH_MAX]);
    let mut patch_buffer = Patch([0; PATCH_MAX]);
    let offset = p.input_offset as i16;
    // Whole groups of four channels per position: gathered straight into the DSP order.
    let swapped_gather = cin.is_multiple_of(4);
    let fill = |oy: usize, ox: usize, patch: &mut [i16]| {
        // A padded patch (see `work_len` below) ends in zeros.
        let filled = filter_len.min(patch.len());
        patch[filled..].fill(0);
        gather_patch(p, input, (oy, ox), &mut patch[..filled], |dst, src| {
            if swapped_gather {
                gather_swapped(dst, src, offset)
            } else {
                gather_portable(dst, src, offset)
            }
        });
        // The dot products pair the patch's elements (0, 2) and (1, 3) of every four (of the
        // padded length too).
        if !swapped_gather {
            patch.chunks_exact_mut(4).for_each(|four| four.swap(1, 2));
        }
    };
    let out_len = p.output_channels;
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
            *entry = ChannelConstants::new(bias[oc], requant.multipliers[oc], requant.shifts[oc]);
        }
        let table = &*table;
        let block_weights = &work_weights[block_start * work_len..][..block_len * work_len];
        for oy in 0..p.output_height {
            let out_row = &mut output[oy * p.output_width * out_len..][..p.output_width * out_len];
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
                        dot,
                    ) {
                        ox += 2;
                        continue;
                    }
                }
                let patch = &mut patch_buffer.0[..work_len];
                fill(oy, ox, patch);
                let out = &mut out_row[ox * out_len + block_start..][..block_len];
                conv_pixel_dsp(p, patch, block_weights, table, out, dot);
                ox += 1;
            }
        }
    }
    Ok(())
}

impl ConvParams {
    /// [`ConvParams::finish`] with the bias and constants prepared per layer: equal to
    /// `finish(bias + acc, multiplier, shift)`.
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
}

/// Output channels whose requantisation constants the DSP path prepares at a time (2 KiB of
/// stack); a wider layer runs in blocks of this many channels.
const CHANNEL_BLOCK: usize = 128;

/// One output channel's bias and requantisation, prepared once per layer on the DSP path so
/// that each output costs one 64-bit multiply-add and a shift
/// ([`crate::arith::multiply_by_quantized_multiplier_prepared`]).
#[derive(Clone, Copy, Default)]
struct ChannelConstants {
    bias: i32,
    multiplier: i32,
    /// `2^e + 1` for a right shift by `e`; the shift itself when it is not a right shift.
    rounding: u32,
    /// `e − 1`, or [`ChannelConstants::GENERAL`]: requantise with the general form.
    high_shift: u32,
}

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
#[inline(never)]
#[cold]
fn requantize_general(x: i32, multiplier: i32, shift: i32) -> i32 {
    multiply_by_quantized_multiplier(x, multiplier, shift)
}

/// Bytes of padded filters the DSP path copies onto the stack for a layer whose `k·k·Cin` is
/// not a multiple of eight (the stem: 16 × 32 for a 3×3 kernel over 3 channels).
const PADDED_WEIGHTS_MAX: usize = 2048;

/// [`dot`] with the Cortex-M4/M7 DSP extension (feature `dsp`, ARMv7E-M only): per four
/// filter bytes, one word load, two `SXTB16` (sign-extending bytes 0, 2 and 1, 3 into 16-bit
/// halves) and two `SMLAD` (two 16×16 multiply-accumulates each). The patch holds each group of
/// four as (0, 2, 1, 3) — [`conv2d_dsp`] gathers it so — to match the halves `SXTB16`
/// produces.
/// Integer results are identical to the portable [`dot`] (the QEMU golden test checks).
#[inline(always)]
pub(super) fn dot(patch: &[i16], filter: &[i8]) -> i32 {
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
#[inline(always)]
fn dot_pixels(a: &[i16], b: &[i16], filters: &[i8]) -> (i32, i32, i32, i32) {
    if !dot_pixels_fits(a, b, filters) {
        return (0, 0, 0, 0);
    }
    let len = a.len();
    let (mut a0a, mut a1a, mut a0b, mut a1b) = (0_i32, 0_i32, 0_i32, 0_i32);
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
/// 4-byte aligned (`LDRD` faults otherwise): [`conv2d_dsp`]'s buffer is.
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
#[inline(always)]
fn widen_four(bytes: u32, offsets: u32) -> [u32; 2] {
    let (even, odd): (u32, u32);
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
#[inline(always)]
fn gather_swapped(dst: &mut [i16], src: &[i8], offset: i16) {
    let offsets = u32::from(offset as u16) * 0x0001_0001;
    let quads = src.len().min(dst.len()) / 4;
    let word = |x: &[i8; 4]| u32::from_le_bytes(x.map(|b| b as u8));
    if quads > 0 && (dst.as_ptr() as usize).is_multiple_of(4) {
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
