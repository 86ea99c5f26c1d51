//! The Winograd transforms on x86-64 with AVX2 + FMA, eight channels per register (channel
//! counts that are multiples of eight; others run the plain loops), chosen at run time. The
//! same arithmetic as the portable transforms, in the same order.
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw pointers into
//! checked buffers; every block with a `// SAFETY:` line). Its entry points are safe: each
//! checks the CPU and the buffer sizes itself and returns `false` (ran nothing) where they do
//! not fit.
#![allow(unsafe_code)]

use core::arch::x86_64::*;
use std::ops::Range;

use super::super::kernels::{ConvGeometry, OutputRows, Residual};
use super::WinogradConv;

/// Whether this CPU has AVX2 and FMA.
fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `V = Bᵀ d B` for every tile of `tile_rows` with AVX2. `false`: nothing ran (no AVX2/FMA,
/// or buffers not sized for `w` and the band).
pub(super) fn transform_input(
    w: &WinogradConv,
    input: &[f32],
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) -> bool {
    let g = &w.geometry;
    let count = tile_rows.len() * w.tiles[1];
    let fits = input.len() == ConvGeometry::buffer_len(g.input, g.input_border)
        && tile_rows.end <= w.tiles[0]
        && transformed.len() >= 16 * count * g.input[2];
    if !(fits && available()) {
        return false;
    }
    // SAFETY: the CPU has AVX2 and FMA; `input` is sized for `w`, the band's rows of tiles
    // exist and `transformed` holds them (all checked above; `WinogradConv::new` gave the input
    // border the width the patches need).
    unsafe { transform_input_avx2(w, input, tile_rows, transformed) };
    true
}

/// `Y = Aᵀ M A` + bias (+ residual, ReLU) for every tile of `tile_rows` with AVX2. `false`:
/// nothing ran (no AVX2/FMA, or buffers not sized for `w` and the band).
pub(super) fn transform_output(
    w: &WinogradConv,
    products: &[f32],
    tile_rows: Range<usize>,
    output: &mut OutputRows<'_>,
    residual: Option<Residual<'_>>,
    relu: bool,
) -> bool {
    let g = &w.geometry;
    let count = tile_rows.len() * w.tiles[1];
    let rows = w.output_rows(&tile_rows);
    let band = g.output_row_start(rows.end) - g.output_row_start(rows.start);
    let fits = products.len() >= 16 * count * g.output[2]
        && tile_rows.end <= w.tiles[0]
        && output.rows == rows
        && output.data.len() == band
        && residual.is_none_or(|r| r.data.len() == ConvGeometry::buffer_len(g.output, r.border));
    if !(fits && available()) {
        return false;
    }
    // SAFETY: the CPU has AVX2 and FMA; the products, the output band and the residual are
    // sized for `w` and the band (checked above; `WinogradConv::new` gave the bias one value
    // per output channel).
    unsafe { transform_output_avx2(w, products, tile_rows, output, residual, relu) };
    true
}

/// # Safety
/// AVX2 available; `input` and `transformed` sized for `w` and the band (checked by
/// [`transform_input`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input_avx2(
    w: &WinogradConv,
    input: &[f32],
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) {
    let g = &w.geometry;
    let [_, in_w, c] = g.input;
    if !c.is_multiple_of(8) {
        return super::transform_input_body(w, input, tile_rows, transformed);
    }
    let row = (in_w + 2 * g.input_border) * c;
    let count = tile_rows.len() * w.tiles[1];
    let shift = g.input_border - 1;
    let (src, dst) = (input.as_ptr(), transformed.as_mut_ptr());
    for ty in tile_rows.clone() {
        for tx in 0..w.tiles[1] {
            let tile = (ty - tile_rows.start) * w.tiles[1] + tx;
            let corner = (2 * ty + shift) * row + (2 * tx + shift) * c;
            for ch in (0..c).step_by(8) {
                let mut d = [_mm256_setzero_ps(); 16];
                for (k, v) in d.iter_mut().enumerate() {
                    // SAFETY: the 4×4 patch of a tile lies inside the bordered input (the
                    // border is at least `border_needed`), channels `ch..ch + 8` inside it.
                    *v = unsafe {
                        _mm256_loadu_ps(src.add(corner + (k / 4) * row + (k % 4) * c + ch))
                    };
                }
                let mut r = [_mm256_setzero_ps(); 16];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
                    r[j] = _mm256_sub_ps(d0, d2);
                    r[4 + j] = _mm256_add_ps(d1, d2);
                    r[8 + j] = _mm256_sub_ps(d2, d1);
                    r[12 + j] = _mm256_sub_ps(d1, d3);
                }
                for i in 0..4 {
                    let (a, b, e, f) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
                    let out = [
                        _mm256_sub_ps(a, e),
                        _mm256_add_ps(b, e),
                        _mm256_sub_ps(e, b),
                        _mm256_sub_ps(b, f),
                    ];
                    for (k, v) in out.into_iter().enumerate() {
                        let position = 4 * i + k;
                        // SAFETY: `transformed` holds 16 × the band's tiles × c floats.
                        unsafe { _mm256_storeu_ps(dst.add((position * count + tile) * c + ch), v) };
                    }
                }
            }
        }
    }
}

/// # Safety
/// AVX2 available; buffers sized for `w` and the band (checked by [`transform_output`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_output_avx2(
    w: &WinogradConv,
    products: &[f32],
    tile_rows: Range<usize>,
    output: &mut OutputRows<'_>,
    residual: Option<Residual<'_>>,
    relu: bool,
) {
    let g = &w.geometry;
    let [out_h, out_w, c] = g.output;
    if !c.is_multiple_of(8) {
        return super::transform_output_body(w, products, tile_rows, output, residual, relu);
    }
    let count = tile_rows.len() * w.tiles[1];
    let base = g.output_row_start(output.rows.start);
    let at =
        |border: usize, y: usize, x: usize| ((y + border) * (out_w + 2 * border) + x + border) * c;
    let (m_ptr, out_ptr) = (products.as_ptr(), output.data.as_mut_ptr());
    let zero = _mm256_setzero_ps();
    for ty in tile_rows.clone() {
        for tx in 0..w.tiles[1] {
            let tile = (ty - tile_rows.start) * w.tiles[1] + tx;
            for ch in (0..c).step_by(8) {
                let mut m = [_mm256_setzero_ps(); 16];
                for (k, v) in m.iter_mut().enumerate() {
                    // SAFETY: `products` holds 16 × the band's tiles × c floats.
                    *v = unsafe { _mm256_loadu_ps(m_ptr.add((k * count + tile) * c + ch)) };
                }
                let mut t = [_mm256_setzero_ps(); 8];
                for j in 0..4 {
                    t[j] = _mm256_add_ps(_mm256_add_ps(m[j], m[4 + j]), m[8 + j]);
                    t[4 + j] = _mm256_sub_ps(_mm256_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
                }
                // SAFETY: the bias has `c` values.
                let bias = unsafe { _mm256_loadu_ps(w.bias.as_ptr().add(ch)) };
                let y = [
                    _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[1]), t[2]), bias),
                    _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(t[1], t[2]), t[3]), bias),
                    _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[4], t[5]), t[6]), bias),
                    _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(t[5], t[6]), t[7]), bias),
                ];
                for (k, mut v) in y.into_iter().enumerate() {
                    let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                    if oy >= out_h || ox >= out_w {
                        continue;
                    }
                    if let Some(r) = residual {
                        // SAFETY: the residual buffer has the output's size with its border.
                        let add = unsafe {
                            _mm256_loadu_ps(r.data.as_ptr().add(at(r.border, oy, ox) + ch))
                        };
                        v = _mm256_add_ps(v, add);
                    }
                    if relu {
                        v = _mm256_max_ps(v, zero);
                    }
                    let o = at(g.output_border, oy, ox) - base + ch;
                    // SAFETY: pixel `(oy, ox)` is inside the output map, in the band's rows
                    // (`oy` is one of the band's tile rows' two), which start at `base`.
                    unsafe { _mm256_storeu_ps(out_ptr.add(o), v) };
                }
            }
        }
    }
}
