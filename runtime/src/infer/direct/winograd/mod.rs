//! 3×3 stride-1 convolutions as Winograd F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): each 2×2 block of outputs costs 16 multiply-adds per
//! input × output channel instead of 36.
//!
//! Per layer: every 4×4 input patch (stride 2, so patches overlap by two) is transformed,
//! `V = Bᵀ d B`, into 16 values per channel; for each of the 16 positions the products with the
//! transformed filters `U = G g Gᵀ` are one `tiles × C_in` by `C_in × C_out` matrix product —
//! run as a 1×1 convolution with the direct engine's register-tiled kernel; the 16 results per
//! tile and output channel go back, `Y = Aᵀ M A`, to 2×2 outputs, with bias, residual and ReLU.
//! The transforms loop over channels innermost (contiguous in NHWC), so they vectorise.
//!
//! In fp32 the transforms' rounding is small (entries 0, ±1, ±½); the tests hold the result to
//! the direct definition within the same tolerance as the direct kernels.
//!
//! The kernel pattern (as in the int8 core's `kernels`): this file holds the portable
//! transforms and the dispatch; `x86_64.rs` the AVX2 transforms behind safe entry points that
//! check the CPU and the buffers themselves. No `unsafe` here.

use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{matmul, ConvError, ConvGeometry, OutputRows, PackedConv, Residual};

#[cfg(target_arch = "x86_64")]
mod x86_64;

/// A 3×3, stride 1, padding 1 convolution prepared for F(2×2, 3×3).
#[derive(Debug, Clone)]
pub struct WinogradConv {
    geometry: ConvGeometry,
    /// Tiles down and across: `⌈h/2⌉ × ⌈w/2⌉`.
    tiles: [usize; 2],
    /// One 1×1 convolution (matrix product) per transformed position, no bias.
    products: Vec<PackedConv>,
    bias: Vec<f32>,
}

impl WinogradConv {
    /// Whether a convolution of this shape runs as Winograd: 3×3, stride 1, padding 1, and at
    /// least 16 input and output channels (with eight, the transforms cost more than the
    /// products save; measured in docs/benchmarks.md).
    pub fn suits(kernel: usize, stride: usize, pad: usize, in_c: usize, out_c: usize) -> bool {
        kernel == 3 && stride == 1 && pad == 1 && in_c >= 16 && out_c >= 16
    }

    /// The input border it reads: the last tile of an odd size reaches one pixel further than
    /// the padding.
    pub fn border_needed(output: [usize; 3]) -> usize {
        if output[0] % 2 == 1 || output[1] % 2 == 1 {
            2
        } else {
            1
        }
    }

    /// Transforms an `O×I×3×3` filter; the geometry must suit ([`WinogradConv::suits`]) and its
    /// input border be at least [`WinogradConv::border_needed`].
    pub fn new(
        geometry: ConvGeometry,
        weight_oihw: &[f32],
        bias: &[f32],
    ) -> Result<Self, ConvError> {
        let [_, _, in_c] = geometry.input;
        let [out_h, out_w, out_c] = geometry.output;
        let ConvGeometry {
            kernel,
            stride,
            pad,
            ..
        } = geometry;
        if !geometry.is_consistent()
            || !Self::suits(kernel, stride, pad, in_c, out_c)
            || geometry.input_border < Self::border_needed(geometry.output)
        {
            return Err(ConvError::Geometry);
        }
        if weight_oihw.len() != out_c * in_c * 9 || bias.len() != out_c {
            return Err(ConvError::WeightSize);
        }
        let tiles = [out_h.div_ceil(2), out_w.div_ceil(2)];
        let count = tiles[0] * tiles[1];
        // U = G g Gᵀ per (output, input) channel, computed in f64, written straight into the
        // `O×I` matrix of each of the 16 transformed positions.
        let mut positions = vec![vec![0.0_f32; out_c * in_c]; 16];
        for (at, g) in weight_oihw.chunks_exact(9).enumerate() {
            let mut gg = [[0.0_f64; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (f64::from(g[c]), f64::from(g[3 + c]), f64::from(g[6 + c]));
                gg[0][c] = g0;
                gg[1][c] = 0.5 * (g0 + g1 + g2);
                gg[2][c] = 0.5 * (g0 - g1 + g2);
                gg[3][c] = g2;
            }
            for (r, &[a, b, c]) in gg.iter().enumerate() {
                positions[4 * r][at] = a as f32;
                positions[4 * r + 1][at] = (0.5 * (a + b + c)) as f32;
                positions[4 * r + 2][at] = (0.5 * (a - b + c)) as f32;
                positions[4 * r + 3][at] = c as f32;
            }
        }
        let product_geometry = ConvGeometry {
            input: [1, count, in_c],
            input_border: 0,
            output: [1, count, out_c],
            output_border: 0,
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let zeros = vec![0.0; out_c];
        let products = positions
            .into_iter()
            .map(|weight| PackedConv::new(product_geometry, &weight, &zeros))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            geometry,
            tiles,
            products,
            bias: bias.to_vec(),
        })
    }

    /// Its geometry.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// Floats of scratch space one run needs: the transformed input and the products.
    pub fn scratch_len(&self) -> usize {
        self.band_scratch_len(self.tiles[0])
    }

    /// Floats of scratch a band of `tile_rows` rows of tiles needs.
    fn band_scratch_len(&self, tile_rows: usize) -> usize {
        16 * tile_rows * self.tiles[1] * (self.geometry.input[2] + self.geometry.output[2])
    }

    /// The output rows of tile rows `tile_rows`: two per tile row, the last one cut at an odd
    /// height.
    fn output_rows(&self, tile_rows: &Range<usize>) -> Range<usize> {
        2 * tile_rows.start..(2 * tile_rows.end).min(self.geometry.output[0])
    }

    /// `output = relu?(conv(input) + bias + residual?)`, as [`super::kernels::conv`].
    pub fn run(
        &self,
        input: &[f32],
        output: &mut [f32],
        residual: Option<Residual<'_>>,
        relu: bool,
        scratch: &mut [f32],
    ) -> Result<(), ConvError> {
        self.run_on_threads(input, output, residual, relu, scratch, 1)
    }

    /// [`WinogradConv::run`] shared among `threads` threads of the rayon pool it is called on
    /// (one: this thread alone, rayon untouched). Maps of at least four rows of tiles per
    /// thread are split into bands of tile rows, each transformed, multiplied and transformed
    /// back by one thread; smaller maps (deep layers, where the products' weights outweigh the
    /// activations) share the 16 products out instead, so that each thread reads only its
    /// positions' weights.
    pub fn run_on_threads(
        &self,
        input: &[f32],
        output: &mut [f32],
        residual: Option<Residual<'_>>,
        relu: bool,
        scratch: &mut [f32],
        threads: usize,
    ) -> Result<(), ConvError> {
        let g = &self.geometry;
        if input.len() != ConvGeometry::buffer_len(g.input, g.input_border)
            || output.len() != ConvGeometry::buffer_len(g.output, g.output_border)
            || residual
                .is_some_and(|r| r.data.len() != ConvGeometry::buffer_len(g.output, r.border))
            || scratch.len() < self.scratch_len()
        {
            return Err(ConvError::BufferSize);
        }
        let bands = if self.tiles[0] >= 4 * threads {
            threads
        } else {
            1
        };
        let tile_rows: Vec<Range<usize>> = (0..bands)
            .map(|b| b * self.tiles[0] / bands..(b + 1) * self.tiles[0] / bands)
            .collect();
        let outputs = g.split_output(output, tile_rows.iter().map(|t| self.output_rows(t)));
        let mut scratches = Vec::with_capacity(bands);
        let mut rest = scratch;
        for t in &tile_rows {
            let (mine, tail) = rest.split_at_mut(self.band_scratch_len(t.len()));
            scratches.push(mine);
            rest = tail;
        }
        let product_threads = if bands == 1 { threads } else { 1 };
        let run = |((t, out), scratch): ((Range<usize>, OutputRows<'_>), &mut [f32])| {
            self.run_band(t, input, out, residual, relu, scratch, product_threads)
        };
        let jobs = tile_rows.into_iter().zip(outputs).zip(scratches);
        if bands == 1 {
            { jobs }.try_for_each(run)
        } else {
            jobs.collect::<Vec<_>>().into_par_iter().map(run).collect()
        }
    }

    /// One band of tile rows: its tiles transformed into `scratch`, multiplied (the 16
    /// products shared among `threads` threads), transformed back into its output rows.
    #[allow(clippy::too_many_arguments)]
    fn run_band(
        &self,
        tile_rows: Range<usize>,
        input: &[f32],
        mut output: OutputRows<'_>,
        residual: Option<Residual<'_>>,
        relu: bool,
        scratch: &mut [f32],
        threads: usize,
    ) -> Result<(), ConvError> {
        let (in_c, out_c) = (self.geometry.input[2], self.geometry.output[2]);
        let count = tile_rows.len() * self.tiles[1];
        let (transformed, rest) = scratch.split_at_mut(16 * count * in_c);
        let products = &mut rest[..16 * count * out_c];
        transform_input(self, input, tile_rows.clone(), transformed);
        let product = |((packed, v), m): ((&PackedConv, &[f32]), &mut [f32])| matmul(packed, v, m);
        let jobs = self
            .products
            .iter()
            .zip(transformed.chunks_exact(count * in_c))
            .zip(products.chunks_exact_mut(count * out_c));
        if threads > 1 {
            jobs.collect::<Vec<_>>()
                .into_par_iter()
                .with_max_len(16usize.div_ceil(threads))
                .map(product)
                .collect::<Result<(), _>>()?;
        } else {
            { jobs }.try_for_each(product)?;
        }
        transform_output(self, products, tile_rows, &mut output, residual, relu);
        Ok(())
    }
}

/// `V = Bᵀ d B` for every tile of `tile_rows`, written `[position][tile][channel]` (tiles
/// counted from the band's first).
fn transform_input(
    w: &WinogradConv,
    input: &[f32],
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if x86_64::transform_input(w, input, tile_rows.clone(), transformed) {
        return;
    }
    transform_input_body(w, input, tile_rows, transformed)
}

/// `Y = Aᵀ M A` + bias (+ residual, ReLU) for every tile of `tile_rows`, the outputs inside
/// the map stored into the band's rows.
fn transform_output(
    w: &WinogradConv,
    products: &[f32],
    tile_rows: Range<usize>,
    output: &mut OutputRows<'_>,
    residual: Option<Residual<'_>>,
    relu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if x86_64::transform_output(w, products, tile_rows.clone(), output, residual, relu) {
        return;
    }
    transform_output_body(w, products, tile_rows, output, residual, relu)
}

#[inline(always)]
fn transform_input_body(
    w: &WinogradConv,
    input: &[f32],
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) {
    let g = &w.geometry;
    let [_, in_w, c] = g.input;
    let row = (in_w + 2 * g.input_border) * c;
    let count = tile_rows.len() * w.tiles[1];
    // The patch's top-left corner, one pixel up and left of the tile, inside the border.
    let shift = g.input_border - 1;
    for ty in tile_rows.clone() {
        for tx in 0..w.tiles[1] {
            let tile = (ty - tile_rows.start) * w.tiles[1] + tx;
            let corner = (2 * ty + shift) * row + (2 * tx + shift) * c;
            let d: [&[f32]; 16] =
                std::array::from_fn(|k| &input[corner + (k / 4) * row + (k % 4) * c..][..c]);
            let mut positions = transformed.chunks_exact_mut(count * c);
            let v: [&mut [f32]; 16] = std::array::from_fn(|_| {
                let position = positions.next().expect("16 positions");
                &mut position[tile * c..][..c]
            });
            for ch in 0..c {
                // Bᵀ d: rows.
                let mut r = [0.0_f32; 16];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d[j][ch], d[4 + j][ch], d[8 + j][ch], d[12 + j][ch]);
                    r[j] = d0 - d2;
                    r[4 + j] = d1 + d2;
                    r[8 + j] = d2 - d1;
                    r[12 + j] = d1 - d3;
                }
                // (Bᵀ d) B: columns.
                for i in 0..4 {
                    let (a, b, e, f) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
                    v[4 * i][ch] = a - e;
                    v[4 * i + 1][ch] = b + e;
                    v[4 * i + 2][ch] = e - b;
                    v[4 * i + 3][ch] = b - f;
                }
            }
        }
    }
}

#[inline(always)]
fn transform_output_body(
    w: &WinogradConv,
    products: &[f32],
    tile_rows: Range<usize>,
    output: &mut OutputRows<'_>,
    residual: Option<Residual<'_>>,
    relu: bool,
) {
    let g = &w.geometry;
    let [out_h, out_w, c] = g.output;
    let count = tile_rows.len() * w.tiles[1];
    let base = g.output_row_start(output.rows.start);
    let at =
        |border: usize, y: usize, x: usize| ((y + border) * (out_w + 2 * border) + x + border) * c;
    let mut y = [[0.0_f32; 4]; 64];
    for ty in tile_rows.clone() {
        for tx in 0..w.tiles[1] {
            let tile = (ty - tile_rows.start) * w.tiles[1] + tx;
            let m: [&[f32]; 16] = std::array::from_fn(|k| &products[(k * count + tile) * c..][..c]);
            for first in (0..c).step_by(64) {
                let n = (c - first).min(64);
                for (k, out) in y[..n].iter_mut().enumerate() {
                    let ch = first + k;
                    // Aᵀ M: rows 0 and 1 of four columns.
                    let mut t = [0.0_f32; 8];
                    for j in 0..4 {
                        t[j] = m[j][ch] + m[4 + j][ch] + m[8 + j][ch];
                        t[4 + j] = m[4 + j][ch] - m[8 + j][ch] - m[12 + j][ch];
                    }
                    let b = w.bias[ch];
                    *out = [
                        t[0] + t[1] + t[2] + b,
                        t[1] - t[2] - t[3] + b,
                        t[4] + t[5] + t[6] + b,
                        t[5] - t[6] - t[7] + b,
                    ];
                }
                for (k, (dy, dx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let (oy, ox) = (2 * ty + dy, 2 * tx + dx);
                    if oy >= out_h || ox >= out_w {
                        continue;
                    }
                    let o = at(g.output_border, oy, ox) - base + first;
                    let dst = &mut output.data[o..o + n];
                    if let Some(r) = residual {
                        let ra = at(r.border, oy, ox) + first;
                        for ((d, s), &add) in dst.iter_mut().zip(&y[..n]).zip(&r.data[ra..ra + n]) {
                            let v = s[k] + add;
                            *d = if relu { v.max(0.0) } else { v };
                        }
                    } else {
                        for (d, s) in dst.iter_mut().zip(&y[..n]) {
                            *d = if relu { s[k].max(0.0) } else { s[k] };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::conv_reference;
    use super::super::kernels::tests::{bordered, values};
    use super::*;

    #[test]
    fn winograd_equals_the_direct_definition() {
        // Even and odd sizes (the last tile half outside), every block size of the products,
        // borders wider than needed.
        let cases = [
            (16, 16, 28, 28),
            (16, 32, 7, 7),
            (32, 48, 5, 6),
            (64, 64, 4, 4),
            (24, 16, 3, 9),
        ];
        for (i, &(cin, cout, h, w)) in cases.iter().enumerate() {
            for (relu, with_residual, extra) in [(false, false, 0), (true, true, 1)] {
                let g = ConvGeometry {
                    input: [h, w, cin],
                    input_border: WinogradConv::border_needed([h, w, cout]) + extra,
                    output: [h, w, cout],
                    output_border: extra,
                    kernel: 3,
                    stride: 1,
                    pad: 1,
                };
                let weight = values(cout * cin * 9, 21 + i as u32);
                let bias = values(cout, 23 + i as u32);
                let input = bordered(g.input, g.input_border, 25 + i as u32);
                let res_buf = bordered(g.output, 1, 27 + i as u32);
                let residual = with_residual.then_some(Residual {
                    data: &res_buf,
                    border: 1,
                });
                let len = ConvGeometry::buffer_len(g.output, g.output_border);
                let (mut want, mut got) = (vec![0.0; len], vec![f32::NAN; len]);
                conv_reference(&g, false, &weight, &bias, &input, &mut want, residual, relu)
                    .unwrap();
                let winograd = WinogradConv::new(g, &weight, &bias).unwrap();
                let mut scratch = vec![0.0; winograd.scratch_len()];
                winograd
                    .run(&input, &mut got, residual, relu, &mut scratch)
                    .unwrap();
                // The output's border is not written (NaN stays), the interior is.
                let tol = 2e-5 * (cin * 9) as f32;
                for y in 0..h + 2 * extra {
                    for x in 0..w + 2 * extra {
                        let inside =
                            (extra..h + extra).contains(&y) && (extra..w + extra).contains(&x);
                        for ch in 0..cout {
                            let j = (y * (w + 2 * extra) + x) * cout + ch;
                            let (a, b) = (want[j], got[j]);
                            assert!(
                                if inside {
                                    (a - b).abs() <= tol
                                } else {
                                    b.is_nan()
                                },
                                "case {i} relu {relu}: ({y}, {x}, {ch}) {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn winograd_on_several_threads_equals_one_thread_bit_for_bit() {
        // Bands of tile rows (even and odd heights), and products shared out (few tile rows).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (i, &(cin, cout, h, w)) in [(16, 16, 28, 28), (16, 24, 27, 5), (32, 32, 7, 9)]
            .iter()
            .enumerate()
        {
            let g = ConvGeometry {
                input: [h, w, cin],
                input_border: 2,
                output: [h, w, cout],
                output_border: 1,
                kernel: 3,
                stride: 1,
                pad: 1,
            };
            let winograd = WinogradConv::new(
                g,
                &values(cout * cin * 9, 61 + i as u32),
                &values(cout, 63 + i as u32),
            )
            .unwrap();
            let input = bordered(g.input, 2, 65 + i as u32);
            let res_buf = bordered(g.output, 0, 67 + i as u32);
            let residual = Some(Residual {
                data: &res_buf,
                border: 0,
            });
            let len = ConvGeometry::buffer_len(g.output, 1);
            let mut scratch = vec![0.0; winograd.scratch_len()];
            let mut want = vec![0.0; len];
            winograd
                .run(&input, &mut want, residual, true, &mut scratch)
                .unwrap();
            for threads in [2, 3] {
                let mut got = vec![0.0; len];
                pool.install(|| {
                    winograd.run_on_threads(&input, &mut got, residual, true, &mut scratch, threads)
                })
                .unwrap();
                assert_eq!(want, got, "case {i}, {threads} threads");
            }
        }
    }

    #[test]
    fn shapes_it_does_not_suit_are_refused() {
        let g = ConvGeometry {
            input: [7, 7, 16],
            input_border: 1,
            output: [7, 7, 16],
            output_border: 0,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let (w, b) = (vec![0.0; 16 * 16 * 9], vec![0.0; 16]);
        // An odd size needs a border of two.
        assert_eq!(
            WinogradConv::new(g, &w, &b).unwrap_err(),
            ConvError::Geometry
        );
        let g = ConvGeometry {
            input_border: 2,
            ..g
        };
        assert!(WinogradConv::new(g, &w, &b).is_ok());
        assert_eq!(
            WinogradConv::new(g, &w[1..], &b).unwrap_err(),
            ConvError::WeightSize
        );
        assert!(!WinogradConv::suits(3, 2, 1, 16, 16));
        assert!(!WinogradConv::suits(3, 1, 1, 8, 16));
        let mut out = vec![0.0; 7 * 7 * 16];
        let winograd = WinogradConv::new(g, &w, &b).unwrap();
        let input = vec![0.0; ConvGeometry::buffer_len([7, 7, 16], 2)];
        assert_eq!(
            winograd.run(&input, &mut out, None, false, &mut [0.0; 4]),
            Err(ConvError::BufferSize)
        );
    }
}
