//! The model's convolutions, forward and backward, on burn's CPU training backend
//! (`Autodiff<Flex>`).
//!
//! Written here, not taken from burn, because burn-flex 0.21's convolution gradients are where
//! a CPU training step went: the input gradient is a `conv_transpose2d` that runs one sample
//! after another on one thread with a branchy scalar col2im, and the weight gradient is a
//! `conv2d` over batch/channel-swapped tensors that flex first copies element by element
//! through its generic strided iterator. Profiled on a SimCLR step (2 cores), those two serial
//! parts were ~70 % of the main thread's time (docs/benchmarks.md). Here both gradients come
//! from one pass over the batch in fixed chunks of samples spread over rayon's threads: per
//! chunk the samples' im2col matrices side by side, one gemm for the chunk's weight gradient,
//! one gemm for the columns' gradient and a col2im per sample over contiguous rows. The forward
//! pass is the same im2col + one gemm per chunk (it also saves flex's serial layout conversion).
//! On x86-64 with AVX2, the 3×3 stride-1 layers of maps at least 8 wide skip im2col altogether:
//! forward, input and weight gradients come from [`super::direct`].
//!
//! Only what the ResNets use takes this path: `f32`, no bias, one group, no dilation, the same
//! explicit padding on every side. Anything else, and every other backend, goes through burn's
//! `Conv2d::forward` unchanged ([`forward`] decides per call).

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::direct;
use super::matmul::matmul;
use super::output_buffer::par_filled;

/// The training backend this module speeds up.
pub(crate) type Train = Autodiff<Flex>;

/// Samples per chunk are fixed by the layer and batch shapes alone, so the weight gradient's
/// summation order, and with it every bit of a training run, does not depend on how rayon
/// schedules the chunks: `--resume` reproduces a run exactly. A chunk holds enough samples for
/// about this many output positions side by side (deep layers have 16–64 per sample, too few
/// for an efficient matrix product), one sample where a sample alone has more...
const CHUNK_POSITIONS: usize = 256;

/// ...and at most the batch over this many (so there is work for several threads).
const MIN_CHUNKS: usize = 16;

/// A convolution's stride and padding (square kernels or not; dilation 1, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero padding above/below and left/right.
    pub padding: [usize; 2],
}

impl ConvSpec {
    /// The spec of a layer this module handles, or `None` (bias, groups, dilation or
    /// asymmetric padding: burn's path).
    pub fn of<B: Backend>(conv: &Conv2d<B>) -> Option<Self> {
        let PaddingConfig2d::Explicit(top, left, bottom, right) = conv.padding else {
            return None;
        };
        (conv.bias.is_none()
            && conv.groups == 1
            && conv.dilation == [1, 1]
            && top == bottom
            && left == right)
            .then_some(Self {
                stride: conv.stride,
                padding: [top, left],
            })
    }
}

/// `conv.forward(x)`: through this module when `B` is `Autodiff<Flex>` and the layer and
/// shapes are ones it handles, through burn otherwise (which also reports impossible shapes).
pub fn forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(spec) = ConvSpec::of(conv) else {
        return conv.forward(x);
    };
    let weight = conv.weight.val();
    let [batch, _, h, w] = x.dims();
    let [_, _, kh, kw] = weight.dims();
    let fits = |size: usize, k: usize, pad: usize| size + 2 * pad >= k;
    if TypeId::of::<B>() != TypeId::of::<Train>()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || batch == 0
        || !fits(h, kh, spec.padding[0])
        || !fits(w, kw, spec.padding[1])
    {
        return conv.forward(x);
    }
    let (Ok(x), Ok(weight)) = (
        cast::<_, Tensor<Train, 4>>(x),
        cast::<_, Tensor<Train, 4>>(weight),
    ) else {
        unreachable!("B is Autodiff<Flex>, checked above");
    };
    match cast(conv2d(x, weight, spec)) {
        Ok(y) => y,
        Err(_) => unreachable!("B is Autodiff<Flex>, checked above"),
    }
}

/// `value` as a `U` when `T` and `U` are the same type (a checked, safe downcast).
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(boxed) => match boxed.downcast::<T>() {
            Ok(t) => Err(*t),
            Err(_) => unreachable!("a box holds the type it was made from"),
        },
    }
}

/// A tracked convolution: this module's forward pass and gradients.
pub fn conv2d(x: Tensor<Train, 4>, weight: Tensor<Train, 4>, spec: ConvSpec) -> Tensor<Train, 4> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let output = match Conv2dBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            prep.finish(
                (x_state, weight_state, spec),
                convolve(&x.primitive, &weight.primitive, spec),
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(convolve(&x.primitive, &weight.primitive, spec)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 2> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvSpec);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, spec) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
        let (x_grad, weight_grad) = gradients(
            &x,
            &weight,
            &grad,
            spec,
            node_x.is_some(),
            node_weight.is_some(),
        );
        if let (Some(node), Some(g)) = (node_x, x_grad) {
            grads.register::<Flex>(node.id, g);
        }
        if let (Some(node), Some(g)) = (node_weight, weight_grad) {
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// Shapes of one convolution, `N×Ci×H×W` ⊛ `Co×Ci×Kh×Kw` → `N×Co×Ho×Wo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels, height, width.
    pub input: [usize; 3],
    /// Output channels, height, width.
    pub output: [usize; 3],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride and padding.
    pub spec: ConvSpec,
}

impl Geometry {
    /// Rows of the im2col matrix (`Ci·Kh·Kw`).
    fn patch_len(&self) -> usize {
        self.input[0] * self.kernel[0] * self.kernel[1]
    }

    /// A 3×3 kernel, stride 1, padding 1 (the output the input's size): the ResNets' usual
    /// convolution, which [`im2col`] and [`col2im`] handle with their own loops.
    fn is_3x3_same(&self) -> bool {
        self.kernel == [3, 3]
            && self.spec.stride == [1, 1]
            && self.spec.padding == [1, 1]
            && self.input[2] >= 2
            && self.output[1..] == self.input[1..]
    }

    /// Output positions per channel (`Ho·Wo`).
    fn positions(&self) -> usize {
        self.output[1] * self.output[2]
    }

    fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    fn output_len(&self) -> usize {
        self.output.iter().product()
    }

    /// The output positions `o` along one axis whose input `o·stride + offset − pad` lies in
    /// `0..size`, as a range (empty when none does).
    fn valid_outputs(
        out: usize,
        stride: usize,
        offset: usize,
        pad: usize,
        size: usize,
    ) -> (usize, usize) {
        let first = pad.saturating_sub(offset).div_ceil(stride);
        let end = (size + pad)
            .saturating_sub(offset)
            .div_ceil(stride)
            .min(out);
        (first.min(end), end)
    }

    /// Calls `row` with the plan of every im2col row `r = (ci·Kh + ky)·Kw + kx`: the output rows
    /// and columns whose input position `(oy·sy + ky − py, ox·sx + kx − px)` lies inside the
    /// image, and the input column of the first such output column.
    fn for_each_row(&self, mut row: impl FnMut(RowPlan)) {
        let [ci_count, height, width] = self.input;
        let [_, out_h, out_w] = self.output;
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.spec.stride;
        let [py, px] = self.spec.padding;
        for ci in 0..ci_count {
            for ky in 0..kh {
                let (oy_first, oy_end) = Self::valid_outputs(out_h, sy, ky, py, height);
                for kx in 0..kw {
                    let r = (ci * kh + ky) * kw + kx;
                    let (ox_first, ox_end) = Self::valid_outputs(out_w, sx, kx, px, width);
                    row(RowPlan {
                        r,
                        ci,
                        oy: (oy_first, oy_end),
                        ox: (ox_first, ox_end),
                        iy_of: (ky, py, sy),
                        ix_start: (ox_first * sx + kx).wrapping_sub(px),
                    });
                }
            }
        }
    }
}

/// One im2col row's valid region (see [`Geometry::for_each_row`]).
struct RowPlan {
    r: usize,
    ci: usize,
    oy: (usize, usize),
    ox: (usize, usize),
    /// `iy = oy·sy + ky − py`.
    iy_of: (usize, usize, usize),
    /// Input column of `ox.0`.
    ix_start: usize,
}

impl RowPlan {
    fn iy(&self, oy: usize) -> usize {
        let (ky, py, sy) = self.iy_of;
        oy * sy + ky - py
    }
}

/// im2col of one sample: `cols[r·row_stride + oy·Wo + ox] = x[ci][oy·sy + ky − py][ox·sx + kx − px]`
/// for each row `r = (ci·Kh + ky)·Kw + kx`, zero where that falls in the padding. A row stride
/// larger than `Ho·Wo` lays several samples side by side (the caller offsets `cols`).
pub fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32], row_stride: usize) {
    if g.is_3x3_same() {
        return im2col_3x3_same(g, x, cols, row_stride);
    }
    im2col_general(g, x, cols, row_stride);
}

/// [`im2col`] for any geometry.
fn im2col_general(g: &Geometry, x: &[f32], cols: &mut [f32], row_stride: usize) {
    let [_, height, width] = g.input;
    let out_w = g.output[2];
    let positions = g.positions();
    let sx = g.spec.stride[1];
    g.for_each_row(|plan| {
        let row = &mut cols[plan.r * row_stride..][..positions];
        let (first, end) = plan.ox;
        if first >= end {
            row.fill(0.0);
            return;
        }
        row[..plan.oy.0 * out_w].fill(0.0);
        row[plan.oy.1 * out_w..].fill(0.0);
        for oy in plan.oy.0..plan.oy.1 {
            let src = &x[(plan.ci * height + plan.iy(oy)) * width..][..width];
            let dst = &mut row[oy * out_w..][..out_w];
            dst[..first].fill(0.0);
            dst[end..].fill(0.0);
            let dst = &mut dst[first..end];
            if sx == 1 {
                dst.copy_from_slice(&src[plan.ix_start..plan.ix_start + (end - first)]);
            } else {
                gather_strided(dst, &src[plan.ix_start..], sx);
            }
        }
    });
}

/// col2im of one sample, the adjoint of [`im2col`] (same row stride): adds every column entry
/// into the input position it was read from (`dx` must start at zero).
pub fn col2im(g: &Geometry, cols: &[f32], row_stride: usize, dx: &mut [f32]) {
    if g.is_3x3_same() {
        return col2im_3x3_same(g, cols, row_stride, dx);
    }
    col2im_general(g, cols, row_stride, dx);
}

/// [`col2im`] for any geometry.
fn col2im_general(g: &Geometry, cols: &[f32], row_stride: usize, dx: &mut [f32]) {
    let [_, height, width] = g.input;
    let out_w = g.output[2];
    let positions = g.positions();
    let sx = g.spec.stride[1];
    g.for_each_row(|plan| {
        let (first, end) = plan.ox;
        if first >= end {
            return;
        }
        let row = &cols[plan.r * row_stride..][..positions];
        for oy in plan.oy.0..plan.oy.1 {
            let dst = &mut dx[(plan.ci * height + plan.iy(oy)) * width..][..width];
            let src = &row[oy * out_w..][first..end];
            if sx == 1 {
                for (d, s) in dst[plan.ix_start..plan.ix_start + (end - first)]
                    .iter_mut()
                    .zip(src)
                {
                    *d += *s;
                }
            } else {
                scatter_add_strided(&mut dst[plan.ix_start..], src, sx);
            }
        }
    });
}

/// `dst[i] = src[i · step]` for every `i` of `dst`. Step 2 (the stride-2 layers) walks `src`
/// in pairs, which the compiler vectorises: the `step_by` loop, one element per iteration,
/// was half of im2col's time (profiled).
fn gather_strided(dst: &mut [f32], src: &[f32], step: usize) {
    if step == 2 && !dst.is_empty() {
        let last = dst.len() - 1;
        for (d, pair) in dst[..last].iter_mut().zip(src.chunks_exact(2)) {
            *d = pair[0];
        }
        dst[last] = src[2 * last];
        return;
    }
    for (d, s) in dst.iter_mut().zip(src.iter().step_by(step)) {
        *d = *s;
    }
}

/// `dst[i · step] += src[i]` for every `i` of `src`, the adjoint of [`gather_strided`].
fn scatter_add_strided(dst: &mut [f32], src: &[f32], step: usize) {
    if step == 2 && !src.is_empty() {
        let last = src.len() - 1;
        for (pair, s) in dst.chunks_exact_mut(2).zip(&src[..last]) {
            pair[0] += s;
        }
        dst[2 * last] += src[last];
        return;
    }
    for (d, s) in dst.iter_mut().step_by(step).zip(src) {
        *d += *s;
    }
}

/// [`im2col`] for [`Geometry::is_3x3_same`]: per input row, the three rows `kx = 0, 1, 2`
/// (the row shifted right by one, as is, shifted left by one) written in one loop. The general
/// loop's per-segment `fill` and `copy_from_slice` of one to 32 values were calls to `memset`
/// and `memmove` (~8 % of a SimCLR step at 32 px, profiled).
fn im2col_3x3_same(g: &Geometry, x: &[f32], cols: &mut [f32], row_stride: usize) {
    let [channels, height, width] = g.input;
    let positions = height * width;
    for ci in 0..channels {
        for ky in 0..3 {
            let r = (ci * 3 + ky) * 3;
            let (left, rest) = cols[r * row_stride..].split_at_mut(row_stride);
            let (middle, right) = rest.split_at_mut(row_stride);
            let rows = (&mut left[..positions], &mut middle[..positions]);
            let (left, middle, right) = (rows.0, rows.1, &mut right[..positions]);
            for oy in 0..height {
                let span = oy * width..(oy + 1) * width;
                let (l, m, r) = (
                    &mut left[span.clone()],
                    &mut middle[span.clone()],
                    &mut right[span],
                );
                // Input row oy + ky − 1; zero above and below the image.
                let Some(iy) = (oy + ky).checked_sub(1).filter(|&iy| iy < height) else {
                    l.fill(0.0);
                    m.fill(0.0);
                    r.fill(0.0);
                    continue;
                };
                let src = &x[(ci * height + iy) * width..][..width];
                l[0] = 0.0;
                m[0] = src[0];
                r[0] = src[1];
                let last = width - 1;
                // Equal-length slices zipped: no bounds check per element, vectorised.
                let inner = l[1..last]
                    .iter_mut()
                    .zip(&mut m[1..last])
                    .zip(&mut r[1..last]);
                let shifted = src[..last - 1].iter().zip(&src[1..last]).zip(&src[2..]);
                for (((l, m), r), ((&before, &at), &after)) in inner.zip(shifted) {
                    (*l, *m, *r) = (before, at, after);
                }
                l[last] = src[last - 1];
                m[last] = src[last];
                r[last] = 0.0;
            }
        }
    }
}

/// [`col2im`] for [`Geometry::is_3x3_same`]: per input row, the three shifted rows added in
/// one loop, in the general loop's order (`kx = 0, 1, 2` for each `ky`), so the sums are the
/// same.
fn col2im_3x3_same(g: &Geometry, cols: &[f32], row_stride: usize, dx: &mut [f32]) {
    let [channels, height, width] = g.input;
    let positions = height * width;
    for ci in 0..channels {
        for ky in 0..3 {
            let r = (ci * 3 + ky) * 3;
            let left = &cols[r * row_stride..][..positions];
            let middle = &cols[(r + 1) * row_stride..][..positions];
            let right = &cols[(r + 2) * row_stride..][..positions];
            for oy in 0..height {
                let Some(iy) = (oy + ky).checked_sub(1).filter(|&iy| iy < height) else {
                    continue;
                };
                let span = oy * width..(oy + 1) * width;
                let (l, m, r) = (&left[span.clone()], &middle[span.clone()], &right[span]);
                let dst = &mut dx[(ci * height + iy) * width..][..width];
                // Input column ix received l[ix + 1], m[ix] and r[ix − 1].
                dst[0] = (dst[0] + l[1]) + m[0];
                let last = width - 1;
                let sources = l[2..].iter().zip(&m[1..last]).zip(&r[..last - 1]);
                for (d, ((&l, &m), &r)) in dst[1..last].iter_mut().zip(sources) {
                    *d = ((*d + l) + m) + r;
                }
                dst[last] = (dst[last] + m[last]) + r[last - 1];
            }
        }
    }
}

/// Samples per chunk for a layer with `positions` outputs per channel (see [`CHUNK_POSITIONS`]).
fn chunk_samples(positions: usize, batch: usize) -> usize {
    (CHUNK_POSITIONS / positions.max(1)).clamp(1, batch.div_ceil(MIN_CHUNKS).max(1))
}

/// `y = conv(x, w)` on plain slices (`x` `N×Ci×H×W`, `w` `Co×Ci×Kh×Kw`, contiguous): per chunk of
/// samples one im2col matrix and one matrix product, chunks on rayon's threads.
pub fn convolve_f32(g: &Geometry, batch: usize, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let co = g.output[0];
    if g.is_3x3_same() && direct::applies(g.input[2], g.input[0], co) {
        return direct::conv3x3_same(batch, g.input, co, x, weight);
    }
    let k = g.patch_len();
    let l = g.positions();
    let (x_len, y_len) = (g.input_len(), g.output_len());
    let chunk = chunk_samples(l, batch);
    par_filled(batch * y_len, chunk * y_len, |i, y_chunk| {
        let first = i * chunk;
        let samples = chunk.min(batch - first);
        let wide = samples * l;
        let y_wide_len = if samples == 1 { 0 } else { co * wide };
        with_scratch([k * wide, y_wide_len], |cols, y_wide| {
            for s in 0..samples {
                im2col(
                    g,
                    &x[(first + s) * x_len..][..x_len],
                    &mut cols[s * l..],
                    wide,
                );
            }
            if samples == 1 {
                let y_n = y_chunk.zeros(y_len);
                matmul([co, l, k], (y_n, [l, 1]), weight, [k, 1], cols, [l, 1]);
                return;
            }
            // y (Co×S·L) = w (Co×K) · cols (K×S·L), then back to N×Co×L.
            matmul(
                [co, wide, k],
                (y_wide, [wide, 1]),
                weight,
                [k, 1],
                cols,
                [wide, 1],
            );
            for s in 0..samples {
                for c in 0..co {
                    y_chunk.extend_from_slice(&y_wide[c * wide + s * l..][..l]);
                }
            }
        });
    })
    .0
}

thread_local! {
    /// Per-thread scratch (im2col matrices, side-by-side outputs) kept between calls: fresh
    /// megabyte buffers per chunk cost page faults on first touch and TLB shootdowns when
    /// freed (~7 % of a step, profiled).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 2]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` on this thread's two scratch buffers, sized `lens` (contents unspecified: callers
/// overwrite them). Falls back to fresh buffers if the scratch is already in use.
fn with_scratch<R>(lens: [usize; 2], f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let [a, b] = &mut *buffers;
            for (buffer, &len) in [&mut *a, &mut *b].into_iter().zip(&lens) {
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
            }
            f(&mut a[..lens[0]], &mut b[..lens[1]])
        }
        Err(_) => f(&mut vec![0.0; lens[0]], &mut vec![0.0; lens[1]]),
    })
}

/// The input and weight gradients of `y = conv(x, w)` given `dy`, plain slices: `x` is
/// `N×Ci×H×W`, `w` is `Co×Ci×Kh×Kw`, `dy` is `N×Co×Ho×Wo`, all contiguous.
pub fn gradients_f32(
    g: &Geometry,
    batch: usize,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_x: bool,
    want_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let co = g.output[0];
    let k = g.patch_len();
    let l = g.positions();
    let x_len = g.input_len();
    // The input gradient of a 3×3 same convolution without col2im (`direct`); the
    // chunks below then compute only the weight gradient.
    let direct_dx = want_x && g.is_3x3_same() && direct::applies(g.input[2], co, g.input[0]);
    let want_x = want_x && !direct_dx;
    // Likewise the weight gradient, as a correlation of `dy` with the shifted input planes.
    let direct_dw = want_weight && g.is_3x3_same() && direct::applies(g.input[2], g.input[0], co);
    let want_weight = want_weight && !direct_dw;
    let mut dx = None;
    let chunk = chunk_samples(l, batch);
    // Each chunk's weight gradient apart, summed below in chunk order: the same bits whatever
    // the thread count or schedule. The input gradient is written in place, unzeroed memory
    // cleared chunk by chunk on the threads that fill it (col2im adds into it).
    let run = |i: usize, dx_chunk: Option<&mut [f32]>| -> Option<Vec<f32>> {
        let mut dw = want_weight.then(|| vec![0.0f32; co * k]);
        let (first, samples) = (i * chunk, chunk.min(batch - i * chunk));
        chunk_gradients(
            g,
            (first, samples),
            (x, weight, dy),
            dx_chunk,
            dw.as_deref_mut(),
        );
        dw
    };
    let partial: Vec<Option<Vec<f32>>> = if want_x {
        let (filled, partial) = par_filled(batch * x_len, chunk * x_len, |i, writer| {
            let samples = chunk.min(batch - i * chunk);
            run(i, Some(writer.zeros(samples * x_len)))
        });
        dx = Some(filled);
        partial
    } else if want_weight {
        (0..batch.div_ceil(chunk))
            .into_par_iter()
            .map(|i| run(i, None))
            .collect()
    } else {
        Vec::new()
    };
    let dw = want_weight.then(|| {
        let mut total = vec![0.0f32; co * k];
        for part in partial.iter().flatten() {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
        total
    });
    let dw = if direct_dw {
        Some(direct::conv3x3_same_weight_gradient(
            batch, g.input, co, x, dy,
        ))
    } else {
        dw
    };
    if direct_dx {
        dx = Some(direct::conv3x3_same_input_gradient(
            batch, g.input, co, dy, weight,
        ));
    }
    (dx, dw)
}

/// One chunk of `samples` samples from `first`, side by side: their im2col matrices as one
/// `K × S·L` matrix and their output gradients as one `Co × S·L`, so each gradient is one
/// matrix product per chunk (deep layers have only 16–64 positions per sample: per-sample
/// products would be mostly packing). Writes the chunk's weight gradient into `dw` and its
/// samples' input gradients into `dx_chunk` (each when given).
fn chunk_gradients(
    g: &Geometry,
    (first, samples): (usize, usize),
    (x, weight, dy): (&[f32], &[f32], &[f32]),
    dx_chunk: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
) {
    let co = g.output[0];
    let k = g.patch_len();
    let l = g.positions();
    let (x_len, y_len) = (g.input_len(), g.output_len());
    let wide = samples * l;
    // A lone sample's dy already is its `Co × L` matrix; only side-by-side ones are copied.
    let dy_wide_len = if samples == 1 { 0 } else { co * wide };
    with_scratch([k * wide, dy_wide_len], |cols, dy_wide| {
        let dy_chunk: &[f32] = if samples == 1 {
            &dy[first * y_len..][..y_len]
        } else {
            for s in 0..samples {
                let dy_n = &dy[(first + s) * y_len..][..y_len];
                for (c, row) in dy_n.chunks_exact(l).enumerate() {
                    dy_wide[c * wide + s * l..][..l].copy_from_slice(row);
                }
            }
            dy_wide
        };
        if let Some(dw) = dw {
            for s in 0..samples {
                im2col(
                    g,
                    &x[(first + s) * x_len..][..x_len],
                    &mut cols[s * l..],
                    wide,
                );
            }
            // dWᵀ (K×Co) = cols (K×S·L) · dyᵀ (S·L×Co), written as dW: gemm ran this
            // orientation up to 1.3× faster for the shallow layers' few channels.
            matmul(
                [k, co, wide],
                (dw, [1, k]),
                cols,
                [wide, 1],
                dy_chunk,
                [1, wide],
            );
        }
        if let Some(dx_chunk) = dx_chunk {
            // dcols (K×S·L) = wᵀ (K×Co) · dy (Co×S·L), then each sample's col2im.
            matmul(
                [k, wide, co],
                (cols, [wide, 1]),
                weight,
                [1, k],
                dy_chunk,
                [wide, 1],
            );
            for (s, dx_n) in dx_chunk.chunks_exact_mut(x_len).enumerate() {
                col2im(g, &cols[s * l..], wide, dx_n);
            }
        }
    });
}

/// The geometry of `x ⊛ weight` (`x` `N×Ci×H×W`, `weight` `Co×Ci×Kh×Kw`) and the batch size.
fn geometry(x: &FlexTensor, weight: &FlexTensor, spec: ConvSpec) -> (Geometry, usize) {
    let dims = |t: &FlexTensor| -> [usize; 4] {
        let s = t.layout().shape();
        [s[0], s[1], s[2], s[3]]
    };
    let [batch, ci, h, w] = dims(x);
    let [co, _, kh, kw] = dims(weight);
    let out = |size: usize, k: usize, stride: usize, pad: usize| (size + 2 * pad - k) / stride + 1;
    let geometry = Geometry {
        input: [ci, h, w],
        output: [
            co,
            out(h, kh, spec.stride[0], spec.padding[0]),
            out(w, kw, spec.stride[1], spec.padding[1]),
        ],
        kernel: [kh, kw],
        spec,
    };
    (geometry, batch)
}

fn flex_tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// [`convolve_f32`] on flex tensors.
fn convolve(x: &FlexTensor, weight: &FlexTensor, spec: ConvSpec) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let (g, batch) = geometry(&x, &weight, spec);
    let y = convolve_f32(&g, batch, x.storage::<f32>(), weight.storage::<f32>());
    flex_tensor(y, [batch, g.output[0], g.output[1], g.output[2]])
}

/// [`gradients_f32`] on flex tensors.
fn gradients(
    x: &FlexTensor,
    weight: &FlexTensor,
    dy: &FlexTensor,
    spec: ConvSpec,
    want_x: bool,
    want_weight: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (x, weight, dy) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        dy.to_contiguous(),
    );
    let (g, batch) = geometry(&x, &weight, spec);
    let (dx, dw) = gradients_f32(
        &g,
        batch,
        x.storage::<f32>(),
        weight.storage::<f32>(),
        dy.storage::<f32>(),
        want_x,
        want_weight,
    );
    let [ci, h, w] = g.input;
    let [co, kh, kw] = [g.output[0], g.kernel[0], g.kernel[1]];
    (
        dx.map(|d| flex_tensor(d, [batch, ci, h, w])),
        dw.map(|d| flex_tensor(d, [co, ci, kh, kw])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    /// Output, and gradients of `sum(conv(x) · r)` w.r.t. `x` and the weight, by burn's own
    /// convolution and by this module's, for the same layer and data.
    fn both_gradients(
        [n, ci, h, w]: [usize; 4],
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> [[Vec<f32>; 3]; 2] {
        let device = Default::default();
        let layer: Conv2d<Train> = Conv2dConfig::new([ci, co], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(&device);
        let x = Tensor::<Train, 4>::random([n, ci, h, w], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = x.clone().detach().require_grad();
            let layer = Conv2d {
                weight: Param::from_tensor(layer.weight.val().detach().require_grad()),
                ..layer.clone()
            };
            let y = if ours {
                forward(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let r = Tensor::<Train, 4>::ones(y.dims(), &device).mul(y.clone().detach().cos());
            let grads = (y.clone() * r).sum().backward();
            let dx = x
                .grad(&grads)
                .expect("x gradient")
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let dw = layer
                .weight
                .val()
                .grad(&grads)
                .expect("weight gradient")
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            [y.into_data().to_vec::<f32>().unwrap(), dx, dw]
        };
        [run(false), run(true)]
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        crate::model::assert_close_relative(what, a, b, 1e-4);
    }

    #[test]
    fn outputs_and_gradients_match_burns_convolution_for_every_resnet_layer_kind() {
        // (input, output channels, kernel, stride, padding): 3×3 same, 3×3 stride 2, 1×1,
        // 1×1 stride 2 (shortcut), the 7×7/2 ImageNet stem, odd sizes and one sample.
        let cases = [
            ([3, 4, 9, 9], 5, 3, 1, 1),
            ([2, 3, 10, 7], 4, 3, 2, 1),
            ([2, 6, 5, 5], 3, 1, 1, 0),
            ([3, 4, 9, 8], 6, 1, 2, 0),
            ([2, 3, 15, 15], 4, 7, 2, 3),
            ([1, 2, 4, 4], 2, 3, 1, 1),
            ([20, 2, 3, 3], 3, 3, 1, 1),
        ];
        for (input, co, k, stride, pad) in cases {
            let [burns, ours] = both_gradients(input, co, k, stride, pad);
            let case = format!("{input:?} co {co} k {k} s {stride} p {pad}");
            let [(y_burn, dx_burn, dw_burn), (y_ours, dx_ours, dw_ours)] =
                [burns, ours].map(|[y, dx, dw]| (y, dx, dw));
            assert_close(&format!("y {case}"), &y_burn, &y_ours);
            assert_close(&format!("dx {case}"), &dx_burn, &dx_ours);
            assert_close(&format!("dw {case}"), &dw_burn, &dw_ours);
        }
    }

    #[test]
    fn three_by_three_same_loops_equal_the_general_ones_bit_for_bit() {
        // Widths 2 (no interior column), 3 and 7, several channels, samples side by side.
        for (channels, height, width) in [(2, 3, 2), (3, 4, 3), (2, 5, 7)] {
            let g = Geometry {
                input: [channels, height, width],
                output: [4, height, width],
                kernel: [3, 3],
                spec: ConvSpec {
                    stride: [1, 1],
                    padding: [1, 1],
                },
            };
            assert!(g.is_3x3_same());
            let positions = height * width;
            let row_stride = positions + 5;
            let x: Vec<f32> = (0..g.input_len())
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let rows = g.patch_len();
            let (mut fast, mut general) =
                (vec![9.0; rows * row_stride], vec![9.0; rows * row_stride]);
            im2col(&g, &x, &mut fast, row_stride);
            im2col_general(&g, &x, &mut general, row_stride);
            for r in 0..rows {
                let span = r * row_stride..r * row_stride + positions;
                assert_eq!(fast[span.clone()], general[span], "im2col row {r}");
            }
            let cols: Vec<f32> = (0..rows * row_stride)
                .map(|i| (i as f32 * 0.11).cos())
                .collect();
            let base: Vec<f32> = (0..g.input_len()).map(|i| i as f32 * 0.01).collect();
            let (mut fast, mut general) = (base.clone(), base);
            col2im(&g, &cols, row_stride, &mut fast);
            col2im_general(&g, &cols, row_stride, &mut general);
            assert_eq!(fast, general, "col2im {channels}×{height}×{width}");
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> = <x, col2im(c)> for every geometry the model uses.
        for (input, kernel, stride, padding) in [
            ([2, 5, 6], [3, 3], [1, 1], [1, 1]),
            ([2, 6, 5], [3, 3], [2, 2], [1, 1]),
            ([1, 7, 7], [7, 7], [2, 2], [3, 3]),
            ([3, 4, 4], [1, 1], [2, 2], [0, 0]),
        ] {
            let out = |size: usize, k: usize, s: usize, p: usize| (size + 2 * p - k) / s + 1;
            let g = Geometry {
                input,
                output: [
                    1,
                    out(input[1], kernel[0], stride[0], padding[0]),
                    out(input[2], kernel[1], stride[1], padding[1]),
                ],
                kernel,
                spec: ConvSpec { stride, padding },
            };
            let x: Vec<f32> = (0..g.input_len())
                .map(|i| ((i * 7919) % 13) as f32 - 6.0)
                .collect();
            let c: Vec<f32> = (0..g.patch_len() * g.positions())
                .map(|i| ((i * 104729) % 11) as f32 - 5.0)
                .collect();
            let l = g.positions();
            let mut cols = vec![f32::NAN; c.len()];
            im2col(&g, &x, &mut cols, l);
            let mut back = vec![0.0; x.len()];
            col2im(&g, &c, l, &mut back);
            let lhs: f32 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{g:?}");
        }
    }

    #[test]
    fn outputs_and_gradients_do_not_depend_on_the_thread_count() {
        let g = Geometry {
            input: [4, 6, 6],
            output: [5, 6, 6],
            kernel: [3, 3],
            spec: ConvSpec {
                stride: [1, 1],
                padding: [1, 1],
            },
        };
        let batch = 37;
        let fill = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let x = fill(batch * g.input_len(), 1);
        let w = fill(5 * g.patch_len(), 2);
        let dy = fill(batch * g.output_len(), 3);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    (
                        convolve_f32(&g, batch, &x, &w),
                        gradients_f32(&g, batch, &x, &w, &dy, true, true),
                    )
                })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(8));
    }
}
