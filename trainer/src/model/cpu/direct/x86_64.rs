//! The direct 3×3 convolution's kernels on x86-64 with AVX2 and FMA (chosen at run time): the
//! forward pass (also the input gradient, with turned filters) and the weight gradient, on the
//! zero-bordered planes and output segments of the parent module.
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw pointers into
//! the sized planes; every block with a `// SAFETY:` line). Its entry points are safe: each
//! checks the CPU features and the buffer sizes itself and returns `false` (ran nothing) where
//! they do not fit.
#![allow(unsafe_code)]

use super::super::output_buffer::Writer;
use super::{Tiling, CHANNELS};

/// Whether this CPU has AVX2 and FMA.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Appends to `y` one sample's `co` output planes: the convolution of its `ci` bordered input
/// planes with the `packed` filters (`[channel block][input channel][tap][channel in block]`).
/// `false`: nothing ran and nothing was appended (no AVX2/FMA, or sizes that do not fit).
pub(super) fn convolve(
    tiling: &Tiling,
    [ci, co]: [usize; 2],
    planes: &[f32],
    packed: &[f32],
    y: &mut Writer<'_>,
) -> bool {
    let Tiling { grid, segments } = tiling;
    let fits = co.is_multiple_of(CHANNELS)
        && planes.len() >= ci * grid.plane
        && packed.len() >= co * ci * 9;
    if !(fits && available()) {
        return false;
    }
    let y_len = co * grid.h * grid.w;
    // SAFETY: AVX2 and FMA present, the planes, filters and channel count as the kernel
    // requires (checked above), the segments `grid`'s (`Tiling::new`). The kernel writes every
    // one of the `y_len` slots (the segments cover every position of every output plane), as
    // `Writer::unwritten` requires.
    unsafe { avx2::convolve(*grid, ci, co, planes, packed, segments, y.unwritten(y_len)) };
    true
}

/// Adds the weight gradient of `samples` samples (their bordered input planes and their output
/// gradients `dy`) into `dw` (`Co×Ci×3×3`). `false`: nothing ran (no AVX2/FMA, or sizes that do
/// not fit).
pub(super) fn weight_gradient(
    tiling: &Tiling,
    [samples, ci, co]: [usize; 3],
    planes: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) -> bool {
    let Tiling { grid, segments } = tiling;
    let fits = co.is_multiple_of(CHANNELS)
        && planes.len() >= samples * ci * grid.plane
        && dy.len() >= samples * co * grid.h * grid.w
        && dw.len() >= co * ci * 9;
    if !(fits && available()) {
        return false;
    }
    // SAFETY: AVX2 and FMA present, the planes, gradients, `dw` and channel count as the kernel
    // requires (checked above), the segments `grid`'s (`Tiling::new`).
    unsafe { avx2_weight::weight_gradient(*grid, [samples, ci, co], planes, segments, dy, dw) };
    true
}

/// Lane mask of a segment's `lanes` first lanes.
#[target_feature(enable = "avx2,fma")]
fn lane_mask(lanes: usize) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The forward kernel (raw pointers into the sized planes).
mod avx2 {
    use core::arch::x86_64::*;

    use super::super::{Grid, Segment, CHANNELS};
    use super::lane_mask;

    /// Writes every value of `y`.
    ///
    /// # Safety
    /// AVX2 and FMA available; `planes` is `ci · grid.plane` floats, `y` `co · h · w`,
    /// `packed` `co · ci · 9`, `co` a multiple of [`CHANNELS`], `segments` all of `grid`'s.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn convolve(
        grid: Grid,
        ci: usize,
        co: usize,
        planes: &[f32],
        packed: &[f32],
        segments: &[Segment],
        y: &mut [core::mem::MaybeUninit<f32>],
    ) {
        let taps: [usize; 9] = core::array::from_fn(|t| (t / 3) * grid.width + t % 3);
        let map = grid.h * grid.w;
        // Segments outer, channel blocks inner: the input rows a tile reads (a few KiB) stay
        // in L1 for every block instead of streaming all planes once per block.
        for pair in segments.chunks(2) {
            // A lone last segment is computed twice (same values, stored twice).
            let tile = [pair[0], pair[pair.len() - 1]];
            for block in 0..co / CHANNELS {
                let weights = packed[block * ci * 9 * CHANNELS..].as_ptr();
                let mut acc = [[_mm256_setzero_ps(); 2]; CHANNELS];
                for c in 0..ci {
                    // SAFETY: plane `c` starts at `c · grid.plane`; a segment's start plus
                    // 7 plus the largest tap is inside the plane (`Grid::new`).
                    let base = unsafe { planes.as_ptr().add(c * grid.plane) };
                    // SAFETY: block `block`'s weights for input channel `c`: 9 × 4 floats.
                    let w = unsafe { weights.add(c * 9 * CHANNELS) };
                    for (t, &tap) in taps.iter().enumerate() {
                        let x: [__m256; 2] = core::array::from_fn(|p| {
                            // SAFETY: as above.
                            unsafe { _mm256_loadu_ps(base.add(tile[p].grid + tap)) }
                        });
                        for (r, lanes) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            let wv = unsafe { _mm256_broadcast_ss(&*w.add(t * CHANNELS + r)) };
                            for (a, &xv) in lanes.iter_mut().zip(&x) {
                                *a = _mm256_fmadd_ps(wv, xv, *a);
                            }
                        }
                    }
                }
                for (r, lanes) in acc.iter().enumerate() {
                    let o = block * CHANNELS + r;
                    for (segment, &v) in tile.iter().zip(lanes) {
                        // SAFETY: channel `o < co`; the segment's `lanes` outputs lie in the
                        // plane; lanes past them are masked off.
                        unsafe {
                            let at = y.as_mut_ptr().cast::<f32>().add(o * map + segment.map);
                            if segment.lanes == 8 {
                                _mm256_storeu_ps(at, v);
                            } else {
                                _mm256_maskstore_ps(at, lane_mask(segment.lanes), v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The weight-gradient kernel (raw pointers into the sized planes).
mod avx2_weight {
    use core::arch::x86_64::*;

    use super::super::{Grid, Segment, CHANNELS};
    use super::lane_mask;

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn lanes_sum(v: __m256) -> f32 {
        let four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps::<1>(two, two)))
    }

    /// Adds the `dW` of `samples` samples into `dw` (`Co×Ci×3×3`). A register tile is four
    /// output channels × one row of three taps: each gradient vector feeds three FMAs, each
    /// input vector four.
    ///
    /// # Safety
    /// AVX2 and FMA available; `planes` is `samples · ci · grid.plane` floats, `dy`
    /// `samples · co · h · w`, `dw` `co · ci · 9`, `co` a multiple of [`CHANNELS`], `segments`
    /// from `grid`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_gradient(
        grid: Grid,
        [samples, ci, co]: [usize; 3],
        planes: &[f32],
        segments: &[Segment],
        dy: &[f32],
        dw: &mut [f32],
    ) {
        let map = grid.h * grid.w;
        // Every sample's segments in one list, their offsets counted from sample 0's plane
        // `c` and gradient block: one loop per tile however small the map.
        let (full, short): (Vec<Segment>, Vec<Segment>) = (0..samples)
            .flat_map(|s| {
                segments.iter().map(move |segment| Segment {
                    grid: s * ci * grid.plane + segment.grid,
                    map: s * co * map + segment.map,
                    lanes: segment.lanes,
                })
            })
            .partition(|segment| segment.lanes == 8);
        for block in 0..co / CHANNELS {
            for c in 0..ci {
                for ky in 0..3 {
                    let mut acc = [[_mm256_setzero_ps(); 3]; CHANNELS];
                    // SAFETY: plane `c` (of sample 0), from tap row `ky`; every segment
                    // + 7 + the row's taps < `grid.plane` (`Grid::new`) past its sample's
                    // plane `c`.
                    let plane = unsafe { planes.as_ptr().add(c * grid.plane + ky * grid.width) };
                    // SAFETY: gradient planes `block·4 .. block·4 + 4` (of sample 0).
                    let dy = unsafe { dy.as_ptr().add(block * CHANNELS * map) };
                    // Whole segments, then the short ones (the masked loads need one
                    // more register, which in the same loop spilled an accumulator).
                    for segment in &full {
                        // SAFETY: inside the plane, as above.
                        let x: [__m256; 3] = core::array::from_fn(|kx| unsafe {
                            _mm256_loadu_ps(plane.add(segment.grid + kx))
                        });
                        for (r, a) in acc.iter_mut().enumerate() {
                            // SAFETY: plane `r` of the block; the segment lies in it.
                            let d = unsafe { _mm256_loadu_ps(dy.add(r * map + segment.map)) };
                            for (a, &xv) in a.iter_mut().zip(&x) {
                                *a = _mm256_fmadd_ps(d, xv, *a);
                            }
                        }
                    }
                    for segment in &short {
                        let mask = lane_mask(segment.lanes);
                        // SAFETY: inside the plane, as above.
                        let x: [__m256; 3] = core::array::from_fn(|kx| unsafe {
                            _mm256_loadu_ps(plane.add(segment.grid + kx))
                        });
                        for (r, a) in acc.iter_mut().enumerate() {
                            // SAFETY: plane `r` of the block; the segment's `lanes`
                            // values lie in it. Lanes past them load zeros, so the inputs
                            // they face (the border, the next row) add nothing.
                            let d =
                                unsafe { _mm256_maskload_ps(dy.add(r * map + segment.map), mask) };
                            for (a, &xv) in a.iter_mut().zip(&x) {
                                *a = _mm256_fmadd_ps(d, xv, *a);
                            }
                        }
                    }
                    for (r, a) in acc.iter().enumerate() {
                        let at = ((block * CHANNELS + r) * ci + c) * 9 + ky * 3;
                        for (kx, &v) in a.iter().enumerate() {
                            dw[at + kx] += lanes_sum(v);
                        }
                    }
                }
            }
        }
    }
}
