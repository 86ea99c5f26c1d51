//! The fp32 convolution kernel of the direct engine and its reference.
//!
//! Activations are NHWC with a zero border (`pad` pixels on every side) wide enough for every
//! convolution that reads them, so the kernel never tests bounds: each output pixel's taps are
//! fixed offsets from one pointer. The filters are packed once per model into blocks of
//! [`PackedConv::block`] output channels, `[tap][input channel][channel in block]`, so a block's
//! weights for one tap and input channel are one vector load.
//!
//! On x86-64 with AVX2 and FMA, and on aarch64 with NEON, a register tile of several output
//! pixels × one block (eight or sixteen channels) accumulates `broadcast(input) × weight vector`
//! with fused multiply-adds; bias, residual add and ReLU are applied as the tile is stored.
//! [`conv_reference`] is the plain definition every kernel is tested against.
//!
//! The kernel pattern (as in the int8 core's `kernels`): this file holds the reference, the
//! portable loops over the packed layout and the dispatch ([`conv`]); `x86_64.rs` the AVX2 and
//! AVX-512 kernels, `aarch64.rs` the NEON ones, behind safe entry points that check the CPU, the
//! packing and the buffers themselves. No `unsafe` here; other architectures run the portable
//! loops.

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::ops::Range;

/// Where a convolution reads and writes: sizes and the zero borders of its input, output and
/// residual buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input height, width, channels.
    pub input: [usize; 3],
    /// Zero border of the input buffer (≥ `pad`).
    pub input_border: usize,
    /// Output height, width, channels.
    pub output: [usize; 3],
    /// Zero border of the output buffer (left untouched: written once when the buffer is made).
    pub output_border: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding of the convolution (both directions, both sides).
    pub pad: usize,
}

impl ConvGeometry {
    /// Floats in a buffer of `[h, w, c]` with a border of `border` pixels.
    pub fn buffer_len([h, w, c]: [usize; 3], border: usize) -> usize {
        (h + 2 * border) * (w + 2 * border) * c
    }

    /// Offset of pixel `(y, x)` (unpadded coordinates) in a bordered buffer.
    fn offset([_, w, c]: [usize; 3], border: usize, y: usize, x: usize) -> usize {
        ((y + border) * (w + 2 * border) + x + border) * c
    }

    /// Offset, in the output buffer, of output row `y`'s left border (`y` = the height: the
    /// end of the last row's right border).
    pub fn output_row_start(&self, y: usize) -> usize {
        let [_, w, c] = self.output;
        (y + self.output_border) * (w + 2 * self.output_border) * c
    }

    /// The output buffer's rows split into `parts` bands of consecutive rows (fewer when there
    /// are fewer rows), as even as whole rows allow: what each thread of one convolution
    /// writes. The bands hold the rows' left and right borders, not the top and bottom ones.
    pub fn output_bands<'a>(&self, output: &'a mut [f32], parts: usize) -> Vec<OutputRows<'a>> {
        let h = self.output[0];
        let parts = parts.clamp(1, h.max(1));
        self.split_output(
            output,
            (0..parts).map(|part| part * h / parts..(part + 1) * h / parts),
        )
    }

    /// The output buffer's rows split at the given consecutive ranges of rows (from row 0).
    pub fn split_output<'a>(
        &self,
        output: &'a mut [f32],
        bands: impl Iterator<Item = Range<usize>>,
    ) -> Vec<OutputRows<'a>> {
        let top = self.output_row_start(0).min(output.len());
        let mut rest = &mut output[top..];
        let mut split = Vec::new();
        for rows in bands {
            let len = self.output_row_start(rows.end) - self.output_row_start(rows.start);
            let len = len.min(rest.len());
            let (band, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            split.push(OutputRows { rows, data: band });
        }
        split
    }

    /// Offset, in the input buffer, of output pixel `(y, x)`'s first tap (its top-left
    /// neighbour, `pad` pixels up and left, which the border makes a real address).
    fn input_offset(&self, y: usize, x: usize) -> usize {
        let shift = self.input_border - self.pad;
        let [_, w, c] = self.input;
        ((y * self.stride + shift) * (w + 2 * self.input_border) + x * self.stride + shift) * c
    }

    /// Whether the sizes agree: output size from input, kernel, stride and pad; a border wide
    /// enough for the padding.
    pub fn is_consistent(&self) -> bool {
        let [h, w, _] = self.input;
        let out = |n: usize| {
            (n + 2 * self.pad)
                .checked_sub(self.kernel)
                .map(|v| v / self.stride + 1)
        };
        self.kernel > 0
            && self.stride > 0
            && self.input_border >= self.pad
            && out(h) == Some(self.output[0])
            && out(w) == Some(self.output[1])
            && self.input.iter().chain(&self.output).all(|&d| d > 0)
    }
}

/// Rows `rows` of a convolution's output: `data` runs from the left border of the first to the
/// end of the right border of the last (the part of the bordered buffer those rows own).
#[derive(Debug)]
pub struct OutputRows<'a> {
    /// Output rows, `start < end ≤ height`.
    pub rows: Range<usize>,
    /// Their part of the output buffer.
    pub data: &'a mut [f32],
}

/// A convolution's filters and bias packed for the kernel, with the input offsets of its taps.
#[derive(Debug, Clone)]
pub struct PackedConv {
    geometry: ConvGeometry,
    /// One filter per channel: `weights` is `[tap][channel]`, `taps` the spatial offsets.
    depthwise: bool,
    /// Output channels per block: 16, 8, or (when the channels are not a multiple of 8) 1.
    block: usize,
    /// Per block: `[tap · input channel][channel in block]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// Offset of each (kernel row, kernel column, input channel) from a pixel's first tap.
    taps: Vec<usize>,
}

impl PackedConv {
    /// Packs an `O×I×K×K` filter and its bias for a consistent geometry of the same shape.
    pub fn new(
        geometry: ConvGeometry,
        weight_oihw: &[f32],
        bias: &[f32],
    ) -> Result<Self, ConvError> {
        let in_c = geometry.input[2];
        let out_c = geometry.output[2];
        let k = geometry.kernel;
        if !geometry.is_consistent() {
            return Err(ConvError::Geometry);
        }
        if weight_oihw.len() != out_c * in_c * k * k || bias.len() != out_c {
            return Err(ConvError::WeightSize);
        }
        Ok(Self::with_blocks(
            geometry,
            weight_oihw,
            bias,
            block_sizes(),
        ))
    }

    /// [`PackedConv::new`] with the first of `blocks` that divides the output channels (tests
    /// pack for every kernel, whatever this CPU's fastest is).
    fn with_blocks(
        geometry: ConvGeometry,
        weight_oihw: &[f32],
        bias: &[f32],
        blocks: &[usize],
    ) -> Self {
        let [_, in_w, in_c] = geometry.input;
        let out_c = geometry.output[2];
        let k = geometry.kernel;
        let block = blocks
            .iter()
            .copied()
            .find(|&b| out_c.is_multiple_of(b))
            .unwrap_or(1);
        let row = (in_w + 2 * geometry.input_border) * in_c;
        let mut taps = Vec::with_capacity(k * k * in_c);
        for ky in 0..k {
            for kx in 0..k {
                for ci in 0..in_c {
                    taps.push(ky * row + kx * in_c + ci);
                }
            }
        }
        let mut weights = Vec::with_capacity(out_c * taps.len());
        for first in (0..out_c).step_by(block) {
            for ky in 0..k {
                for kx in 0..k {
                    for ci in 0..in_c {
                        for co in first..first + block {
                            weights.push(weight_oihw[((co * in_c + ci) * k + ky) * k + kx]);
                        }
                    }
                }
            }
        }
        Self {
            geometry,
            depthwise: false,
            block,
            weights,
            bias: bias.to_vec(),
            taps,
        }
    }

    /// Packs a depthwise `C×1×K×K` filter (one per channel) and its bias.
    pub fn depthwise(
        geometry: ConvGeometry,
        weight: &[f32],
        bias: &[f32],
    ) -> Result<Self, ConvError> {
        let [_, in_w, c] = geometry.input;
        let k = geometry.kernel;
        if !geometry.is_consistent() || geometry.output[2] != c {
            return Err(ConvError::Geometry);
        }
        if weight.len() != c * k * k || bias.len() != c {
            return Err(ConvError::WeightSize);
        }
        let row = (in_w + 2 * geometry.input_border) * c;
        let taps = (0..k * k).map(|t| (t / k) * row + (t % k) * c).collect();
        let weights = (0..k * k)
            .flat_map(|t| (0..c).map(move |ch| weight[ch * k * k + t]))
            .collect();
        Ok(Self {
            geometry,
            depthwise: true,
            block: c,
            weights,
            bias: bias.to_vec(),
            taps,
        })
    }

    /// Whether it is a depthwise convolution.
    pub fn is_depthwise(&self) -> bool {
        self.depthwise
    }

    /// The geometry it was packed for.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
}

/// A residual input added before the ReLU: a buffer of the output's size with its own border.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    /// The bordered buffer.
    pub data: &'a [f32],
    /// Its border.
    pub border: usize,
}

/// One call of a kernel: a packed convolution over some of its output rows.
struct Job<'a> {
    packed: &'a PackedConv,
    /// The geometry run: the packed one, or for a 1×1 matrix product the same with another
    /// number of pixels ([`matmul`]).
    g: ConvGeometry,
    input: &'a [f32],
    /// Rows `rows` of the output buffer ([`OutputRows`]).
    output: &'a mut [f32],
    rows: Range<usize>,
    residual: Option<Residual<'a>>,
    relu: bool,
}

impl Job<'_> {
    /// Whether the buffers, rows and geometry fit together (all the kernels' pointer
    /// arithmetic assumes besides the packing).
    fn fits(&self) -> bool {
        let g = &self.g;
        let band = g
            .output_row_start(self.rows.end)
            .checked_sub(g.output_row_start(self.rows.start));
        self.rows.start < self.rows.end
            && self.rows.end <= g.output[0]
            && band == Some(self.output.len())
            && check_buffers(g, self.input, None, self.residual).is_ok()
    }

    /// Offset of the output band's first value in the whole output buffer.
    #[cfg(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_feature = "neon")
    ))]
    fn output_base(&self) -> usize {
        self.g.output_row_start(self.rows.start)
    }
}

/// Everything an architecture's tile kernel needs about one block of output channels: raw
/// pointers into the bordered buffers, whose arithmetic stays in the architecture files.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
struct Block<'a> {
    g: &'a ConvGeometry,
    input: *const f32,
    taps: &'a [usize],
    /// The block's packed weights (depthwise: the `[tap][channel]` array from its channel).
    weights: *const f32,
    /// The bias from the block's first channel.
    bias: *const f32,
    /// The job's output rows; an output offset `at` (whole-buffer) is `at − output_base` here.
    output: *mut f32,
    output_base: usize,
    residual: Option<(*const f32, usize)>,
    /// First output channel of the block.
    channel: usize,
    relu: bool,
}

#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
impl<'a> Block<'a> {
    /// The block of `job` whose first output channel is `channel`, with `weights` its packed
    /// weights.
    fn new(job: &'a mut Job<'_>, weights: &'a [f32], channel: usize) -> Self {
        let output_base = job.output_base();
        let output = job.output.as_mut_ptr();
        Self {
            g: &job.g,
            input: job.input.as_ptr(),
            taps: &job.packed.taps,
            weights: weights.as_ptr(),
            bias: job.packed.bias[channel..].as_ptr(),
            output,
            output_base,
            residual: job.residual.map(|r| (r.data.as_ptr(), r.border)),
            channel,
            relu: job.relu,
        }
    }
}

/// `(row, column)` of the `P` output pixels from raster index `first`. (Stepping from one
/// division instead of dividing per pixel measured no faster.)
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
#[inline(always)]
fn tile_coords<const P: usize>(first: usize, out_w: usize) -> [(usize, usize); P] {
    let mut coords = [(0, 0); P];
    for (p, c) in coords.iter_mut().enumerate() {
        *c = ((first + p) / out_w, (first + p) % out_w);
    }
    coords
}

/// Calls `tile(y, x, n)` for runs of up to `pixels` output pixels covering each row in turn:
/// the depthwise kernels' tiles, whose pixel addresses step by a constant within a row (no
/// division per pixel).
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
#[inline(always)]
fn row_tiles(
    out: [usize; 3],
    rows: Range<usize>,
    pixels: usize,
    mut tile: impl FnMut(usize, usize, usize),
) {
    let out_w = out[1];
    for y in rows {
        let mut x = 0;
        while x < out_w {
            let n = pixels.min(out_w - x);
            tile(y, x, n);
            x += n;
        }
    }
}

/// Calls `tile(first, n)` for runs of up to `pixels` output pixels of `rows` in raster order,
/// crossing rows freely: the register tiles of the packed convolution kernels.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
#[inline(always)]
fn raster_tiles(
    out: [usize; 3],
    rows: Range<usize>,
    pixels: usize,
    mut tile: impl FnMut(usize, usize),
) {
    let total = rows.end * out[1];
    let mut first = rows.start * out[1];
    while first < total {
        let n = pixels.min(total - first);
        tile(first, n);
        first += n;
    }
}

/// Why a convolution was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvError {
    /// A buffer's length does not match the geometry.
    BufferSize,
    /// The sizes, kernel, stride, padding and borders do not fit together.
    Geometry,
    /// The filter or bias does not have the geometry's number of values.
    WeightSize,
}

/// Whether the input, the whole output (when given) and the residual have the geometry's sizes.
fn check_buffers(
    g: &ConvGeometry,
    input: &[f32],
    output: Option<&[f32]>,
    residual: Option<Residual<'_>>,
) -> Result<(), ConvError> {
    let ok = g.is_consistent()
        && input.len() == ConvGeometry::buffer_len(g.input, g.input_border)
        && output.is_none_or(|o| o.len() == ConvGeometry::buffer_len(g.output, g.output_border))
        && residual.is_none_or(|r| r.data.len() == ConvGeometry::buffer_len(g.output, r.border));
    if ok {
        Ok(())
    } else {
        Err(ConvError::BufferSize)
    }
}

/// `output = relu?(conv(input) + bias + residual?)` by definition: the oracle of the tests.
/// Reads only the input's interior (padding is zero by definition, not by the border).
/// `depthwise`: one filter per channel (ONNX `group` = channels, weights `C×1×K×K`).
#[allow(clippy::too_many_arguments)]
pub fn conv_reference(
    g: &ConvGeometry,
    depthwise: bool,
    weight_oihw: &[f32],
    bias: &[f32],
    input: &[f32],
    output: &mut [f32],
    residual: Option<Residual<'_>>,
    relu: bool,
) -> Result<(), ConvError> {
    check_buffers(g, input, Some(output), residual)?;
    let [in_h, in_w, in_c] = g.input;
    let [out_h, out_w, out_c] = g.output;
    let k = g.kernel;
    for y in 0..out_h {
        for x in 0..out_w {
            for co in 0..out_c {
                let mut sum = bias[co];
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (y * g.stride + ky, x * g.stride + kx);
                        if iy < g.pad || ix < g.pad || iy - g.pad >= in_h || ix - g.pad >= in_w {
                            continue;
                        }
                        let at =
                            ConvGeometry::offset(g.input, g.input_border, iy - g.pad, ix - g.pad);
                        if depthwise {
                            sum += weight_oihw[(co * k + ky) * k + kx] * input[at + co];
                            continue;
                        }
                        for ci in 0..in_c {
                            sum +=
                                weight_oihw[((co * in_c + ci) * k + ky) * k + kx] * input[at + ci];
                        }
                    }
                }
                if let Some(r) = residual {
                    sum += r.data[ConvGeometry::offset(g.output, r.border, y, x) + co];
                }
                output[ConvGeometry::offset(g.output, g.output_border, y, x) + co] =
                    if relu { sum.max(0.0) } else { sum };
            }
        }
    }
    Ok(())
}

/// Output channels per packed block, largest first: what the fastest kernel of this CPU takes.
fn block_sizes() -> &'static [usize] {
    #[cfg(target_arch = "x86_64")]
    if x86_64::wide_blocks_available() {
        return &[64, 32, 16, 8, 1];
    }
    &[16, 8, 1]
}

/// Whether this CPU runs the vector kernel (elsewhere the plain loops would be slower than
/// tract, so the engine is not chosen by default).
pub fn fast_path_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::available()
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        aarch64::available()
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_feature = "neon")
    )))]
    {
        false
    }
}

/// Runs a packed convolution with the fastest kernel this CPU has; the result equals
/// [`conv_reference`] up to the order of the fp32 additions.
pub fn conv(
    packed: &PackedConv,
    input: &[f32],
    output: &mut [f32],
    residual: Option<Residual<'_>>,
    relu: bool,
) -> Result<(), ConvError> {
    let g = &packed.geometry;
    check_buffers(g, input, Some(output), residual)?;
    let band = g.output_row_start(0)..g.output_row_start(g.output[0]);
    let rows = OutputRows {
        rows: 0..g.output[0],
        data: &mut output[band],
    };
    conv_rows(packed, input, rows, residual, relu)
}

/// [`conv`] for some of the output rows only (one thread's share; [`ConvGeometry::output_bands`]).
pub fn conv_rows(
    packed: &PackedConv,
    input: &[f32],
    output: OutputRows<'_>,
    residual: Option<Residual<'_>>,
    relu: bool,
) -> Result<(), ConvError> {
    run(Job {
        packed,
        g: packed.geometry,
        input,
        output: output.data,
        rows: output.rows,
        residual,
        relu,
    })
}

/// A 1×1 convolution (stride 1, no padding, no borders, one row: a matrix product with the
/// packed filter) over `input.len() / in_c` pixels, however many it was packed for.
pub fn matmul(packed: &PackedConv, input: &[f32], output: &mut [f32]) -> Result<(), ConvError> {
    let g = packed.geometry;
    let (in_c, out_c) = (g.input[2], g.output[2]);
    let pixels = input.len() / in_c;
    let product = g.kernel == 1
        && g.stride == 1
        && g.pad == 0
        && g.input_border == 0
        && g.output_border == 0
        && g.input[0] == 1
        && !packed.depthwise;
    if !product || pixels == 0 || input.len() != pixels * in_c || output.len() != pixels * out_c {
        return Err(ConvError::BufferSize);
    }
    run(Job {
        packed,
        g: ConvGeometry {
            input: [1, pixels, in_c],
            output: [1, pixels, out_c],
            ..g
        },
        input,
        output,
        rows: 0..1,
        residual: None,
        relu: false,
    })
}

/// Runs a job with the fastest kernel this CPU has.
fn run(mut job: Job<'_>) -> Result<(), ConvError> {
    if !job.fits() {
        return Err(ConvError::BufferSize);
    }
    if job.packed.depthwise {
        #[cfg(target_arch = "x86_64")]
        if x86_64::depthwise(&mut job) {
            return Ok(());
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        if aarch64::depthwise(&mut job) {
            return Ok(());
        }
        depthwise_packed(&mut job);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if x86_64::conv(&mut job) {
        return Ok(());
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    if aarch64::conv(&mut job) {
        return Ok(());
    }
    conv_packed_portable(&mut job);
    Ok(())
}

/// A depthwise convolution with plain loops over the packed `[tap][channel]` weights.
fn depthwise_packed(job: &mut Job<'_>) {
    let Job {
        packed: p,
        g,
        input,
        residual,
        relu,
        ..
    } = *job;
    let base = g.output_row_start(job.rows.start);
    let [_, out_w, c] = g.output;
    let mut acc = vec![0.0_f32; c];
    for y in job.rows.clone() {
        for x in 0..out_w {
            let src = &input[g.input_offset(y, x)..];
            acc.copy_from_slice(&p.bias);
            for (&tap, w) in p.taps.iter().zip(p.weights.chunks_exact(c)) {
                for ((a, &wi), &v) in acc.iter_mut().zip(w).zip(&src[tap..tap + c]) {
                    *a = v.mul_add(wi, *a);
                }
            }
            if let Some(r) = residual {
                let at = ConvGeometry::offset(g.output, r.border, y, x);
                for (a, &v) in acc.iter_mut().zip(&r.data[at..at + c]) {
                    *a += v;
                }
            }
            let at = ConvGeometry::offset(g.output, g.output_border, y, x) - base;
            for (o, &a) in job.output[at..at + c].iter_mut().zip(&acc) {
                *o = if relu { a.max(0.0) } else { a };
            }
        }
    }
}

/// The packed layout run with plain loops: x86-64 hosts without AVX2/FMA, and channel counts
/// that are not a multiple of eight.
fn conv_packed_portable(job: &mut Job<'_>) {
    let Job {
        packed: p,
        g,
        input,
        residual,
        relu,
        ..
    } = *job;
    let base = g.output_row_start(job.rows.start);
    let [_, out_w, out_c] = g.output;
    let per_block = p.taps.len() * p.block;
    let mut acc = vec![0.0_f32; p.block];
    for y in job.rows.clone() {
        for x in 0..out_w {
            let src = &input[g.input_offset(y, x)..];
            let dst = ConvGeometry::offset(g.output, g.output_border, y, x) - base;
            for (b, weights) in p.weights.chunks_exact(per_block).enumerate() {
                let first = b * p.block;
                acc.copy_from_slice(&p.bias[first..first + p.block]);
                for (&tap, w) in p.taps.iter().zip(weights.chunks_exact(p.block)) {
                    let v = src[tap];
                    for (a, &wi) in acc.iter_mut().zip(w) {
                        *a += v * wi;
                    }
                }
                if let Some(r) = residual {
                    let at = ConvGeometry::offset(g.output, r.border, y, x) + first;
                    for (a, &v) in acc.iter_mut().zip(&r.data[at..at + p.block]) {
                        *a += v;
                    }
                }
                for (o, &a) in job.output[dst + first..dst + first + p.block]
                    .iter_mut()
                    .zip(&acc)
                {
                    *o = if relu { a.max(0.0) } else { a };
                }
            }
            debug_assert_eq!(out_c % p.block, 0);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::fixtures::pseudo_random_values as values;

    /// A bordered buffer whose interior is random and border zero.
    pub(crate) fn bordered(shape: [usize; 3], border: usize, seed: u32) -> Vec<f32> {
        let mut buf = vec![0.0; ConvGeometry::buffer_len(shape, border)];
        let v = values(shape.iter().product(), seed);
        let [h, w, c] = shape;
        for y in 0..h {
            for x in 0..w {
                let at = ConvGeometry::offset(shape, border, y, x);
                buf[at..at + c].copy_from_slice(&v[(y * w + x) * c..][..c]);
            }
        }
        buf
    }

    /// A job over every output row of a whole bordered output buffer.
    fn whole<'a>(
        packed: &'a PackedConv,
        input: &'a [f32],
        output: &'a mut [f32],
        residual: Option<Residual<'a>>,
        relu: bool,
    ) -> Job<'a> {
        let g = packed.geometry;
        let band = g.output_row_start(0)..g.output_row_start(g.output[0]);
        Job {
            packed,
            g,
            input,
            output: &mut output[band],
            rows: 0..g.output[0],
            residual,
            relu,
        }
    }

    #[test]
    fn a_convolution_run_in_bands_of_rows_equals_one_run_whole() {
        // Standard and depthwise, strides 1 and 2, a residual, borders on every buffer; bands
        // of one row, uneven bands, more parts than rows.
        for (i, &(cin, cout, k, stride, depthwise)) in [
            (8, 16, 3, 1, false),
            (16, 64, 3, 2, false),
            (3, 8, 7, 2, false),
            (16, 16, 3, 1, true),
        ]
        .iter()
        .enumerate()
        {
            let (h, w) = (9, 7);
            let pad = k / 2;
            let g = ConvGeometry {
                input: [h, w, cin],
                input_border: pad + 1,
                output: [
                    (h + 2 * pad - k) / stride + 1,
                    (w + 2 * pad - k) / stride + 1,
                    cout,
                ],
                output_border: 1,
                kernel: k,
                stride,
                pad,
            };
            let per_filter = if depthwise { 1 } else { cin };
            let weight = values(cout * per_filter * k * k, 31 + i as u32);
            let bias = values(cout, 37 + i as u32);
            let packed = if depthwise {
                PackedConv::depthwise(g, &weight, &bias).unwrap()
            } else {
                PackedConv::new(g, &weight, &bias).unwrap()
            };
            let input = bordered(g.input, g.input_border, 41 + i as u32);
            let res_buf = bordered(g.output, 2, 43 + i as u32);
            let residual = Some(Residual {
                data: &res_buf,
                border: 2,
            });
            let len = ConvGeometry::buffer_len(g.output, g.output_border);
            let mut want = vec![0.0; len];
            conv(&packed, &input, &mut want, residual, true).unwrap();
            for parts in [1, 2, 3, g.output[0], g.output[0] + 5] {
                let mut got = vec![0.0; len];
                let bands = g.output_bands(&mut got, parts);
                assert_eq!(bands.len(), parts.min(g.output[0]), "case {i}");
                for band in bands {
                    conv_rows(&packed, &input, band, residual, true).unwrap();
                }
                assert_eq!(want, got, "case {i}, {parts} parts");
            }
            // A band whose length does not match its rows is refused, not written.
            let mut out = vec![0.0; len];
            let band = OutputRows {
                rows: 1..3,
                data: &mut out[..10],
            };
            assert_eq!(
                conv_rows(&packed, &input, band, residual, true),
                Err(ConvError::BufferSize)
            );
        }
    }

    #[test]
    fn a_matrix_product_runs_on_any_number_of_pixels() {
        let (cin, cout, packed_pixels) = (16, 32, 20);
        let g = ConvGeometry {
            input: [1, packed_pixels, cin],
            input_border: 0,
            output: [1, packed_pixels, cout],
            output_border: 0,
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let weight = values(cout * cin, 51);
        let zeros = vec![0.0; cout];
        let packed = PackedConv::new(g, &weight, &zeros).unwrap();
        for pixels in [1, 7, packed_pixels, 45] {
            let input = values(pixels * cin, 53 + pixels as u32);
            let mut got = vec![0.0; pixels * cout];
            matmul(&packed, &input, &mut got).unwrap();
            for (p, row) in got.chunks_exact(cout).enumerate() {
                for (co, &v) in row.iter().enumerate() {
                    let want: f32 = (0..cin)
                        .map(|ci| weight[co * cin + ci] * input[p * cin + ci])
                        .sum();
                    assert!(
                        (want - v).abs() <= 1e-5 * cin as f32,
                        "{pixels} px ({p}, {co})"
                    );
                }
            }
        }
        let mut out = vec![0.0; 3 * cout];
        assert_eq!(
            matmul(&packed, &values(2 * cin, 1), &mut out),
            Err(ConvError::BufferSize)
        );
    }

    #[test]
    fn packed_kernels_equal_the_reference_on_every_tile_shape() {
        // Channel counts reach the 16-, 8- and 1-channel blocks, sizes every tile remainder.
        let cases = [
            (3, 8, 3, 1, 1, 9, 9),
            (8, 8, 3, 1, 1, 28, 5),
            (8, 16, 3, 2, 1, 11, 13),
            (8, 16, 1, 2, 0, 14, 14),
            (16, 32, 3, 1, 1, 7, 7),
            (32, 64, 3, 2, 1, 7, 7),
            (64, 64, 3, 1, 1, 4, 4),
            (5, 3, 3, 1, 1, 6, 5),
            (4, 24, 5, 1, 2, 3, 8),
        ];
        for (i, &(cin, cout, k, stride, pad, h, w)) in cases.iter().enumerate() {
            for (relu, with_residual, extra_border) in
                [(false, false, 0), (true, true, 1), (true, false, 2)]
            {
                let oh = (h + 2 * pad - k) / stride + 1;
                let ow = (w + 2 * pad - k) / stride + 1;
                let g = ConvGeometry {
                    input: [h, w, cin],
                    input_border: pad + extra_border,
                    output: [oh, ow, cout],
                    output_border: extra_border,
                    kernel: k,
                    stride,
                    pad,
                };
                assert!(g.is_consistent(), "case {i}");
                let weight = values(cout * cin * k * k, 7 + i as u32);
                let bias = values(cout, 11 + i as u32);
                let input = bordered(g.input, g.input_border, 13 + i as u32);
                let res_buf = bordered(g.output, 1, 17 + i as u32);
                let residual = with_residual.then_some(Residual {
                    data: &res_buf,
                    border: 1,
                });
                let len = ConvGeometry::buffer_len(g.output, g.output_border);
                let (mut want, mut got) = (vec![0.0; len], vec![0.0; len]);
                conv_reference(&g, false, &weight, &bias, &input, &mut want, residual, relu)
                    .unwrap();
                let packed = PackedConv::new(g, &weight, &bias).unwrap();
                conv(&packed, &input, &mut got, residual, relu).unwrap();
                let mut results = vec![("fastest", got)];
                // Every packing through the portable loops, and through the AVX2 kernel when
                // this CPU has it (here the AVX-512 one may take the wide blocks).
                for blocks in [&[64, 32, 16, 8, 1][..], &[16, 8, 1], &[8, 1], &[1]] {
                    let packed = PackedConv::with_blocks(g, &weight, &bias, blocks);
                    let mut out = vec![0.0; len];
                    conv_packed_portable(&mut whole(&packed, &input, &mut out, residual, relu));
                    results.push(("portable", out));
                    #[cfg(target_arch = "x86_64")]
                    {
                        let mut out = vec![0.0; len];
                        if x86_64::conv_avx2(&mut whole(&packed, &input, &mut out, residual, relu))
                        {
                            results.push(("avx2", out));
                        }
                    }
                    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
                    {
                        let mut out = vec![0.0; len];
                        if aarch64::conv(&mut whole(&packed, &input, &mut out, residual, relu)) {
                            results.push(("neon", out));
                        }
                    }
                }
                let tol = 1e-5 * (cin * k * k) as f32;
                for (kernel, got) in &results {
                    for (j, (a, b)) in want.iter().zip(got).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "case {i} {kernel} relu {relu} residual {with_residual}: [{j}] {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_kernels_equal_the_reference() {
        for (i, &(c, k, stride, pad, h, w)) in [
            (16, 3, 1, 1, 9, 7),
            (16, 3, 2, 1, 9, 7),
            (8, 5, 1, 2, 6, 6),
            (12, 3, 1, 0, 5, 4),
        ]
        .iter()
        .enumerate()
        {
            for (relu, with_residual) in [(false, false), (true, true)] {
                let g = ConvGeometry {
                    input: [h, w, c],
                    input_border: pad + 1,
                    output: [
                        (h + 2 * pad - k) / stride + 1,
                        (w + 2 * pad - k) / stride + 1,
                        c,
                    ],
                    output_border: 1,
                    kernel: k,
                    stride,
                    pad,
                };
                let weight = values(c * k * k, 3 + i as u32);
                let bias = values(c, 5 + i as u32);
                let input = bordered(g.input, g.input_border, 7 + i as u32);
                let res_buf = bordered(g.output, 0, 9 + i as u32);
                let residual = with_residual.then_some(Residual {
                    data: &res_buf,
                    border: 0,
                });
                let len = ConvGeometry::buffer_len(g.output, g.output_border);
                let (mut want, mut got) = (vec![0.0; len], vec![0.0; len]);
                conv_reference(&g, true, &weight, &bias, &input, &mut want, residual, relu)
                    .unwrap();
                let packed = PackedConv::depthwise(g, &weight, &bias).unwrap();
                conv(&packed, &input, &mut got, residual, relu).unwrap();
                for (j, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (k * k) as f32,
                        "case {i}: [{j}] {a} vs {b}"
                    );
                }
            }
        }
        let g = ConvGeometry {
            input: [4, 4, 8],
            input_border: 1,
            output: [4, 4, 8],
            output_border: 0,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        assert_eq!(
            PackedConv::depthwise(g, &[0.0; 8 * 8 * 9], &[0.0; 8]).unwrap_err(),
            ConvError::WeightSize
        );
    }

    #[test]
    fn wrong_buffer_sizes_are_refused_not_read() {
        let g = ConvGeometry {
            input: [4, 4, 8],
            input_border: 1,
            output: [4, 4, 8],
            output_border: 0,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let packed = PackedConv::new(g, &[0.0; 8 * 8 * 9], &[0.0; 8]).unwrap();
        let mut out = vec![0.0; 4 * 4 * 8];
        assert_eq!(
            conv(&packed, &[0.0; 10], &mut out, None, false),
            Err(ConvError::BufferSize)
        );
        let bad = ConvGeometry {
            input_border: 0,
            ..g
        };
        assert!(!bad.is_consistent(), "a border narrower than the padding");
    }
}
