//! The direct engine's convolution kernels on aarch64 with NEON (the baseline of every aarch64
//! Linux CPU, the Jetsons' Cortex-A78AE included): the x86-64 register tile with 128-bit
//! registers. A tile of output pixels × one block of 8 or 16 output channels accumulates
//! `broadcast(input) × weight vector` with fused multiply-adds (`LD1R` + `FMLA`), bias, residual
//! and ReLU applied as it is stored; the depthwise convolution runs tiles of a row's pixels ×
//! four channels. Equal to `conv_reference` up to the order of the fp32 additions (tests in the
//! parent module, run under qemu-aarch64 in CI).
//!
//! Tile sizes fill the 32 vector registers: 16-channel blocks as six pixels × four registers
//! (24 accumulators, four weight registers), 8-channel blocks as twelve pixels × two; each
//! broadcast input then feeds four or two FMAs, each weight vector six or twelve.
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw pointers into
//! the bordered buffers; every block with a `// SAFETY:` line). Compiled only where the build
//! enables NEON (the parent's `cfg`); its entry points check the packing and the buffers
//! themselves and return `false` (ran nothing) where they do not fit.
#![allow(unsafe_code)]

use core::arch::aarch64::*;

use super::{raster_tiles, row_tiles, tile_coords, Block, ConvGeometry, Job};

/// Output pixels per tile of a 16-channel block (four registers each).
const PIXELS_16: usize = 6;
/// Output pixels per tile of an 8-channel block (two registers each).
const PIXELS_8: usize = 12;
/// Output pixels per depthwise tile: independent FMA chains hide the FMA latency.
const DEPTHWISE_PIXELS: usize = 8;

/// Whether the NEON kernels run: always, where this module is compiled.
pub(super) fn available() -> bool {
    true
}

/// Runs a packed (not depthwise) convolution of 8- or 16-channel blocks. `false`: nothing ran
/// (another block size, or buffers that do not match the geometry).
pub(super) fn conv(job: &mut Job<'_>) -> bool {
    let (packed, out, rows) = (job.packed, job.g.output, job.rows.clone());
    let fits = !packed.depthwise && job.fits();
    if !(fits && matches!(packed.block, 8 | 16)) {
        return false;
    }
    let per_block = packed.taps.len() * packed.block;
    let tile = if packed.block == 16 {
        PIXELS_16
    } else {
        PIXELS_8
    };
    for (b, weights) in packed.weights.chunks_exact(per_block).enumerate() {
        let channel = b * packed.block;
        let block = Block::new(job, weights, channel);
        raster_tiles(out, rows.clone(), tile, |first, n| {
            // SAFETY: the block is 8 or 16 channels and the buffers and rows fit the geometry
            // (both checked above), which is all the tile's pointer arithmetic assumes besides
            // the packing `PackedConv` builds; pixels `first..first + n` exist.
            unsafe { dispatch(&block, packed.block, first, n) }
        });
    }
    true
}

/// Calls the tile kernel monomorphised for `channels / 4` registers and `n` pixels.
///
/// # Safety
/// As [`tile`]; `channels` is the packed block (8 or 16) and `n` ≤ its tile size.
unsafe fn dispatch(block: &Block<'_>, channels: usize, first: usize, n: usize) {
    macro_rules! arms {
        ($regs:literal; $($n:literal)*) => {
            match n {
                // SAFETY: forwarded contract.
                $($n => unsafe { tile::<$regs, $n>(block, first) },)*
                _ => unreachable!("tile of {n} pixels"),
            }
        };
    }
    if channels == 16 {
        arms!(4; 1 2 3 4 5 6)
    } else {
        arms!(2; 1 2 3 4 5 6 7 8 9 10 11 12)
    }
}

/// `P` output pixels (raster order from `first`, crossing rows freely) × `R` registers of four
/// channels.
///
/// # Safety
/// Buffer lengths match the block's geometry; pixels `first..first + P` exist; `4R` is the
/// packed block and `b.weights` its `taps.len() × 4R` weights.
#[inline(always)]
unsafe fn tile<const R: usize, const P: usize>(b: &Block<'_>, first: usize) {
    let g = b.g;
    let coords = tile_coords::<P>(first, g.output[1]);
    let mut src = [b.input; P];
    for p in 0..P {
        // SAFETY: `input_offset` of an existing output pixel is inside the input buffer (its
        // border covers the padding), as is every tap offset from it.
        src[p] = unsafe { b.input.add(g.input_offset(coords[p].0, coords[p].1)) };
    }
    let mut acc = [[vdupq_n_f32(0.0); R]; P];
    for r in 0..R {
        // SAFETY: the bias has `out_c` values and the block's channels are within them.
        let bias = unsafe { vld1q_f32(b.bias.add(4 * r)) };
        for a in acc.iter_mut() {
            a[r] = bias;
        }
    }
    let mut w = b.weights;
    for &tap in b.taps {
        let mut wv = [vdupq_n_f32(0.0); R];
        for (r, v) in wv.iter_mut().enumerate() {
            // SAFETY: the block's weights are `taps.len() × 4R` floats; `w` advances 4R per tap.
            *v = unsafe { vld1q_f32(w.add(4 * r)) };
        }
        // SAFETY: as above (one past the end at most after the last tap).
        w = unsafe { w.add(4 * R) };
        for p in 0..P {
            // SAFETY: a tap of an existing output pixel (see `src`).
            let x = unsafe { vld1q_dup_f32(src[p].add(tap)) };
            for r in 0..R {
                acc[p][r] = vfmaq_f32(acc[p][r], x, wv[r]);
            }
        }
    }
    for (&(y, x), pixel) in coords.iter().zip(&acc) {
        let at = ConvGeometry::offset(g.output, g.output_border, y, x) - b.output_base + b.channel;
        let residual_at = b.residual.map(|(res, border)| {
            (
                res,
                ConvGeometry::offset(g.output, border, y, x) + b.channel,
            )
        });
        for (r, &sum) in pixel.iter().enumerate() {
            // SAFETY: pixel `(y, x)`'s channels `channel..channel + 4R` are within the output
            // buffer (`channel + 4R ≤ out_c`), and within the residual buffer, which has the
            // output's size with its own border.
            unsafe {
                store(
                    b,
                    b.output.add(at + 4 * r),
                    sum,
                    residual_at.map(|(res, ra)| res.add(ra + 4 * r)),
                )
            };
        }
    }
}

/// Stores four channels: `relu?(sum + residual?)`.
///
/// # Safety
/// `out` and `residual` point at four floats inside their buffers.
#[inline(always)]
unsafe fn store(b: &Block<'_>, out: *mut f32, sum: float32x4_t, residual: Option<*const f32>) {
    let mut v = sum;
    if let Some(res) = residual {
        // SAFETY: the caller's contract.
        v = vaddq_f32(v, unsafe { vld1q_f32(res) });
    }
    if b.relu {
        v = vmaxq_f32(v, vdupq_n_f32(0.0));
    }
    // SAFETY: the caller's contract.
    unsafe { vst1q_f32(out, v) };
}

/// Runs a packed depthwise convolution whose channels are a multiple of four. `false`: nothing
/// ran (not depthwise, another channel count, or buffers that do not match the geometry).
pub(super) fn depthwise(job: &mut Job<'_>) -> bool {
    let (packed, out, rows) = (job.packed, job.g.output, job.rows.clone());
    let c = out[2];
    let fits = packed.depthwise && job.fits();
    if !(fits && c.is_multiple_of(4)) {
        return false;
    }
    for channel in (0..c).step_by(4) {
        let block = Block::new(job, &packed.weights[channel..], channel);
        row_tiles(out, rows.clone(), DEPTHWISE_PIXELS, |y, x, n| {
            macro_rules! arms {
                ($($n:literal)*) => {
                    match n {
                        // SAFETY: depthwise packing and buffer lengths checked above; pixels
                        // `(y, x..x + n)` exist; `channel + 4 ≤ c`.
                        $($n => unsafe { depthwise_tile::<$n>(&block, y, x) },)*
                        _ => unreachable!("tile of {n} pixels"),
                    }
                };
            }
            arms!(1 2 3 4 5 6 7 8)
        });
    }
    true
}

/// `P` output pixels of row `y` from column `x` × the four channels from `b.channel` of a
/// depthwise convolution.
///
/// # Safety
/// Buffer lengths match the depthwise geometry; pixels `(y, x..x + P)` exist; `b.weights`
/// points at the block's first channel of a `[tap][channel]` array; `b.channel + 4 ≤ c`.
#[inline(always)]
unsafe fn depthwise_tile<const P: usize>(b: &Block<'_>, y: usize, x: usize) {
    let g = b.g;
    let c = g.output[2];
    let step = g.stride * g.input[2];
    // SAFETY: pixel `(y, x)`'s first tap is inside the bordered input, as are those of the next
    // `P − 1` pixels of the row, `step` apart; channel `b.channel` too.
    let src = unsafe { b.input.add(g.input_offset(y, x) + b.channel) };
    // SAFETY: the bias has `c` values; `b.channel + 4 ≤ c`.
    let mut acc = [unsafe { vld1q_f32(b.bias) }; P];
    for (t, &tap) in b.taps.iter().enumerate() {
        // SAFETY: tap `t`'s weights start at `t · c` (+ the block's channel, in `b.weights`).
        let w = unsafe { vld1q_f32(b.weights.add(t * c)) };
        for (p, a) in acc.iter_mut().enumerate() {
            // SAFETY: a tap of an existing output pixel, four channels within the pixel.
            let v = unsafe { vld1q_f32(src.add(p * step + tap)) };
            *a = vfmaq_f32(*a, v, w);
        }
    }
    let at = ConvGeometry::offset(g.output, g.output_border, y, x) - b.output_base + b.channel;
    let residual_at = b.residual.map(|(res, border)| {
        (
            res,
            ConvGeometry::offset(g.output, border, y, x) + b.channel,
        )
    });
    for (p, &sum) in acc.iter().enumerate() {
        // SAFETY: pixel `(y, x + p)`'s channels `channel..channel + 4` are in the output, and in
        // the residual buffer (the output's size with its own border); the row's pixels are `c`
        // apart.
        unsafe {
            store(
                b,
                b.output.add(at + p * c),
                sum,
                residual_at.map(|(res, ra)| res.add(ra + p * c)),
            )
        };
    }
}
