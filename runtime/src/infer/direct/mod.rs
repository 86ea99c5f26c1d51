//! The direct fp32 engine: the bundle's ONNX classifier run with our own NHWC convolution
//! kernels instead of tract's im2col + matrix multiply.
//!
//! Why beside tract: on the small ResNets scanside ships (8–64 channels), tract 0.23 spends a
//! quarter of its time packing im2col patches and runs its f32 matrix tiles half empty on the
//! 8-channel layers (profile in docs/benchmarks.md); no setting of tract's changes that. A
//! direct convolution with a register tile of pixels × channels needs no patches at all.
//!
//! It runs the operators the trainer exports — `Conv` (standard or depthwise, square kernel,
//! symmetric pads, no dilation), `Relu`, `Add` (same shapes), `MaxPool`, `GlobalAveragePool`, `Flatten` and
//! `Gemm` — and refuses any other graph with [`Unsupported`], so the caller can run it on tract
//! instead. A convolution followed by the residual `Add` and `Relu` that only it feeds runs as
//! one step (bias, residual and ReLU applied as its tile is stored).
//!
//! `planner` turns the graph into the plan once; this module runs the plan, one arena of
//! activations per concurrent inference.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;
use rayon::prelude::*;
use tract_onnx::pb;

use crate::{Error, Result};

pub mod kernels;
mod planner;
pub mod winograd;

use kernels::{ConvGeometry, PackedConv, Residual};
use winograd::WinogradConv;

/// Why a model cannot run on the direct engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(String);

fn unsupported<T>(reason: impl Into<String>) -> std::result::Result<T, Unsupported> {
    Err(Unsupported(reason.into()))
}

/// One planned operation; tensors are indices into the arena.
#[derive(Debug)]
enum Step {
    Conv {
        /// Index into [`Plan::convs`].
        conv: usize,
        input: usize,
        output: usize,
        residual: Option<usize>,
        relu: bool,
    },
    Add {
        a: usize,
        b: usize,
        output: usize,
        relu: bool,
    },
    Relu {
        input: usize,
        output: usize,
    },
    MaxPool {
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    GlobalAvgPool {
        input: usize,
        output: usize,
    },
    Gemm {
        input: usize,
        output: usize,
        /// `out × in`, row-major.
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
}

/// An activation: NHWC `[h, w, c]` with a zero border for the convolutions that read it.
#[derive(Debug, Clone, Copy)]
struct Buffer {
    shape: [usize; 3],
    border: usize,
}

impl Buffer {
    fn len(&self) -> usize {
        ConvGeometry::buffer_len(self.shape, self.border)
    }

    /// Offset of pixel `(y, x)`.
    fn at(&self, y: usize, x: usize) -> usize {
        let [_, w, c] = self.shape;
        ((y + self.border) * (w + 2 * self.border) + x + self.border) * c
    }
}

#[derive(Debug)]
struct Plan {
    steps: Vec<Step>,
    convs: Vec<ConvKernel>,
    /// Floats of scratch the Winograd convolutions need (the largest of them).
    scratch_len: usize,
    buffers: Vec<Buffer>,
    output: usize,
    chw: [usize; 3],
}

/// An activation buffer whose first value sits on a 64-byte boundary, so that vector loads at
/// a pixel's channel offsets do not straddle cache lines (measured: the depthwise kernel on
/// 16 channels ran 1.2× slower when its buffers were not 32-byte aligned).
#[derive(Debug, Default)]
struct Activation {
    storage: Vec<f32>,
    start: usize,
    len: usize,
}

impl Activation {
    fn zeros(len: usize) -> Self {
        let storage = vec![0.0; len + 16];
        // `align_offset` may decline (usize::MAX); then the buffer is just unaligned.
        let start = storage.as_ptr().align_offset(64).min(16);
        Self {
            storage,
            start,
            len,
        }
    }

    fn floats(&self) -> &[f32] {
        &self.storage[self.start..self.start + self.len]
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

type Arena = Vec<Activation>;

/// One activation per buffer, then the scratch.
fn new_arena(plan: &Plan) -> Arena {
    plan.buffers
        .iter()
        .map(|b| b.len())
        .chain(std::iter::once(plan.scratch_len))
        .map(Activation::zeros)
        .collect()
}

/// How a convolution runs.
#[derive(Debug)]
enum ConvKernel {
    /// The direct kernels (standard or depthwise).
    Direct(PackedConv),
    /// Winograd F(2×2, 3×3).
    Winograd(WinogradConv),
}

impl ConvKernel {
    fn geometry(&self) -> &ConvGeometry {
        match self {
            ConvKernel::Direct(p) => p.geometry(),
            ConvKernel::Winograd(w) => w.geometry(),
        }
    }

    /// `depthwise `, `winograd ` or nothing: for the profile's step names.
    fn label(&self) -> &'static str {
        match self {
            ConvKernel::Direct(p) if p.is_depthwise() => "depthwise ",
            ConvKernel::Direct(_) => "",
            ConvKernel::Winograd(_) => "winograd ",
        }
    }
}

/// A model planned for the direct engine; clones share the plan, a pool of activation
/// arenas (one per concurrent inference, reused: their zero borders are never written) and
/// the threads one inference runs on.
#[derive(Debug, Clone)]
pub struct DirectClassifier {
    plan: Arc<Plan>,
    arenas: Arc<Mutex<Vec<Arena>>>,
    path: PathBuf,
    /// Threads inside one inference (each convolution's output rows, or a small Winograd
    /// layer's products, shared among them); `None`: the calling thread alone.
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl DirectClassifier {
    /// Plans an ONNX model (bytes already verified) for a `C×H×W` input and `classes` outputs;
    /// `path` names it in later errors. [`Unsupported`] names the first thing it cannot run.
    pub fn from_onnx(
        bytes: &[u8],
        path: &Path,
        chw: [usize; 3],
        classes: usize,
    ) -> std::result::Result<Self, Unsupported> {
        let mut model = pb::ModelProto::decode(bytes)
            .map_err(|e| Unsupported(format!("not an ONNX protobuf: {e}")))?;
        Self::from_proto(&mut model, path, chw, classes)
    }

    /// [`DirectClassifier::from_onnx`] for a model already decoded. The convolutions' weights
    /// are taken out of `model` as they are packed (so they are never held twice): when this
    /// declines, `model` may have lost some.
    pub fn from_proto(
        model: &mut pb::ModelProto,
        path: &Path,
        chw: [usize; 3],
        classes: usize,
    ) -> std::result::Result<Self, Unsupported> {
        let plan = planner::plan(model, chw, classes)?;
        Ok(Self {
            plan: Arc::new(plan),
            arenas: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
            pool: None,
        })
    }

    /// Runs each inference on `threads` threads (one: on the calling thread, as built).
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.pool = super::threads::inference_pool(threads, "fp32", &self.path)?;
        Ok(self)
    }

    /// Threads one inference runs on.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs one preprocessed `C×H×W` input and returns the logits.
    pub fn logits(&self, chw: &[f32]) -> Result<Vec<f32>> {
        let plan = &*self.plan;
        let [c, h, w] = plan.chw;
        if chw.len() != c * h * w {
            return Err(self.error(format!(
                "input has {} values, {} expected",
                chw.len(),
                c * h * w
            )));
        }
        let mut arena = self
            .arenas
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_else(|| new_arena(plan));
        let result = self.run(&mut arena, chw);
        if let Ok(mut pool) = self.arenas.lock() {
            pool.push(arena);
        }
        result
    }

    /// Mean time of each step over `runs` inferences of `chw` (after one warm-up), with a
    /// description of the step: where the time goes, for docs/benchmarks.md.
    pub fn profile(&self, chw: &[f32], runs: usize) -> Result<Vec<(String, std::time::Duration)>> {
        self.logits(chw)?;
        let plan = &*self.plan;
        let mut arena = new_arena(plan);
        let mut totals = vec![std::time::Duration::ZERO; plan.steps.len()];
        for _ in 0..runs {
            self.run_timed(&mut arena, chw, &mut totals)?;
        }
        Ok(plan
            .steps
            .iter()
            .zip(totals)
            .map(|(step, t)| (describe(step, plan), t / runs.max(1) as u32))
            .collect())
    }

    fn run(&self, arena: &mut Arena, chw: &[f32]) -> Result<Vec<f32>> {
        self.run_timed(arena, chw, &mut [])
    }

    /// Runs the plan (on the pool's threads, when it has some); adds each step's time to
    /// `totals` when it has one entry per step.
    fn run_timed(
        &self,
        arena: &mut Arena,
        chw: &[f32],
        totals: &mut [std::time::Duration],
    ) -> Result<Vec<f32>> {
        match &self.pool {
            Some(pool) => {
                pool.install(|| self.run_steps(arena, chw, totals, pool.current_num_threads()))
            }
            None => self.run_steps(arena, chw, totals, 1),
        }
    }

    /// [`DirectClassifier::run_timed`] on the current thread, its steps shared among `threads`
    /// threads of the rayon pool it runs on.
    fn run_steps(
        &self,
        arena: &mut Arena,
        chw: &[f32],
        totals: &mut [std::time::Duration],
        threads: usize,
    ) -> Result<Vec<f32>> {
        let plan = &*self.plan;
        // The input, planar CHW, into the bordered NHWC buffer 0.
        let input = plan.buffers[0];
        let [h, w, c] = input.shape;
        let input_values = arena[0].floats_mut();
        for (ch, plane) in chw.chunks_exact(h * w).enumerate() {
            for y in 0..h {
                let row = input.at(y, 0) + ch;
                for (x, &v) in plane[y * w..(y + 1) * w].iter().enumerate() {
                    input_values[row + x * c] = v;
                }
            }
        }
        for (i, step) in plan.steps.iter().enumerate() {
            let started = (!totals.is_empty()).then(std::time::Instant::now);
            let output = step_output(step);
            let mut out = std::mem::take(&mut arena[output]);
            let mut scratch = std::mem::take(&mut arena[plan.buffers.len()]);
            let buffers = (out.floats_mut(), scratch.floats_mut());
            let result = run_step(step, plan, arena, buffers, threads);
            arena[output] = out;
            arena[plan.buffers.len()] = scratch;
            result.map_err(|reason| self.error(reason))?;
            if let (Some(t0), Some(total)) = (started, totals.get_mut(i)) {
                *total += t0.elapsed();
            }
        }
        Ok(arena[plan.output].floats().to_vec())
    }

    fn error(&self, reason: String) -> Error {
        Error::Model {
            path: self.path.clone(),
            reason,
        }
    }
}

/// One line about a step: operator, shapes, fusions.
fn describe(step: &Step, plan: &Plan) -> String {
    let shape = |b: usize| {
        let [h, w, c] = plan.buffers[b].shape;
        format!("{h}×{w}×{c}")
    };
    match step {
        Step::Conv {
            conv,
            input,
            output,
            residual,
            relu,
        } => {
            let g = plan.convs[*conv].geometry();
            format!(
                "{}conv {k}×{k}/{s} {} → {}{}{}",
                plan.convs[*conv].label(),
                shape(*input),
                shape(*output),
                if residual.is_some() {
                    " + residual"
                } else {
                    ""
                },
                if *relu { " + relu" } else { "" },
                k = g.kernel,
                s = g.stride,
            )
        }
        Step::Add { output, .. } => format!("add {}", shape(*output)),
        Step::Relu { output, .. } => format!("relu {}", shape(*output)),
        Step::MaxPool { output, .. } => format!("max pool → {}", shape(*output)),
        Step::GlobalAvgPool { input, .. } => format!("global average pool {}", shape(*input)),
        Step::Gemm { output, .. } => format!("fully connected → {}", shape(*output)),
    }
}

fn step_output(step: &Step) -> usize {
    match step {
        Step::Conv { output, .. }
        | Step::Add { output, .. }
        | Step::Relu { output, .. }
        | Step::MaxPool { output, .. }
        | Step::GlobalAvgPool { output, .. }
        | Step::Gemm { output, .. } => *output,
    }
}

/// Runs one convolution into `out`, its output rows shared among `threads` threads of the
/// current rayon pool.
fn run_conv(
    kernel: &ConvKernel,
    (input, residual, relu): (&[f32], Option<Residual>, bool),
    (out, scratch): (&mut [f32], &mut [f32]),
    threads: usize,
) -> std::result::Result<(), String> {
    match kernel {
        ConvKernel::Direct(packed) if threads > 1 => packed
            .geometry()
            .output_bands(out, threads)
            .into_par_iter()
            .try_for_each(|rows| kernels::conv_rows(packed, input, rows, residual, relu)),
        ConvKernel::Direct(packed) => kernels::conv(packed, input, out, residual, relu),
        ConvKernel::Winograd(w) => w.run_on_threads(input, out, residual, relu, scratch, threads),
    }
    .map_err(|e| format!("convolution refused its buffers: {e:?}"))
}

/// Runs one step into `out` (taken out of the arena with the scratch, so inputs stay
/// borrowable); convolutions share their work among `threads` threads of the current rayon
/// pool.
fn run_step(
    step: &Step,
    plan: &Plan,
    arena: &Arena,
    (out, scratch): (&mut [f32], &mut [f32]),
    threads: usize,
) -> std::result::Result<(), String> {
    let buffers = &plan.buffers;
    match step {
        Step::Conv {
            conv,
            input,
            residual,
            relu,
            ..
        } => {
            let residual = residual.map(|r| Residual {
                data: arena[r].floats(),
                border: buffers[r].border,
            });
            let input = arena[*input].floats();
            run_conv(
                &plan.convs[*conv],
                (input, residual, *relu),
                (out, scratch),
                threads,
            )
        }
        Step::Add { a, b, output, relu } => {
            let (ba, bb, bo) = (buffers[*a], buffers[*b], buffers[*output]);
            let [h, w, c] = bo.shape;
            for y in 0..h {
                let (ra, rb, ro) = (ba.at(y, 0), bb.at(y, 0), bo.at(y, 0));
                let (xa, xb) = (
                    &arena[*a].floats()[ra..ra + w * c],
                    &arena[*b].floats()[rb..rb + w * c],
                );
                for ((o, &p), &q) in out[ro..ro + w * c].iter_mut().zip(xa).zip(xb) {
                    let s = p + q;
                    *o = if *relu { s.max(0.0) } else { s };
                }
            }
            Ok(())
        }
        Step::Relu { input, output } => {
            let (bi, bo) = (buffers[*input], buffers[*output]);
            let [h, w, c] = bo.shape;
            for y in 0..h {
                let (ri, ro) = (bi.at(y, 0), bo.at(y, 0));
                for (o, &v) in out[ro..ro + w * c]
                    .iter_mut()
                    .zip(&arena[*input].floats()[ri..ri + w * c])
                {
                    *o = v.max(0.0);
                }
            }
            Ok(())
        }
        Step::MaxPool {
            input,
            output,
            kernel,
            stride,
            pad,
        } => {
            let (bi, bo) = (buffers[*input], buffers[*output]);
            let [in_h, in_w, c] = bi.shape;
            let [out_h, out_w, _] = bo.shape;
            let x_in = arena[*input].floats();
            for y in 0..out_h {
                for x in 0..out_w {
                    let o = bo.at(y, x);
                    out[o..o + c].fill(f32::NEG_INFINITY);
                    for ky in 0..*kernel {
                        for kx in 0..*kernel {
                            let (iy, ix) = (y * stride + ky, x * stride + kx);
                            if iy < *pad || ix < *pad || iy - pad >= in_h || ix - pad >= in_w {
                                continue;
                            }
                            let i = bi.at(iy - pad, ix - pad);
                            for (m, &v) in out[o..o + c].iter_mut().zip(&x_in[i..i + c]) {
                                *m = m.max(v);
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Step::GlobalAvgPool { input, .. } => {
            let bi = buffers[*input];
            let [h, w, c] = bi.shape;
            out.fill(0.0);
            for y in 0..h {
                for x in 0..w {
                    let i = bi.at(y, x);
                    for (s, &v) in out.iter_mut().zip(&arena[*input].floats()[i..i + c]) {
                        *s += v;
                    }
                }
            }
            let n = (h * w) as f32;
            out.iter_mut().for_each(|s| *s /= n);
            Ok(())
        }
        Step::Gemm {
            input,
            weight,
            bias,
            ..
        } => {
            let x = arena[*input].floats();
            for ((o, row), &b) in out.iter_mut().zip(weight.chunks_exact(x.len())).zip(bias) {
                *o = b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    /// A small graph builder for ONNX test models.
    #[derive(Default)]
    struct Graph {
        nodes: Vec<pb::NodeProto>,
        constants: Vec<pb::TensorProto>,
        seed: u32,
    }

    impl Graph {
        fn constant(&mut self, name: &str, dims: &[usize], scale: f32) -> String {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    self.seed = self
                        .seed
                        .wrapping_mul(1_664_525)
                        .wrapping_add(1_013_904_223);
                    ((self.seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * scale
                })
                .collect();
            self.constants.push(pb::TensorProto {
                name: name.into(),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: pb::tensor_proto::DataType::Float as i32,
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            });
            name.into()
        }

        fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, &[i64])]) -> String {
            let output = format!("{}_{}", op.to_lowercase(), self.nodes.len());
            self.nodes.push(pb::NodeProto {
                op_type: op.into(),
                name: output.clone(),
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec![output.clone()],
                attribute: attrs
                    .iter()
                    .map(|(name, v)| pb::AttributeProto {
                        name: name.to_string(),
                        r#type: if v.len() == 1 && matches!(*name, "axis" | "transB" | "group") {
                            pb::attribute_proto::AttributeType::Int as i32
                        } else {
                            pb::attribute_proto::AttributeType::Ints as i32
                        },
                        ints: v.to_vec(),
                        i: v[0],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
            output
        }

        fn conv(&mut self, x: &str, cin: usize, cout: usize, k: usize, stride: i64) -> String {
            let n = self.nodes.len();
            let w = self.constant(&format!("w{n}"), &[cout, cin, k, k], 1.0);
            let b = self.constant(&format!("b{n}"), &[cout], 0.2);
            let p = (k / 2) as i64;
            let k = k as i64;
            self.node(
                "Conv",
                &[x, &w, &b],
                &[
                    ("kernel_shape", &[k, k]),
                    ("strides", &[stride, stride]),
                    ("pads", &[p, p, p, p]),
                ],
            )
        }

        fn depthwise(&mut self, x: &str, c: usize, stride: i64) -> String {
            let n = self.nodes.len();
            let w = self.constant(&format!("w{n}"), &[c, 1, 3, 3], 1.0);
            let b = self.constant(&format!("b{n}"), &[c], 0.2);
            self.node(
                "Conv",
                &[x, &w, &b],
                &[
                    ("kernel_shape", &[3, 3]),
                    ("strides", &[stride, stride]),
                    ("pads", &[1, 1, 1, 1]),
                    ("group", &[c as i64]),
                ],
            )
        }

        fn bytes(self, output: &str, chw: [usize; 3], classes: usize) -> Vec<u8> {
            let info = |name: &str, dims: &[usize]| {
                use pb::tensor_shape_proto::{dimension::Value, Dimension};
                pb::ValueInfoProto {
                    name: name.into(),
                    r#type: Some(pb::TypeProto {
                        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                            elem_type: pb::tensor_proto::DataType::Float as i32,
                            shape: Some(pb::TensorShapeProto {
                                dim: dims
                                    .iter()
                                    .map(|&d| Dimension {
                                        value: Some(Value::DimValue(d as i64)),
                                        ..Default::default()
                                    })
                                    .collect(),
                            }),
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            };
            let mut nodes = self.nodes;
            if let Some(last) = nodes.iter_mut().find(|n| n.output[0] == output) {
                last.output = vec!["logits".into()];
            }
            let [c, h, w] = chw;
            pb::ModelProto {
                ir_version: 7,
                opset_import: vec![pb::OperatorSetIdProto {
                    domain: String::new(),
                    version: 13,
                }],
                graph: Some(pb::GraphProto {
                    name: "test".into(),
                    node: nodes,
                    initializer: self.constants,
                    input: vec![info("input", &[1, c, h, w])],
                    output: vec![info("logits", &[1, classes])],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        }
    }

    /// Every operator the engine knows, fused and unfused: a stem with max pooling, a residual
    /// block whose add fuses into its convolution, a downsampling block, an add of two values
    /// that are read elsewhere too (so neither it nor its ReLU fuses), global pooling, Gemm.
    fn resnet_like(trans_b: bool) -> Vec<u8> {
        let mut g = Graph::default();
        let x = g.conv("input", 3, 8, 3, 1);
        let x = g.node("Relu", &[&x], &[]);
        let x = g.node(
            "MaxPool",
            &[&x],
            &[
                ("kernel_shape", &[3, 3]),
                ("strides", &[2, 2]),
                ("pads", &[1, 1, 1, 1]),
            ],
        );
        let y = g.conv(&x, 8, 8, 3, 1);
        let y = g.node("Relu", &[&y], &[]);
        let y = g.conv(&y, 8, 8, 3, 1);
        let y = g.node("Add", &[&x, &y], &[]);
        let a = g.node("Relu", &[&y], &[]);
        let short = g.conv(&a, 8, 16, 1, 2);
        let y = g.depthwise(&a, 8, 2);
        let y = g.node("Relu", &[&y], &[]);
        let y = g.conv(&y, 8, 16, 1, 1);
        let y = g.node("Relu", &[&y], &[]);
        let y = g.conv(&y, 16, 16, 3, 1);
        let y = g.node("Add", &[&y, &short], &[]);
        let b = g.node("Relu", &[&y], &[]);
        let s = g.node("Add", &[&b, &short], &[]);
        let s = g.node("Relu", &[&s], &[]);
        let s = g.node("Add", &[&s, &b], &[]);
        // Read twice: its ReLU is a step of its own.
        let r = g.node("Relu", &[&s], &[]);
        let s = g.node("Add", &[&r, &s], &[]);
        let s = g.conv(&s, 16, 24, 3, 1);
        let p = g.node("GlobalAveragePool", &[&s], &[]);
        let f = g.node("Flatten", &[&p], &[("axis", &[1])]);
        let (w, attrs): (String, &[(&str, &[i64])]) = if trans_b {
            (g.constant("fc", &[5, 24], 1.0), &[("transB", &[1])])
        } else {
            (g.constant("fc", &[24, 5], 1.0), &[])
        };
        let bias = g.constant("fc_bias", &[5], 1.0);
        let out = g.node("Gemm", &[&f, &w, &bias], attrs);
        g.bytes(&out, [3, 19, 17], 5)
    }

    fn tract_logits(bytes: &[u8], chw: [usize; 3], input: &[f32]) -> Vec<f32> {
        let [c, h, w] = chw;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.with_input_fact(0, f32::fact([1, c, h, w]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap();
        let t = Tensor::from_shape(&[1, c, h, w], input).unwrap();
        let out = plan.run(tvec!(t.into())).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    /// Winograd layers large enough to run in bands of tile rows on two threads, and one
    /// small enough to share its products out; direct convolutions split in bands of rows.
    fn wide_model() -> Vec<u8> {
        let mut g = Graph::default();
        let x = g.conv("input", 3, 16, 3, 1);
        let x = g.node("Relu", &[&x], &[]);
        let y = g.conv(&x, 16, 16, 3, 1);
        let y = g.node("Add", &[&x, &y], &[]);
        let y = g.node("Relu", &[&y], &[]);
        let y = g.conv(&y, 16, 32, 3, 2);
        let y = g.conv(&y, 32, 32, 3, 1);
        let y = g.conv(&y, 32, 32, 3, 2);
        let y = g.conv(&y, 32, 32, 3, 1);
        let p = g.node("GlobalAveragePool", &[&y], &[]);
        let f = g.node("Flatten", &[&p], &[("axis", &[1])]);
        let w = g.constant("fc", &[32, 4], 1.0);
        let bias = g.constant("fc_bias", &[4], 1.0);
        let out = g.node("Gemm", &[&f, &w, &bias], &[]);
        g.bytes(&out, [3, 41, 36], 4)
    }

    #[test]
    fn an_inference_on_several_threads_equals_one_on_one_thread_bit_for_bit() {
        for (bytes, chw, classes) in [
            (wide_model(), [3, 41, 36], 4),
            (resnet_like(true), [3, 19, 17], 5),
        ] {
            let input = crate::fixtures::pseudo_random_values(chw.iter().product(), 7);
            let one =
                DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), chw, classes).unwrap();
            let want = one.logits(&input).unwrap();
            for threads in [2, 3, 5] {
                let many = one.clone().with_threads(threads).unwrap();
                assert_eq!(many.threads(), threads);
                // Twice: the second inference reuses the arena the first left.
                for _ in 0..2 {
                    assert_eq!(many.logits(&input).unwrap(), want, "{threads} threads");
                }
            }
        }
    }

    #[test]
    fn the_direct_engine_equals_tract_on_every_operator_it_runs() {
        let chw = [3, 19, 17];
        for trans_b in [false, true] {
            let bytes = resnet_like(trans_b);
            let model = DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), chw, 5).unwrap();
            let plan = &model.plan;
            // Fusion happened where it may and nowhere else.
            let fused_residuals = plan
                .steps
                .iter()
                .filter(|s| {
                    matches!(
                        s,
                        Step::Conv {
                            residual: Some(_),
                            ..
                        }
                    )
                })
                .count();
            let count = |f: fn(&Step) -> bool| plan.steps.iter().filter(|s| f(s)).count();
            let adds_with_relu = count(|s| matches!(s, Step::Add { relu: true, .. }));
            let plain_adds = count(|s| matches!(s, Step::Add { relu: false, .. }));
            let relus = count(|s| matches!(s, Step::Relu { .. }));
            assert_eq!(
                (fused_residuals, adds_with_relu, plain_adds, relus),
                (2, 1, 2, 1),
                "{:#?}",
                plan.steps
            );
            for seed in 0..3_u32 {
                let input: Vec<f32> = (0..chw.iter().product::<usize>())
                    .map(|i| {
                        (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0
                            - 1.0
                    })
                    .collect();
                let want = tract_logits(&bytes, chw, &input);
                // Twice: the second run reuses the first's arena.
                for _ in 0..2 {
                    let got = model.logits(&input).unwrap();
                    assert_eq!(got.len(), 5);
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{got:?} vs tract {want:?}"
                        );
                    }
                }
            }
            assert!(
                model.logits(&[0.0; 7]).is_err(),
                "a wrong-sized input is an error"
            );
        }
    }

    #[test]
    fn convolutions_sharing_one_weight_tensor_both_get_it_and_the_model_keeps_no_copy() {
        let mut g = Graph::default();
        let x = g.conv("input", 3, 8, 3, 1);
        let shared = g.constant("shared", &[8, 8, 3, 3], 1.0);
        let bias = g.constant("shared_bias", &[8], 0.2);
        let attrs: &[(&str, &[i64])] = &[
            ("kernel_shape", &[3, 3]),
            ("strides", &[1, 1]),
            ("pads", &[1, 1, 1, 1]),
        ];
        let y = g.node("Conv", &[&x, &shared, &bias], attrs);
        let y = g.node("Relu", &[&y], &[]);
        let y = g.node("Conv", &[&y, &shared, &bias], attrs);
        let p = g.node("GlobalAveragePool", &[&y], &[]);
        let f = g.node("Flatten", &[&p], &[("axis", &[1])]);
        let fc = g.constant("fc", &[4, 8], 1.0);
        let out = g.node("Gemm", &[&f, &fc], &[("transB", &[1])]);
        let chw = [3, 9, 7];
        let bytes = g.bytes(&out, chw, 4);
        let mut proto = pb::ModelProto::decode(&bytes[..]).unwrap();
        let model = DirectClassifier::from_proto(&mut proto, Path::new("m.onnx"), chw, 4).unwrap();
        let input: Vec<f32> = (0..9 * 7 * 3)
            .map(|i| (i % 17) as f32 / 8.0 - 1.0)
            .collect();
        let (got, want) = (
            model.logits(&input).unwrap(),
            tract_logits(&bytes, chw, &input),
        );
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{got:?} vs {want:?}"
            );
        }
        // Every convolution's weights went into the plan; only the small constants stay.
        let kept: Vec<&str> = proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .filter(|t| !t.raw_data.is_empty())
            .map(|t| t.name.as_str())
            .collect();
        assert!(
            kept.iter().all(|n| !n.starts_with('w') && *n != "shared"),
            "{kept:?}"
        );
    }

    #[test]
    fn graphs_it_cannot_run_are_refused_with_the_reason() {
        let mut g = Graph::default();
        let x = g.conv("input", 3, 8, 3, 1);
        let x = g.node("Sigmoid", &[&x], &[]);
        let p = g.node("GlobalAveragePool", &[&x], &[]);
        let bytes = g.bytes(&p, [3, 8, 8], 8);
        let err =
            DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), [3, 8, 8], 8).unwrap_err();
        assert!(err.0.contains("Sigmoid"), "{err}");

        // Grouped but not depthwise.
        let mut g = Graph::default();
        let w = g.constant("w", &[8, 4, 3, 3], 1.0);
        let x = g.node(
            "Conv",
            &["input", &w],
            &[
                ("kernel_shape", &[3, 3]),
                ("pads", &[1, 1, 1, 1]),
                ("group", &[2]),
            ],
        );
        let p = g.node("GlobalAveragePool", &[&x], &[]);
        let bytes = g.bytes(&p, [8, 6, 6], 8);
        let err =
            DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), [8, 6, 6], 8).unwrap_err();
        assert!(err.0.contains("Conv"), "{err}");

        let bytes = resnet_like(true);
        let err =
            DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), [3, 19, 17], 4).unwrap_err();
        assert!(err.0.contains("not 4 logits"), "{err}");
        let err =
            DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), [4, 19, 17], 5).unwrap_err();
        assert!(err.0.contains("on 4 channels"), "{err}");
        assert!(
            DirectClassifier::from_onnx(b"\xff\xff", Path::new("m.onnx"), [3, 19, 17], 5).is_err()
        );
    }

    #[test]
    fn a_zero_stride_or_absurd_padding_is_refused_not_a_panic() {
        for (stride, pad) in [(0, 1), (1, i64::MAX / 2), (1, 3)] {
            let mut g = Graph::default();
            let w = g.constant("w", &[8, 3, 3, 3], 1.0);
            let x = g.node(
                "Conv",
                &["input", &w],
                &[
                    ("kernel_shape", &[3, 3]),
                    ("strides", &[stride, stride]),
                    ("pads", &[pad, pad, pad, pad]),
                ],
            );
            let p = g.node("GlobalAveragePool", &[&x], &[]);
            let bytes = g.bytes(&p, [3, 8, 8], 8);
            let err =
                DirectClassifier::from_onnx(&bytes, Path::new("m.onnx"), [3, 8, 8], 8).unwrap_err();
            assert!(err.0.contains("Conv"), "stride {stride} pad {pad}: {err}");
        }
    }
}
