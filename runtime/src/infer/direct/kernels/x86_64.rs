//! The direct engine's convolution kernels on x86-64: a register tile of output pixels × one
//! block of output channels with AVX2 + FMA (blocks of 8 or 16 channels, and the depthwise
//! convolution) or AVX-512 (blocks of 32 or 64), chosen at run time. Equal to
//! `conv_reference` up to the order of the fp32 additions (tests in the parent module).
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw pointers into
//! the bordered buffers; every block with a `// SAFETY:` line). Its entry points are safe: each
//! checks the CPU features, the packing and the buffer sizes itself and returns `false` (ran
//! nothing) where they do not fit.
#![allow(unsafe_code)]

use super::Job;

/// Whether this CPU runs the AVX2 + FMA kernels.
pub(super) fn available() -> bool {
    avx2::available()
}

/// Whether this CPU runs the AVX-512 kernel (so packing in blocks of 32 or 64 pays).
pub(super) fn wide_blocks_available() -> bool {
    avx512::available()
}

/// Runs a packed (not depthwise) convolution with the fastest kernel this CPU has for its
/// block size: AVX-512 for blocks of 32 or 64 channels, else [`conv_avx2`]. `false`: nothing
/// ran (no such CPU, another block size, or buffers that do not match the geometry).
pub(super) fn conv(job: &mut Job<'_>) -> bool {
    let fits = !job.packed.depthwise && job.fits();
    if fits && avx512::available() && matches!(job.packed.block, 32 | 64) {
        // SAFETY: the CPU has AVX-512F, the block is 32 or 64 channels (checked above); the
        // buffers and rows fit the geometry (checked above), which is all the kernel's
        // pointer arithmetic assumes besides the packing `PackedConv` builds.
        unsafe { avx512::conv(job) };
        return true;
    }
    conv_avx2(job)
}

/// Runs a packed convolution of 8- or 16-channel blocks with the AVX2 kernel (also for the
/// tests, whatever kernel [`conv`] would choose). `false`: nothing ran.
pub(super) fn conv_avx2(job: &mut Job<'_>) -> bool {
    let fits = !job.packed.depthwise && job.fits();
    if !(fits && avx2::available() && matches!(job.packed.block, 8 | 16)) {
        return false;
    }
    // SAFETY: the CPU has AVX2 and FMA, the block is 8 or 16 channels (checked above); the
    // buffers and rows fit the geometry (checked above), which is all the kernel's pointer
    // arithmetic assumes besides the packing `PackedConv` builds.
    unsafe { avx2::conv(job) };
    true
}

/// Runs a packed depthwise convolution with AVX2 + FMA. `false`: nothing ran (no such CPU, not
/// depthwise, or buffers that do not match the geometry).
pub(super) fn depthwise(job: &mut Job<'_>) -> bool {
    let fits = job.packed.depthwise && job.fits();
    if !(fits && avx2::available()) {
        return false;
    }
    // SAFETY: the CPU has AVX2 and FMA (checked above); the buffers and rows fit the geometry
    // (checked above), which is all the kernel's pointer arithmetic assumes besides the
    // depthwise packing `PackedConv::depthwise` builds.
    unsafe { avx2::depthwise(job) };
    true
}

/// The AVX2 + FMA kernels (raw pointers into bordered buffers).
mod avx2 {
    use core::arch::x86_64::*;

    use super::super::{raster_tiles, row_tiles, tile_coords, Block, ConvGeometry, Job};

    /// Output pixels per register tile: eight accumulators for 8-channel blocks, four pixels ×
    /// two registers for 16-channel blocks. Larger tiles (twelve and six, or twelve with
    /// AVX-512's 32 registers) measured no faster or slower: the kernel is bound by the loads
    /// of its broadcasts, not by the FMA latency more accumulators would hide.
    const PIXELS_8: usize = 8;
    const PIXELS_16: usize = 4;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    /// Output pixels per depthwise tile: eight independent FMA chains hide the FMA latency.
    const DEPTHWISE_PIXELS: usize = 8;

    /// A depthwise convolution: per group of eight channels, tiles of up to eight output pixels
    /// of a row accumulate one tap at a time, the tap's weight vector loaded
    /// once per tile. Channel counts that are not a multiple of eight run the plain loops.
    ///
    /// # Safety
    /// AVX2 and FMA available; the job fits ([`Job::fits`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn depthwise(job: &mut Job<'_>) {
        let (packed, out, rows) = (job.packed, job.g.output, job.rows.clone());
        let c = out[2];
        if !c.is_multiple_of(8) {
            return super::super::depthwise_packed(job);
        }
        for channel in (0..c).step_by(8) {
            let block = Block::new(job, &packed.weights[channel..], channel);
            row_tiles(out, rows.clone(), DEPTHWISE_PIXELS, |y, x, n| {
                macro_rules! arms {
                    ($($n:literal)*) => {
                        match n {
                            // SAFETY: the caller's contract; pixels `(y, x..x + n)` exist.
                            $($n => unsafe { depthwise_tile::<$n>(&block, y, x) },)*
                            _ => unreachable!("tile of {n} pixels"),
                        }
                    };
                }
                arms!(1 2 3 4 5 6 7 8)
            });
        }
    }

    /// `P` output pixels × the eight channels from `b.channel` of a depthwise convolution.
    ///
    /// # Safety
    /// As [`depthwise`]; pixels `first..first + P` exist; `b.weights` points at the block's
    /// first channel of a `[tap][channel]` array.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn depthwise_tile<const P: usize>(b: &Block<'_>, y: usize, x: usize) {
        let g = b.g;
        let c = g.output[2];
        let step = g.stride * g.input[2];
        // SAFETY: pixel `(y, x)`'s first tap is inside the bordered input, as are those of
        // the next `P − 1` pixels of the row, `step` apart; channel `b.channel` too.
        let src = unsafe { b.input.add(g.input_offset(y, x) + b.channel) };
        // SAFETY: the bias has `c` values; `b.channel + 8 ≤ c`.
        let mut acc = [unsafe { _mm256_loadu_ps(b.bias) }; P];
        for (t, &tap) in b.taps.iter().enumerate() {
            // SAFETY: tap `t`'s weights start at `t · c` (+ the block's channel, in `b.weights`).
            let w = unsafe { _mm256_loadu_ps(b.weights.add(t * c)) };
            for (p, a) in acc.iter_mut().enumerate() {
                // SAFETY: a tap of an existing output pixel, eight channels within the pixel.
                let v = unsafe { _mm256_loadu_ps(src.add(p * step + tap)) };
                *a = _mm256_fmadd_ps(v, w, *a);
            }
        }
        let zero = _mm256_setzero_ps();
        let at = ConvGeometry::offset(g.output, g.output_border, y, x) - b.output_base + b.channel;
        let residual_at = b.residual.map(|(res, border)| {
            (
                res,
                ConvGeometry::offset(g.output, border, y, x) + b.channel,
            )
        });
        for (p, &sum) in acc.iter().enumerate() {
            let mut v = sum;
            if let Some((res, ra)) = residual_at {
                // SAFETY: the residual buffer has the output's size with its own border; the
                // row's pixels are `c` apart.
                v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(res.add(ra + p * c)) });
            }
            if b.relu {
                v = _mm256_max_ps(v, zero);
            }
            // SAFETY: pixel `(y, x + p)`'s channels `channel..channel + 8` are in the output.
            unsafe { _mm256_storeu_ps(b.output.add(at + p * c), v) };
        }
    }

    /// # Safety
    /// AVX2 and FMA available; the job fits ([`Job::fits`]); `packed.block` is 8 or 16.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv(job: &mut Job<'_>) {
        let (packed, out, rows) = (job.packed, job.g.output, job.rows.clone());
        let per_block = packed.taps.len() * packed.block;
        for (b, weights) in packed.weights.chunks_exact(per_block).enumerate() {
            let channel = b * packed.block;
            let block = Block::new(job, weights, channel);
            let tile = if packed.block == 16 {
                PIXELS_16
            } else {
                PIXELS_8
            };
            raster_tiles(out, rows.clone(), tile, |first, n| {
                // SAFETY: the caller's contract; pixels `first..first + n` exist.
                unsafe { dispatch(&block, packed.block, first, n) }
            });
        }
    }

    /// Calls the tile kernel monomorphised for `block / 8` registers and `n` pixels.
    ///
    /// # Safety
    /// As [`conv`]; `n` ≤ the tile size of the block.
    #[target_feature(enable = "avx2,fma")]
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
            arms!(2; 1 2 3 4)
        } else {
            arms!(1; 1 2 3 4 5 6 7 8)
        }
    }

    /// `P` output pixels (raster order from `first`, crossing rows freely) × `R` registers of
    /// eight channels.
    ///
    /// # Safety
    /// As [`conv`]; pixels `first..first + P` exist.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const P: usize>(b: &Block<'_>, first: usize) {
        let g = b.g;
        let [_, out_w, out_c] = g.output;
        let coords = tile_coords::<P>(first, out_w);
        let mut src = [b.input; P];
        for p in 0..P {
            // SAFETY: `input_offset` of an existing output pixel is inside the input buffer
            // (its border covers the padding), as is every tap offset from it.
            src[p] = unsafe { b.input.add(g.input_offset(coords[p].0, coords[p].1)) };
        }
        let mut acc = [[_mm256_setzero_ps(); R]; P];
        for r in 0..R {
            // SAFETY: the bias has `out_c` values and the block's channels are within them.
            let bias = unsafe { _mm256_loadu_ps(b.bias.add(8 * r)) };
            for a in acc.iter_mut() {
                a[r] = bias;
            }
        }
        let mut w = b.weights;
        for &tap in b.taps {
            let mut wv = [_mm256_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                // SAFETY: the block's weights are `taps.len() × 8R` floats; `w` advances 8R per tap.
                *v = unsafe { _mm256_loadu_ps(w.add(8 * r)) };
            }
            // SAFETY: as above (one past the end at most after the last tap).
            w = unsafe { w.add(8 * R) };
            for p in 0..P {
                // SAFETY: a tap of an existing output pixel (see `src`).
                let x = unsafe { _mm256_broadcast_ss(&*src[p].add(tap)) };
                for r in 0..R {
                    acc[p][r] = _mm256_fmadd_ps(x, wv[r], acc[p][r]);
                }
            }
        }
        let zero = _mm256_setzero_ps();
        for (&(y, x), pixel) in coords.iter().zip(&acc) {
            let at =
                ConvGeometry::offset(g.output, g.output_border, y, x) - b.output_base + b.channel;
            for (r, &sum) in pixel.iter().enumerate() {
                let mut v = sum;
                if let Some((res, border)) = b.residual {
                    let ra = ConvGeometry::offset(g.output, border, y, x) + b.channel;
                    // SAFETY: the residual buffer has the output's size with its own border.
                    v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(res.add(ra + 8 * r)) });
                }
                if b.relu {
                    v = _mm256_max_ps(v, zero);
                }
                // SAFETY: pixel `(y, x)`'s channels `channel..channel + 8R` are within the
                // output buffer (`channel + 8R ≤ out_c`).
                unsafe { _mm256_storeu_ps(b.output.add(at + 8 * r), v) };
            }
        }
        debug_assert!(b.channel + 8 * R <= out_c);
    }
}

/// The same register tile with 512-bit registers, for blocks of 32 or 64 channels: the 32
/// registers hold up to 24 accumulators, so each broadcast input feeds two or four FMAs of
/// sixteen lanes. Measured against the AVX2 tile (docs/benchmarks.md): 64- and 128-channel
/// layers ~10 % faster, 32-channel layers ~4 %; 16-channel blocks were slower as one 512-bit
/// register × twelve pixels than as two 256-bit registers × four, so they stay on AVX2.
mod avx512 {
    use core::arch::x86_64::*;

    use super::super::{raster_tiles, tile_coords, Block, ConvGeometry, Job};

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// Pixels per tile for `registers` registers of sixteen channels: 16 or 24 accumulators.
    fn tile_pixels(registers: usize) -> usize {
        if registers == 2 {
            8
        } else {
            6
        }
    }

    /// # Safety
    /// AVX-512F available; the job fits ([`Job::fits`]); `packed.block` is 32 or 64.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv(job: &mut Job<'_>) {
        let (packed, out, rows) = (job.packed, job.g.output, job.rows.clone());
        let per_block = packed.taps.len() * packed.block;
        let registers = packed.block / 16;
        let tile_size = tile_pixels(registers);
        for (b, weights) in packed.weights.chunks_exact(per_block).enumerate() {
            let channel = b * packed.block;
            let block = Block::new(job, weights, channel);
            raster_tiles(out, rows.clone(), tile_size, |first, n| {
                macro_rules! arms {
                    ($regs:literal; $($n:literal)*) => {
                        match n {
                            // SAFETY: the caller's contract; pixels `first..first + n` exist.
                            $($n => unsafe { tile::<$regs, $n>(&block, first) },)*
                            _ => unreachable!("tile of {n} pixels"),
                        }
                    };
                }
                if registers == 2 {
                    arms!(2; 1 2 3 4 5 6 7 8)
                } else {
                    arms!(4; 1 2 3 4 5 6)
                }
            });
        }
    }

    /// `P` output pixels × `R` registers of sixteen channels.
    ///
    /// # Safety
    /// As [`conv`]; pixels `first..first + P` exist; `16R` is the packed block.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const P: usize>(b: &Block<'_>, first: usize) {
        let g = b.g;
        let out_w = g.output[1];
        let coords = tile_coords::<P>(first, out_w);
        let mut src = [b.input; P];
        for p in 0..P {
            // SAFETY: `input_offset` of an existing output pixel is inside the input buffer
            // (its border covers the padding), as is every tap offset from it.
            src[p] = unsafe { b.input.add(g.input_offset(coords[p].0, coords[p].1)) };
        }
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        for r in 0..R {
            // SAFETY: the bias has `out_c` values and the block's channels are within them.
            let bias = unsafe { _mm512_loadu_ps(b.bias.add(16 * r)) };
            for a in acc.iter_mut() {
                a[r] = bias;
            }
        }
        let mut w = b.weights;
        for &tap in b.taps {
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                // SAFETY: the block's weights are `taps.len() × 16R` floats; `w` advances 16R
                // per tap.
                *v = unsafe { _mm512_loadu_ps(w.add(16 * r)) };
            }
            // SAFETY: as above (one past the end at most after the last tap).
            w = unsafe { w.add(16 * R) };
            for p in 0..P {
                // SAFETY: a tap of an existing output pixel (see `src`).
                let x = _mm512_set1_ps(unsafe { *src[p].add(tap) });
                for r in 0..R {
                    acc[p][r] = _mm512_fmadd_ps(x, wv[r], acc[p][r]);
                }
            }
        }
        let zero = _mm512_setzero_ps();
        for (&(y, x), pixel) in coords.iter().zip(&acc) {
            let at =
                ConvGeometry::offset(g.output, g.output_border, y, x) - b.output_base + b.channel;
            for (r, &sum) in pixel.iter().enumerate() {
                let mut v = sum;
                if let Some((res, border)) = b.residual {
                    let ra = ConvGeometry::offset(g.output, border, y, x) + b.channel;
                    // SAFETY: the residual buffer has the output's size with its own border.
                    v = _mm512_add_ps(v, unsafe { _mm512_loadu_ps(res.add(ra + 16 * r)) });
                }
                if b.relu {
                    v = _mm512_max_ps(v, zero);
                }
                // SAFETY: pixel `(y, x)`'s channels `channel..channel + 16R` are within the
                // output buffer.
                unsafe { _mm512_storeu_ps(b.output.add(at + 16 * r), v) };
            }
        }
    }
}
