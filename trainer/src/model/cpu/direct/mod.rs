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
//!
//! The kernel pattern (as in the int8 core's `kernels`): this file holds the layout (grid,
//! segments, packing), the dispatch and, in its tests, the definition the kernels are checked
//! against; `x86_64.rs` the AVX2 kernels behind safe entry points that check the CPU and the
//! sizes themselves. No `unsafe` here. Other hosts do not run this path ([`applies`] is false
//! there): the im2col convolution ([`super::conv`]) is their portable kernel.

use rayon::prelude::*;

use super::output_buffer::par_filled;

#[cfg(target_arch = "x86_64")]
mod x86_64;

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
        x86_64::available()
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
    let tiling = Tiling::new(h, w);
    let grid = tiling.grid;
    let (x_len, y_len) = (ci * h * w, co * h * w);
    par_filled(batch * y_len, y_len, |s, y_n| {
        let x_n = &x[s * x_len..][..x_len];
        with_planes(grid, ci, |planes| {
            grid.fill_planes(planes, x_n);
            #[cfg(target_arch = "x86_64")]
            assert!(
                x86_64::convolve(&tiling, [ci, co], planes, &packed, y_n),
                "conv3x3_same: the kernel declined what `applies` accepted"
            );
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
    let tiling = Tiling::new(h, w);
    let grid = tiling.grid;
    let (x_len, y_len) = (ci * h * w, co * h * w);
    let chunk = batch.div_ceil(16).max(1);
    let group = SEGMENTS_PER_PASS
        .div_ceil(tiling.segments.len())
        .clamp(1, chunk);
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
                    assert!(
                        x86_64::weight_gradient(
                            &tiling,
                            [count, ci, co],
                            planes,
                            dy_group,
                            &mut dw
                        ),
                        "conv3x3_same_weight_gradient: the kernel declined what `applies` accepted"
                    );
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

/// A grid and its output segments, built together: the kernels rely on every segment lying in
/// the grid (its taps inside a bordered plane) and on the segments covering every output
/// position.
struct Tiling {
    grid: Grid,
    segments: Vec<Segment>,
}

impl Tiling {
    fn new(h: usize, w: usize) -> Self {
        let grid = Grid::new(h, w);
        Self {
            grid,
            segments: grid.segments(),
        }
    }
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
