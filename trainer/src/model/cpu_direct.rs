//! 3×3, stride-1, padding-1 convolutions without im2col — the forward pass, the input gradient
//! and the weight gradient of the ResNets' usual layer — on x86-64 hosts with AVX2 and FMA.
//!
//! Why: on a CPU SimCLR step, im2col, col2im and the matrix library's packing of the im2col
//! matrix were ~28 % of the time (docs/benchmarks.md). Here each sample's input planes are
//! copied once into zero-bordered planes of width `W + 2`; on that grid the output at row `y`,
//! column `x` reads tap `(ky, kx)` at `y·(W+2) + x + ky·(W+2) + kx`, so eight outputs of a row
//! read eight contiguous inputs for every tap. The outputs are cut into such eight-wide
//! segments of one row (the last of a row masked when `W` is not a multiple of 8); a register
//! tile of four output channels × two segments accumulates `broadcast(weight) × input vector`
//! with FMAs and stores straight into the output tensor — no border columns computed, no copy.
//!
//! The input gradient of such a layer is the same convolution of the output gradient with the
//! filters transposed (input ↔ output channel) and turned by 180°. The weight gradient is the
//! correlation of the output gradient, read segment by segment where it lies, with the input
//! planes shifted by each tap: four output channels × two taps per register tile, the
//! positions summed in the lanes.
//!
//! Summation order differs from the im2col + gemm path (fp32 rounding), not from run to run:
//! each output value is summed in a fixed order whatever the threads do.

use rayon::prelude::*;

use super::cpu_buffer::par_filled;

/// Segments the weight gradient's inner loop runs over before summing its lanes: maps of
/// fewer segments take several samples per pass (an 8 × 8 map is 8 segments; summing lanes
/// and updating `dW` after each sample cost a third of the kernel's time there).
const SEGMENTS_PER_PASS: usize = 64;
/// Output channels per register tile (with two eight-wide segments: with three, the four
/// channels' twelve accumulators, the inputs and the broadcast spilled; 512-bit registers,
/// 32 positions per tile, measured no faster).
const CHANNELS: usize = 4;

/// Whether this host runs the direct kernel and a map of `width` × `channels` (in and out) is
/// worth it: maps at least 8 wide (a segment's width; measured on a SimCLR step: 8-wide maps
/// +5 % steps/s, 4-wide ones no faster than im2col), channel counts that fill the four-channel
/// tile.
pub fn applies(width: usize, in_channels: usize, out_channels: usize) -> bool {
    width >= 8 && in_channels > 0 && out_channels.is_multiple_of(CHANNELS) && fast_path_available()
}

fn fast_path_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = conv(x, w)`: `x` is `N×Ci×H×W`, `w` is `Co×Ci×3×3`, `y` `N×Co×H×W`, all contiguous.
/// Callers check [`applies`] first.
pub fn conv3x3_same(
    batch: usize,
    [ci, h, w]: [usize; 3],
    co: usize,
    x: &[f32],
    weight: &[f32],
) -> Vec<f32> {
    assert!(
        applies(w, ci, co),
        "conv3x3_same: not for this host or shape"
    );
    assert_eq!(x.len(), batch * ci * h * w, "conv3x3_same: input size");
    assert_eq!(weight.len(), co * ci * 9, "conv3x3_same: weight size");
    // [channel block][input channel][tap][channel in block]: one tap's four weights adjacent.
    let mut packed = vec![0.0_f32; co * ci * 9];
    for o in 0..co {
        for c in 0..ci {
            for t in 0..9 {
                packed[(((o / CHANNELS) * ci + c) * 9 + t) * CHANNELS + o % CHANNELS] =
                    weight[(o * ci + c) * 9 + t];
            }
        }
    }
    let grid = Grid::new(h, w);
    let segments = grid.segments();
    let (x_len, y_len) = (ci * h * w, co * h * w);
    par_filled(batch * y_len, y_len, |s, y_n| {
        let x_n = &x[s * x_len..][..x_len];
        with_planes(grid, ci, |planes| {
            grid.fill_planes(planes, x_n);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX2 and FMA; the planes are sized by `grid` for `ci`
            // channels (`with_planes`), the slots hold `co` planes of `h × w`, and the
            // segments are `grid`'s, which is all the kernel's pointer arithmetic assumes.
            // Its segments cover every position of every output plane, so every slot is
            // written.
            #[allow(unsafe_code)]
            unsafe {
                avx2::convolve(
                    grid,
                    ci,
                    co,
                    planes,
                    &packed,
                    &segments,
                    y_n.unwritten(y_len),
                )
            };
        });
    })
    .0
}

/// The input gradient of [`conv3x3_same`] given `dy` (`N×Co×H×W`): the same convolution with
/// the filters transposed and turned by 180°.
pub fn conv3x3_same_input_gradient(
    batch: usize,
    [ci, h, w]: [usize; 3],
    co: usize,
    dy: &[f32],
    weight: &[f32],
) -> Vec<f32> {
    let mut turned = vec![0.0_f32; ci * co * 9];
    for o in 0..co {
        for c in 0..ci {
            for t in 0..9 {
                turned[(c * co + o) * 9 + (8 - t)] = weight[(o * ci + c) * 9 + t];
            }
        }
    }
    conv3x3_same(batch, [co, h, w], ci, dy, &turned)
}

/// The weight gradient of [`conv3x3_same`] given `dy` (`N×Co×H×W`):
/// `dW[o][c][t] = Σ_samples Σ_positions dy[o][p] · x[c][p + tap t]` on the zero-bordered grid.
/// Samples in fixed chunks of `batch / 16` (rounded up) on rayon's threads, the chunks' sums
/// added in order: the same bits whatever the thread count. Within a chunk, small maps are
/// taken a few samples at a time ([`SEGMENTS_PER_PASS`]).
pub fn conv3x3_same_weight_gradient(
    batch: usize,
    [ci, h, w]: [usize; 3],
    co: usize,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    assert!(
        applies(w, ci, co),
        "conv3x3_same_weight_gradient: not for this host or shape"
    );
    assert_eq!(
        x.len(),
        batch * ci * h * w,
        "conv3x3_same_weight_gradient: input size"
    );
    assert_eq!(
        dy.len(),
        batch * co * h * w,
        "conv3x3_same_weight_gradient: gradient size"
    );
    let grid = Grid::new(h, w);
    let segments = grid.segments();
    let (x_len, y_len) = (ci * h * w, co * h * w);
    let chunk = batch.div_ceil(16).max(1);
    let group = SEGMENTS_PER_PASS.div_ceil(segments.len()).clamp(1, chunk);
    let partial: Vec<Vec<f32>> = (0..batch.div_ceil(chunk))
        .into_par_iter()
        .map(|k| {
            let mut dw = vec![0.0_f32; co * ci * 9];
            let samples = k * chunk..((k + 1) * chunk).min(batch);
            for first in samples.clone().step_by(group) {
                let count = group.min(samples.end - first);
                let x_group = &x[first * x_len..][..count * x_len];
                let dy_group = &dy[first * y_len..][..count * y_len];
                with_planes(grid, count * ci, |planes| {
                    grid.fill_planes(planes, x_group);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `applies` checked AVX2 and FMA; the planes are sized by `grid`
                    // for `count · ci` channels, `dy_group` holds `count · co` planes of
                    // `h × w`, `dw` is `co · ci · 9`, and the segments are `grid`'s.
                    #[allow(unsafe_code)]
                    unsafe {
                        avx2_weight::weight_gradient(
                            grid,
                            [count, ci, co],
                            planes,
                            &segments,
                            dy_group,
                            &mut dw,
                        )
                    };
                });
            }
            dw
        })
        .collect();
    let mut total = vec![0.0_f32; co * ci * 9];
    for part in &partial {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// The zero-bordered grid of one `h × w` plane.
#[derive(Debug, Clone, Copy)]
struct Grid {
    h: usize,
    w: usize,
    /// `w + 2`.
    width: usize,
    /// Floats per padded input plane: the bordered image plus what the last segment's taps
    /// read past it.
    plane: usize,
}

/// Up to eight adjacent outputs of one row: where the first reads on the grid (tap `(0, 0)`),
/// where it lies in the output plane, and how many of the eight lanes are in the map.
#[derive(Debug, Clone, Copy)]
struct Segment {
    grid: usize,
    map: usize,
    lanes: usize,
}

impl Grid {
    fn new(h: usize, w: usize) -> Self {
        let width = w + 2;
        // The last segment starts at most at column w − 1 of row h − 1 and its largest tap
        // reads 7 + 2·width + 2 further on: (h + 2)·width + 7 at most.
        Self {
            h,
            w,
            width,
            plane: (h + 2) * width + 8,
        }
    }

    /// The output segments of a plane, row by row.
    fn segments(&self) -> Vec<Segment> {
        (0..self.h)
            .flat_map(|row| {
                (0..self.w).step_by(8).map(move |col| Segment {
                    grid: row * self.width + col,
                    map: row * self.w + col,
                    lanes: (self.w - col).min(8),
                })
            })
            .collect()
    }

    /// Copies a sample's `C×H×W` planes into the interiors of the bordered planes.
    fn fill_planes(&self, planes: &mut [f32], x: &[f32]) {
        for (plane, src) in planes
            .chunks_exact_mut(self.plane)
            .zip(x.chunks_exact(self.h * self.w))
        {
            for (row, line) in src.chunks_exact(self.w).enumerate() {
                plane[(row + 1) * self.width + 1..][..self.w].copy_from_slice(line);
            }
        }
    }
}

/// One thread's padded input planes and the shape they were zeroed for.
#[derive(Default)]
struct Planes {
    planes: Vec<f32>,
    /// `(grid width, plane length, channels)` of `planes`.
    shape: (usize, usize, usize),
}

thread_local! {
    /// Per-thread planes kept between calls (their borders and tails stay zero: only
    /// interiors are written).
    static PLANES: std::cell::RefCell<Planes> = std::cell::RefCell::new(Planes::default());
}

/// Runs `f` on this thread's zero-bordered planes for `ci` channels (of one or more samples).
fn with_planes(grid: Grid, ci: usize, f: impl FnOnce(&mut [f32])) {
    PLANES.with(|cell| {
        let mut guard = cell.borrow_mut();
        let Planes { planes, shape } = &mut *guard;
        // A new shape: fresh zeros (the interiors of the old one would sit in the borders).
        if *shape != (grid.width, grid.plane, ci) || planes.len() != ci * grid.plane {
            *planes = vec![0.0; ci * grid.plane];
            *shape = (grid.width, grid.plane, ci);
        }
        f(planes);
    });
}

/// Lane mask of a segment's `lanes` first lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn lane_mask(lanes: usize) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // The kernel: raw pointers into the sized planes, AVX2 intrinsics.
mod avx2 {
    use core::arch::x86_64::*;

    use super::{lane_mask, Grid, Segment, CHANNELS};

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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // The kernel: raw pointers into the sized planes, AVX2 intrinsics.
mod avx2_weight {
    use core::arch::x86_64::*;

    use super::{lane_mask, Grid, Segment, CHANNELS};

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
    pub(in super::super) unsafe fn weight_gradient(
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

#[cfg(test)]
mod tests {
    use super::*;

    use scanside_runtime::fixtures::pseudo_random_values as values;

    /// The definitions: `y[o][i][j] = Σ w[o][c][ky][kx] · x[c][i+ky−1][j+kx−1]` and its
    /// adjoint `dx[c][i][j] = Σ w[o][c][ky][kx] · dy[o][i−ky+1][j−kx+1]`.
    fn reference(
        batch: usize,
        [ci, h, w]: [usize; 3],
        co: usize,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut y = vec![0.0_f64; batch * co * h * w];
        let mut dx = vec![0.0_f64; batch * ci * h * w];
        let mut dw = vec![0.0_f64; co * ci * 9];
        for s in 0..batch {
            for o in 0..co {
                for c in 0..ci {
                    for t in 0..9 {
                        let wv = f64::from(weight[(o * ci + c) * 9 + t]);
                        for i in 0..h {
                            for j in 0..w {
                                let (yi, xj) =
                                    ((i + t / 3).wrapping_sub(1), (j + t % 3).wrapping_sub(1));
                                if yi >= h || xj >= w {
                                    continue;
                                }
                                let out = ((s * co + o) * h + i) * w + j;
                                let inp = ((s * ci + c) * h + yi) * w + xj;
                                y[out] += wv * f64::from(x[inp]);
                                dx[inp] += wv * f64::from(dy[out]);
                                dw[(o * ci + c) * 9 + t] += f64::from(dy[out]) * f64::from(x[inp]);
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (f(y), f(dx), f(dw))
    }

    #[test]
    fn direct_convolution_and_input_gradient_equal_the_definition() {
        if !fast_path_available() {
            eprintln!("skipped: this host has no AVX2/FMA (the direct kernel does not run here)");
            return;
        }
        for (batch, ci, co, h, w) in [
            (3, 5, 8, 16, 16),
            (2, 16, 4, 17, 20),
            (1, 8, 12, 32, 32),
            // One full and one single-lane segment per row, an odd number of segments.
            (2, 4, 4, 9, 9),
            // Chunks of three samples, each one weight-gradient pass (small map); the last
            // chunk a single sample.
            (34, 4, 8, 8, 9),
        ] {
            let x = values(batch * ci * h * w, 1);
            let weight = values(co * ci * 9, 2);
            let dy = values(batch * co * h * w, 3);
            let (want, want_dx, want_dw) = reference(batch, [ci, h, w], co, &x, &weight, &dy);
            let got_dw = conv3x3_same_weight_gradient(batch, [ci, h, w], co, &x, &dy);
            let tol = 1e-5 * (batch * h * w) as f32;
            for (i, (a, b)) in want_dw.iter().zip(&got_dw).enumerate() {
                assert!((a - b).abs() <= tol, "weight gradient [{i}] {a} vs {b}");
            }
            let got = conv3x3_same(batch, [ci, h, w], co, &x, &weight);
            let tol = 1e-5 * (ci * 9) as f32;
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!((a - b).abs() <= tol, "forward [{i}] {a} vs {b}");
            }
            if !applies(w, co, ci) {
                continue;
            }
            let got_dx = conv3x3_same_input_gradient(batch, [ci, h, w], co, &dy, &weight);
            let tol = 1e-5 * (co * 9) as f32;
            for (i, (a, b)) in want_dx.iter().zip(&got_dx).enumerate() {
                assert!((a - b).abs() <= tol, "input gradient [{i}] {a} vs {b}");
            }
        }
    }
}
