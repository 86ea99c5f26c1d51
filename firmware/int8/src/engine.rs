//! Runs a validated [`Model`] in a caller-owned arena: no heap, no panics, one kernel call per
//! layer. The same function runs on the host (the runtime's int8 path and the reference for
//! the firmware's golden test) and on the microcontroller.

use core::ops::Range;

use crate::blob::{Layer, Model, Op};
use crate::kernels::add::{add, AddParams, ADD_LEFT_SHIFT};
use crate::kernels::conv::conv2d;
#[cfg(all(feature = "threads", not(feature = "dsp")))]
use crate::kernels::conv::{conv2d_on_threads, conv2d_rows, ConvParams};
#[cfg(all(feature = "std", target_arch = "x86_64"))]
use crate::kernels::conv::{conv2d_packed, PackedFilters};
use crate::kernels::depthwise::depthwise_conv2d;
use crate::kernels::fully_connected::{fully_connected, FullyConnectedParams, PerChannelRequant};
use crate::kernels::pool::{global_avg_pool, max_pool, GlobalAvgPoolParams};
use crate::KernelError;

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RunError {
    /// The arena is smaller than the model's memory plan.
    ArenaTooSmall,
    /// The input does not have the model input's length.
    InputLength,
    /// A kernel refused its layer (cannot happen for a blob [`Model::parse`] accepted).
    Kernel(KernelError),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::ArenaTooSmall => {
                f.write_str("the arena is smaller than the model's memory plan")
            }
            RunError::InputLength => f.write_str("the input length does not match the model input"),
            RunError::Kernel(e) => write!(f, "a kernel refused its layer: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RunError {}

impl From<KernelError> for RunError {
    fn from(e: KernelError) -> Self {
        RunError::Kernel(e)
    }
}

/// The output slice and the one or two input slices of a layer, borrowed disjointly from the
/// arena (the parser checked that a layer's output never overlaps its inputs).
fn split_arena<'a>(
    arena: &'a mut [i8],
    output: Range<usize>,
    input: Range<usize>,
    input2: Option<Range<usize>>,
) -> (&'a mut [i8], &'a [i8], Option<&'a [i8]>) {
    let (below, rest) = arena.split_at_mut(output.start);
    let (out, above) = rest.split_at_mut(output.end - output.start);
    let (below, above): (&'a [i8], &'a [i8]) = (below, above);
    let pick = |r: Range<usize>| -> &'a [i8] {
        if r.end <= output.start {
            &below[r]
        } else {
            &above[r.start - output.end..r.end - output.end]
        }
    };
    (out, pick(input), input2.map(pick))
}

fn requant<'a>(layer: &Layer<'a>) -> PerChannelRequant<'a> {
    PerChannelRequant {
        multipliers: layer.multipliers,
        shifts: layer.shifts,
    }
}

// Out of line: one symbol holding the kernels the engine dispatches to, so the engine's code
// size can be measured apart from the program around it (`nm` on the firmware ELF).
#[inline(never)]
fn run_layer(
    model: &Model<'_>,
    layer: &Layer<'_>,
    arena: &mut [i8],
    #[cfg(all(feature = "std", target_arch = "x86_64"))] packed: Option<&PackedFilters>,
    threads: usize,
) -> Result<(), KernelError> {
    let tensor = |t: usize| model.tensor(t).ok_or(KernelError::ShapeMismatch);
    let input = tensor(layer.input)?;
    let output = tensor(layer.output)?;
    let input2 = layer.input2.map(tensor).transpose()?;
    let (out, x, x2) = split_arena(
        arena,
        output.range(),
        input.range(),
        input2.map(|t| t.range()),
    );
    match layer.op {
        Op::Conv2d => {
            #[cfg(all(feature = "threads", not(feature = "dsp")))]
            if threads > 1 {
                #[cfg(not(target_arch = "x86_64"))]
                let packed = None;
                return conv_on_threads(
                    &model.conv_params(layer),
                    (x, layer),
                    packed,
                    out,
                    threads,
                );
            }
            let _ = threads;
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            if let Some(packed) = packed {
                return conv2d_packed(
                    &model.conv_params(layer),
                    x,
                    packed,
                    layer.weights,
                    layer.bias,
                    requant(layer),
                    out,
                );
            }
            conv2d(
                &model.conv_params(layer),
                x,
                layer.weights,
                layer.bias,
                requant(layer),
                out,
            )
        }
        Op::DepthwiseConv2d => depthwise_conv2d(
            &model.conv_params(layer),
            x,
            layer.weights,
            layer.bias,
            requant(layer),
            out,
        ),
        Op::MaxPool => max_pool(&model.conv_params(layer), x, out),
        Op::Add => {
            let (Some(x2), Some(t2)) = (x2, input2) else {
                return Err(KernelError::ShapeMismatch);
            };
            let p = layer.params;
            let params = AddParams {
                input1_offset: -i32::from(input.zero_point),
                input2_offset: -i32::from(t2.zero_point),
                output_offset: i32::from(output.zero_point),
                left_shift: ADD_LEFT_SHIFT,
                input1_multiplier: (p[0], p[1]),
                input2_multiplier: (p[2], p[3]),
                output_multiplier: (p[4], p[5]),
                activation_min: layer.activation_min,
                activation_max: layer.activation_max,
            };
            add(&params, x, x2, out)
        }
        Op::GlobalAvgPool => {
            let params = GlobalAvgPoolParams {
                height: input.height,
                width: input.width,
                channels: input.channels,
                input_offset: -i32::from(input.zero_point),
                output_offset: i32::from(output.zero_point),
                multiplier: (layer.params[0], layer.params[1]),
            };
            global_avg_pool(&params, x, out)
        }
        Op::FullyConnected => {
            let params = FullyConnectedParams {
                input_len: input.len(),
                output_len: output.channels,
                input_offset: -i32::from(input.zero_point),
                output_offset: i32::from(output.zero_point),
                activation_min: layer.activation_min,
                activation_max: layer.activation_max,
            };
            fully_connected(&params, x, layer.weights, layer.bias, requant(layer), out)
        }
    }
}

/// A convolution layer in bands of output rows on `threads` threads of the current rayon pool,
/// each band on the kernel a whole run would use (bit for bit the same output).
#[cfg(all(feature = "threads", not(feature = "dsp")))]
fn conv_on_threads(
    params: &ConvParams,
    (input, layer): (&[i8], &Layer<'_>),
    packed: Option<&HostFilters>,
    output: &mut [i8],
    threads: usize,
) -> Result<(), KernelError> {
    let filters = (input, layer.weights, layer.bias);
    conv2d_on_threads(params, output, threads, |rows, band| {
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = packed {
            return crate::kernels::conv::conv2d_packed_rows(
                params,
                filters,
                (packed, requant(layer)),
                (rows, band),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = packed;
        conv2d_rows(params, filters, requant(layer), (rows, band))
    })
}

/// A convolution's host-side repacked filters: x86-64 has them, other hosts none.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
type HostFilters = PackedFilters;
#[cfg(all(feature = "std", not(target_arch = "x86_64")))]
type HostFilters = core::convert::Infallible;

/// Copies `input` (the quantised model input, NHWC) into the arena, runs every layer in order
/// — calling `on_layer(index, op)` before each, for progress logs — and returns the output
/// tensor's values in the arena.
pub fn run<'a>(
    model: &Model<'_>,
    arena: &'a mut [i8],
    input: &[i8],
    on_layer: impl FnMut(usize, Op),
) -> Result<&'a [i8], RunError> {
    run_with(model, None, (arena, input), 1, on_layer)
}

/// Host-side data prepared once per model to speed up [`run_prepared`]: on x86-64 each standard
/// convolution's filters repacked for the vector kernels ([`PackedFilters`]); other hosts have
/// none yet. The blob itself is unchanged (it is the microcontroller's format).
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct HostPrepared {
    #[cfg(target_arch = "x86_64")]
    packed: Vec<Option<PackedFilters>>,
}

#[cfg(feature = "std")]
impl HostPrepared {
    /// Repacks every standard convolution of `model` (x86-64).
    #[cfg(not(target_arch = "x86_64"))]
    pub fn new(model: &Model<'_>) -> Self {
        let _ = model;
        HostPrepared {}
    }

    /// Repacks every standard convolution of `model`.
    #[cfg(target_arch = "x86_64")]
    pub fn new(model: &Model<'_>) -> Self {
        let packed = (0..model.layer_count())
            .map(|i| {
                let layer = model.layer(i)?;
                let input = model.tensor(layer.input)?;
                (layer.op == Op::Conv2d)
                    .then(|| {
                        PackedFilters::new(
                            layer.weights,
                            (layer.bias.len(), input.channels),
                            layer.bias,
                            requant(&layer),
                            -i32::from(input.zero_point),
                        )
                    })
                    .flatten()
            })
            .collect();
        HostPrepared { packed }
    }
}

/// [`run`] with the host's prepared data: the same outputs, bit for bit, faster.
#[cfg(feature = "std")]
pub fn run_prepared<'a>(
    model: &Model<'_>,
    prepared: &HostPrepared,
    arena: &'a mut [i8],
    input: &[i8],
    on_layer: impl FnMut(usize, Op),
) -> Result<&'a [i8], RunError> {
    run_with(model, Some(prepared), (arena, input), 1, on_layer)
}

/// [`run_prepared`] with each standard convolution split into `threads` bands of output rows
/// on the current rayon pool (install a pool of that many threads around the call): the same
/// outputs, bit for bit, as on one thread.
#[cfg(all(feature = "threads", not(feature = "dsp")))]
pub fn run_on_threads<'a>(
    model: &Model<'_>,
    prepared: &HostPrepared,
    (arena, input): (&'a mut [i8], &[i8]),
    threads: usize,
) -> Result<&'a [i8], RunError> {
    run_with(model, Some(prepared), (arena, input), threads, |_, _| ())
}

#[cfg(not(feature = "std"))]
type HostPrepared = core::convert::Infallible;

fn run_with<'a>(
    model: &Model<'_>,
    prepared: Option<&HostPrepared>,
    (arena, input): (&'a mut [i8], &[i8]),
    threads: usize,
    mut on_layer: impl FnMut(usize, Op),
) -> Result<&'a [i8], RunError> {
    if arena.len() < model.arena_bytes() {
        return Err(RunError::ArenaTooSmall);
    }
    let input_tensor = model.input();
    if input.len() != input_tensor.len() {
        return Err(RunError::InputLength);
    }
    arena[input_tensor.range()].copy_from_slice(input);
    for index in 0..model.layer_count() {
        let layer = model
            .layer(index)
            .ok_or(RunError::Kernel(KernelError::ShapeMismatch))?;
        on_layer(index, layer.op);
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        run_layer(
            model,
            &layer,
            arena,
            prepared.and_then(|p| p.packed.get(index)?.as_ref()),
            threads,
        )?;
        #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
        {
            let _ = prepared;
            run_layer(model, &layer, arena, threads)?;
        }
    }
    Ok(&arena[model.output().range()])
}

/// `round(x / scale) + zero_point`, saturated to int8: how a real input enters the model.
/// Inline so a caller's loop over a whole input can be vectorised (out of line it was 4 % of
/// the host engine's time).
#[inline]
pub fn quantize(x: f32, scale: f32, zero_point: i8) -> i8 {
    // Round half away from zero by hand (`f32::round` needs std); `as` truncates toward zero,
    // saturates and maps NaN to 0, so huge or non-finite inputs cannot wrap.
    let v = x / scale;
    let rounded = if v >= 0.0 {
        (v + 0.5) as i32
    } else {
        (v - 0.5) as i32
    };
    rounded
        .saturating_add(i32::from(zero_point))
        .clamp(-128, 127) as i8
}

/// `(q − zero_point) · scale`: the real value of an int8 step.
pub fn dequantize(q: i8, scale: f32, zero_point: i8) -> f32 {
    (f32::from(q) - f32::from(zero_point)) * scale
}
