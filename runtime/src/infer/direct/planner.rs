//! Planning for the direct engine: the ONNX graph (nodes in topological order) walked into
//! [`Step`]s, fusing a convolution with the residual `Add` and `Relu` that only it feeds, then
//! every buffer's border sized and the convolutions packed (direct or Winograd). It refuses,
//! with the reason, anything it cannot run; it never runs a step.
//!
//! Packing takes each convolution's weights out of the decoded model (after the last
//! convolution reading them), so at no moment are a model's weights held as the protobuf's
//! bytes, as floats and packed all at once: ResNet-18's are 45 MiB each way.

use std::collections::HashMap;

use tract_onnx::pb;

use super::kernels::{ConvGeometry, PackedConv};
use super::winograd::WinogradConv;
use super::{unsupported, Buffer, ConvKernel, Plan, Step, Unsupported};

type Planned<T> = std::result::Result<T, Unsupported>;

/// A value of the graph: its buffer, and the step that wrote it (none: the model input).
type Value = (usize, Option<usize>);

/// A convolution as read from the graph, packed once every reader's border is known.
struct PendingConv {
    input: usize,
    output: usize,
    depthwise: bool,
    /// The weights' index among the graph's initializers (type and size checked).
    weight: usize,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    pad: usize,
}

/// Plans `model` for a `C×H×W` input and `classes` logits. The convolutions' weights are
/// taken out of `model` as they are packed: after an error it may have lost some.
pub(super) fn plan(model: &mut pb::ModelProto, chw: [usize; 3], classes: usize) -> Planned<Plan> {
    let Some(graph) = &mut model.graph else {
        return unsupported("the model has no graph");
    };
    let (mut layout, pending) = walk(graph, chw, classes)?;
    let mut convs = Vec::with_capacity(pending.len());
    for (i, (p, winograd)) in pending.iter().enumerate() {
        let tensor = &mut graph.initializer[p.weight];
        let weight = float_values(tensor);
        if pending[i + 1..]
            .iter()
            .all(|(later, _)| later.weight != p.weight)
        {
            tensor.raw_data = Vec::new();
            tensor.float_data = Vec::new();
        }
        let kernel = pack(p, &weight, &layout.buffers, *winograd)?;
        if let ConvKernel::Winograd(w) = &kernel {
            layout.scratch_len = layout.scratch_len.max(w.scratch_len());
        }
        convs.push(kernel);
    }
    layout.convs = convs;
    Ok(layout)
}

/// The plan without its convolutions (`convs` empty), and those to pack, in step order, each
/// with whether it runs as Winograd.
fn walk(
    graph: &pb::GraphProto,
    chw: [usize; 3],
    classes: usize,
) -> Planned<(Plan, Vec<(PendingConv, bool)>)> {
    let (mut planner, output) = Planner::new(graph, chw)?;
    for node in &graph.node {
        planner.node(node)?;
    }
    let (out, _) = planner.value(&output.name)?;
    if planner.buffers[out].shape != [1, 1, classes] || out == 0 {
        return unsupported(format!(
            "output {:?} is not {classes} logits",
            planner.buffers[out].shape
        ));
    }
    Ok(planner.finish(out, chw))
}

/// The plan as it grows, node by node.
struct Planner<'g> {
    /// Initializers by name, with their index in the graph.
    constants: HashMap<&'g str, (usize, &'g pb::TensorProto)>,
    /// How many times each value is read (a graph output counts as a read).
    readers: HashMap<&'g str, usize>,
    buffers: Vec<Buffer>,
    /// Value name → where it is.
    values: HashMap<&'g str, Value>,
    steps: Vec<Step>,
    /// Convolutions in step order, packed by [`Planner::finish`].
    pending: Vec<PendingConv>,
}

impl<'g> Planner<'g> {
    /// The planner before the first node: the input in buffer 0. Returns it with the graph's
    /// one output.
    fn new(graph: &'g pb::GraphProto, chw: [usize; 3]) -> Planned<(Self, &'g pb::ValueInfoProto)> {
        let constants: HashMap<&str, (usize, &pb::TensorProto)> = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), (i, t)))
            .collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !constants.contains_key(i.name.as_str()))
            .collect();
        let ([input], [output]) = (&inputs[..], &graph.output[..]) else {
            return unsupported("the graph does not have exactly one input and one output");
        };
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for name in graph
            .node
            .iter()
            .flat_map(|n| &n.input)
            .chain(std::iter::once(&output.name))
        {
            *readers.entry(name.as_str()).or_default() += 1;
        }
        let [c, h, w] = chw;
        let mut values = HashMap::new();
        values.insert(input.name.as_str(), (0, None));
        let planner = Self {
            constants,
            readers,
            buffers: vec![Buffer {
                shape: [h, w, c],
                border: 0,
            }],
            values,
            steps: Vec::new(),
            pending: Vec::new(),
        };
        Ok((planner, output))
    }

    fn value(&self, name: &str) -> Planned<Value> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| Unsupported(format!("value {name} is read before it is written")))
    }

    /// A new buffer of `shape` (its border is sized in [`Planner::finish`]).
    fn new_buffer(&mut self, shape: [usize; 3]) -> usize {
        self.buffers.push(Buffer { shape, border: 0 });
        self.buffers.len() - 1
    }

    /// Appends `step`, which writes `out_name` into buffer `output`.
    fn push_step(&mut self, out_name: &'g str, output: usize, step: Step) {
        self.steps.push(step);
        self.values
            .insert(out_name, (output, Some(self.steps.len() - 1)));
    }

    /// Plans one node.
    fn node(&mut self, node: &'g pb::NodeProto) -> Planned<()> {
        let [out_name] = &node.output[..] else {
            return unsupported(format!(
                "{} {} has several outputs",
                node.op_type, node.name
            ));
        };
        let x_name = node.input.first().map(String::as_str).unwrap_or_default();
        match node.op_type.as_str() {
            "Conv" => self.conv(node, x_name, out_name),
            "Relu" => self.relu(x_name, out_name),
            "Add" => self.add(node, out_name),
            "MaxPool" => self.max_pool(node, x_name, out_name),
            "GlobalAveragePool" => self.global_avg_pool(x_name, out_name),
            "Flatten" => self.flatten(node, x_name, out_name),
            "Gemm" => self.gemm(node, x_name, out_name),
            other => unsupported(format!("operator {other} ({})", node.name)),
        }
    }

    /// A standard or depthwise convolution, square kernel, symmetric pads, no dilation.
    fn conv(&mut self, node: &'g pb::NodeProto, x_name: &str, out_name: &'g str) -> Planned<()> {
        let (x, _) = self.value(x_name)?;
        let [ih, iw, ic] = self.buffers[x].shape;
        let &(weight, tensor) = node
            .input
            .get(1)
            .and_then(|n| self.constants.get(n.as_str()))
            .ok_or_else(|| {
                Unsupported(format!("Conv {}: weights are not a constant", node.name))
            })?;
        let dims = float_dims(tensor)?;
        let [o, i, kh, kw] = dims[..] else {
            return unsupported(format!(
                "Conv {}: weights of dimensions {dims:?}",
                node.name
            ));
        };
        let kernel = square(node, "kernel_shape", kh)?;
        let (stride, pad) = (square(node, "strides", 1)?, square(node, "pads", 0)?);
        let group = int_attr(node, "group", 1);
        let depthwise = group > 1 && group as usize == ic && o == ic && i == 1;
        let auto_pad = attr(node, "auto_pad")
            .map(|a| a.s.as_slice())
            .unwrap_or(b"NOTSET");
        if !(i == ic && group == 1 || depthwise)
            || kh != kw
            || kernel != kh
            || stride == 0
            || square(node, "dilations", 1)? != 1
            || !(auto_pad == b"NOTSET" || auto_pad.is_empty())
            || !window_fits(ih, pad, kernel)
            || !window_fits(iw, pad, kernel)
        {
            return unsupported(format!(
                "Conv {}: {o}×{i}×{kh}×{kw} on {ic} channels with these attributes",
                node.name
            ));
        }
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            None => vec![0.0; o],
            Some(n) => match self
                .constants
                .get(n.as_str())
                .map(|&(_, t)| constant(t))
                .transpose()?
            {
                Some((d, b)) if d == [o] => b,
                _ => {
                    return unsupported(format!(
                        "Conv {}: bias is not a constant of {o}",
                        node.name
                    ))
                }
            },
        };
        let output = self.new_buffer([
            (ih + 2 * pad - kernel) / stride + 1,
            (iw + 2 * pad - kernel) / stride + 1,
            o,
        ]);
        self.pending.push(PendingConv {
            input: x,
            output,
            depthwise,
            weight,
            bias,
            kernel,
            stride,
            pad,
        });
        let step = Step::Conv {
            // Packed in `finish`, once the borders are known.
            conv: self.pending.len() - 1,
            input: x,
            output,
            residual: None,
            relu: false,
        };
        self.push_step(out_name, output, step);
        Ok(())
    }

    /// A ReLU: fused into the convolution or add that writes its input when it is that
    /// value's only reader, a step of its own otherwise.
    fn relu(&mut self, x_name: &str, out_name: &'g str) -> Planned<()> {
        let (x, writer) = self.value(x_name)?;
        let sole_reader = self.readers.get(x_name) == Some(&1);
        if let (true, Some(s)) = (sole_reader, writer) {
            if let Step::Conv { relu, .. } | Step::Add { relu, .. } = &mut self.steps[s] {
                if !*relu {
                    *relu = true;
                    self.values.insert(out_name, (x, Some(s)));
                    return Ok(());
                }
            }
        }
        let output = self.new_buffer(self.buffers[x].shape);
        self.push_step(out_name, output, Step::Relu { input: x, output });
        Ok(())
    }

    /// An add of two same-shaped values: the residual of a convolution that only it reads,
    /// a step of its own otherwise.
    fn add(&mut self, node: &'g pb::NodeProto, out_name: &'g str) -> Planned<()> {
        let [a_name, b_name] = &node.input[..] else {
            return unsupported(format!("Add {} does not have two inputs", node.name));
        };
        let (a, b) = (self.value(a_name)?, self.value(b_name)?);
        if self.buffers[a.0].shape != self.buffers[b.0].shape {
            return unsupported(format!("Add {}: broadcasting", node.name));
        }
        let fused = self
            .fusable(a, a_name, b)
            .or_else(|| self.fusable(b, b_name, a));
        if let Some((s, other)) = fused {
            if let Step::Conv {
                residual, output, ..
            } = &mut self.steps[s]
            {
                *residual = Some(other);
                let output = *output;
                self.values.insert(out_name, (output, Some(s)));
            }
            return Ok(());
        }
        let output = self.new_buffer(self.buffers[a.0].shape);
        let step = Step::Add {
            a: a.0,
            b: b.0,
            output,
            relu: false,
        };
        self.push_step(out_name, output, step);
        Ok(())
    }

    /// `(step, residual buffer)` when `conv` is a plain convolution read only by this add and
    /// the `other` operand exists before it: the convolution then takes `other` as its
    /// residual.
    fn fusable(&self, conv: Value, conv_name: &str, other: Value) -> Option<(usize, usize)> {
        let s = conv.1?;
        let is_plain_conv = matches!(
            self.steps[s],
            Step::Conv {
                residual: None,
                relu: false,
                ..
            }
        );
        let before = other.1.is_none_or(|o| o < s);
        (is_plain_conv && before && self.readers.get(conv_name) == Some(&1)).then_some((s, other.0))
    }

    fn max_pool(
        &mut self,
        node: &'g pb::NodeProto,
        x_name: &str,
        out_name: &'g str,
    ) -> Planned<()> {
        let (x, _) = self.value(x_name)?;
        let [ih, iw, ic] = self.buffers[x].shape;
        let kernel = square(node, "kernel_shape", 0)?;
        let (stride, pad) = (square(node, "strides", 1)?, square(node, "pads", 0)?);
        if stride == 0
            || int_attr(node, "ceil_mode", 0) != 0
            || square(node, "dilations", 1)? != 1
            || attr(node, "auto_pad").is_some_and(|a| !(a.s.is_empty() || a.s == b"NOTSET"))
            || !window_fits(ih, pad, kernel)
            || !window_fits(iw, pad, kernel)
        {
            return unsupported(format!("MaxPool {}: these attributes", node.name));
        }
        let output = self.new_buffer([
            (ih + 2 * pad - kernel) / stride + 1,
            (iw + 2 * pad - kernel) / stride + 1,
            ic,
        ]);
        let step = Step::MaxPool {
            input: x,
            output,
            kernel,
            stride,
            pad,
        };
        self.push_step(out_name, output, step);
        Ok(())
    }

    fn global_avg_pool(&mut self, x_name: &str, out_name: &'g str) -> Planned<()> {
        let (x, _) = self.value(x_name)?;
        let output = self.new_buffer([1, 1, self.buffers[x].shape[2]]);
        self.push_step(out_name, output, Step::GlobalAvgPool { input: x, output });
        Ok(())
    }

    /// A flatten of a one-pixel value: nothing to run, the value keeps its buffer.
    fn flatten(&mut self, node: &'g pb::NodeProto, x_name: &str, out_name: &'g str) -> Planned<()> {
        let v = self.value(x_name)?;
        // NHWC and NCHW order agree only when there is one pixel.
        if self.buffers[v.0].shape[..2] != [1, 1] || int_attr(node, "axis", 1) != 1 {
            return unsupported(format!("Flatten {} of a spatial tensor", node.name));
        }
        self.values.insert(out_name, v);
        Ok(())
    }

    /// A fully connected layer on a one-pixel value (`transA` 0, `alpha` and `beta` 1).
    fn gemm(&mut self, node: &'g pb::NodeProto, x_name: &str, out_name: &'g str) -> Planned<()> {
        let (x, _) = self.value(x_name)?;
        let [1, 1, fin] = self.buffers[x].shape else {
            return unsupported(format!("Gemm {} on a spatial tensor", node.name));
        };
        let float_attr = |name: &str| attr(node, name).map_or(1.0, |a| a.f);
        if int_attr(node, "transA", 0) != 0
            || float_attr("alpha") != 1.0
            || float_attr("beta") != 1.0
        {
            return unsupported(format!("Gemm {}: transA, alpha or beta", node.name));
        }
        let get = |i: usize| {
            node.input
                .get(i)
                .and_then(|n| self.constants.get(n.as_str()))
                .map(|&(_, t)| constant(t))
                .transpose()
        };
        let Some((dims, b)) = get(1)? else {
            return unsupported(format!("Gemm {}: B is not a constant", node.name));
        };
        let trans_b = int_attr(node, "transB", 0) != 0;
        let (rows, cols) = match dims[..] {
            [r, c] => (r, c),
            _ => return unsupported(format!("Gemm {}: B of dimensions {dims:?}", node.name)),
        };
        let (fout, weight) = if trans_b {
            (rows, b)
        } else {
            // Stored `in × out`; transposed once here so each output is a dot product.
            (
                cols,
                (0..cols)
                    .flat_map(|o| (0..rows).map(move |i| (i, o)))
                    .map(|(i, o)| b[i * cols + o])
                    .collect(),
            )
        };
        if weight.len() != fin * fout {
            return unsupported(format!("Gemm {}: B {dims:?} for {fin} inputs", node.name));
        }
        let bias = match get(2)? {
            None => vec![0.0; fout],
            Some((d, c)) if d.iter().product::<usize>() == fout => c,
            Some((d, _)) => {
                return unsupported(format!("Gemm {}: C of dimensions {d:?}", node.name))
            }
        };
        let output = self.new_buffer([1, 1, fout]);
        let step = Step::Gemm {
            input: x,
            output,
            weight,
            bias,
        };
        self.push_step(out_name, output, step);
        Ok(())
    }

    /// Decides which convolutions run as Winograd and sizes every buffer's border (the widest
    /// padding, or Winograd reach, of the convolutions reading it); returns the plan without
    /// its convolutions and those to pack.
    fn finish(self, output: usize, chw: [usize; 3]) -> (Plan, Vec<(PendingConv, bool)>) {
        let mut buffers = self.buffers;
        let pending: Vec<(PendingConv, bool)> = self
            .pending
            .into_iter()
            .map(|p| {
                let (in_c, out_c) = (buffers[p.input].shape[2], buffers[p.output].shape[2]);
                let winograd =
                    !p.depthwise && WinogradConv::suits(p.kernel, p.stride, p.pad, in_c, out_c);
                (p, winograd)
            })
            .collect();
        for (p, winograd) in &pending {
            let needed = if *winograd {
                WinogradConv::border_needed(buffers[p.output].shape)
            } else {
                p.pad
            };
            buffers[p.input].border = buffers[p.input].border.max(needed);
        }
        let plan = Plan {
            steps: self.steps,
            convs: Vec::new(),
            scratch_len: 0,
            buffers,
            output,
            chw,
        };
        (plan, pending)
    }
}

/// Packs one convolution for its kernel, now that its buffers' borders are known.
fn pack(
    p: &PendingConv,
    weight: &[f32],
    buffers: &[Buffer],
    winograd: bool,
) -> Planned<ConvKernel> {
    let geometry = ConvGeometry {
        input: buffers[p.input].shape,
        input_border: buffers[p.input].border,
        output: buffers[p.output].shape,
        output_border: buffers[p.output].border,
        kernel: p.kernel,
        stride: p.stride,
        pad: p.pad,
    };
    if winograd {
        WinogradConv::new(geometry, weight, &p.bias).map(ConvKernel::Winograd)
    } else if p.depthwise {
        PackedConv::depthwise(geometry, weight, &p.bias).map(ConvKernel::Direct)
    } else {
        PackedConv::new(geometry, weight, &p.bias).map(ConvKernel::Direct)
    }
    .map_err(|e| Unsupported(format!("convolution {geometry:?}: {e:?}")))
}

/// An initializer as floats with its dimensions.
fn constant(t: &pb::TensorProto) -> std::result::Result<(Vec<usize>, Vec<f32>), Unsupported> {
    let dims = float_dims(t)?;
    Ok((dims, float_values(t)))
}

/// An initializer's dimensions, once it is checked to hold exactly that many floats, in the
/// model.
fn float_dims(t: &pb::TensorProto) -> std::result::Result<Vec<usize>, Unsupported> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return unsupported(format!("initializer {} is not float", t.name));
    }
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return unsupported(format!(
            "initializer {} is stored outside the model",
            t.name
        ));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let (values, bytes_fit) = if t.raw_data.is_empty() {
        (t.float_data.len(), true)
    } else {
        (t.raw_data.len() / 4, t.raw_data.len().is_multiple_of(4))
    };
    if !bytes_fit || Some(values) != dims.iter().try_fold(1_usize, |n, &d| n.checked_mul(d)) {
        return unsupported(format!(
            "initializer {} has {values} values for dimensions {dims:?}",
            t.name
        ));
    }
    Ok(dims)
}

/// An initializer's floats ([`float_dims`] checked it).
fn float_values(t: &pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// A square, symmetric spatial attribute (`kernel_shape`, `strides`, `pads`, `dilations`) as one
/// number; `default` when absent.
fn square(
    node: &pb::NodeProto,
    name: &str,
    default: usize,
) -> std::result::Result<usize, Unsupported> {
    let Some(a) = attr(node, name) else {
        return Ok(default);
    };
    match a.ints.split_first() {
        Some((&first, rest)) if first >= 0 && rest.iter().all(|&v| v == first) => {
            Ok(first as usize)
        }
        _ => unsupported(format!(
            "{} {}: {name} {:?} is not square and symmetric",
            node.op_type, node.name, a.ints
        )),
    }
}

/// Whether a window of `kernel` with `pad` on both sides fits an extent: a non-empty kernel,
/// padding narrower than it (what the exporter writes; anything else runs on tract), and no
/// overflow on absurd attribute values.
fn window_fits(extent: usize, pad: usize, kernel: usize) -> bool {
    kernel > 0
        && pad < kernel
        && pad
            .checked_mul(2)
            .and_then(|p| p.checked_add(extent))
            .is_some_and(|padded| padded >= kernel)
}

fn int_attr(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}
