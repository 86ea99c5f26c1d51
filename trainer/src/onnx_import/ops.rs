//! One handler per ONNX operator the importer reads.

use tract_onnx::pb;

use super::proto::{self, float_attr, int_attr, ints_attr, string_attr, Constant};
use super::{Importer, Value};
use crate::graph::{Activation, BatchNormValues, FloatOp, FoldedConv, Unary, Window};

type Outcome = std::result::Result<(), String>;

impl Importer {
    /// Reads one node into the float graph.
    pub(super) fn node(&mut self, node: &pb::NodeProto) -> Outcome {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(format!(
                "operator domain {:?} is not the standard one",
                node.domain
            ));
        }
        match node.op_type.as_str() {
            "Conv" => self.conv(node),
            "BatchNormalization" => self.batch_norm(node),
            "Relu" => self.activation(node, Activation::Relu),
            "Clip" => {
                let activation = self.clip_bounds(node)?;
                self.activation(node, activation)
            }
            "MaxPool" => self.max_pool(node),
            "AveragePool" => self.avg_pool(node),
            "GlobalAveragePool" => self.global_avg_pool(node, true),
            "ReduceMean" => self.reduce_mean(node),
            "Flatten" => self.flatten(node),
            "Reshape" => self.reshape(node),
            "Squeeze" | "Unsqueeze" => self.squeeze(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "Add" => self.add(node),
            "Mul" => self.mul(node),
            "Concat" => self.concat(node),
            "HardSwish" => self.unary(node, Unary::HardSwish),
            "HardSigmoid" => self.unary(
                node,
                Unary::HardSigmoid {
                    alpha: float_attr(node, "alpha", 0.2),
                    beta: float_attr(node, "beta", 0.5),
                },
            ),
            "Sigmoid" => self.unary(node, Unary::Sigmoid),
            "Identity" | "Dropout" => {
                // torch's exporter shares equal constants through Identity nodes.
                if let Some(c) = self.constant(node, 0).cloned() {
                    let name = node.output.first().cloned().unwrap_or_default();
                    self.constants.insert(name, c);
                    return Ok(());
                }
                let x = self.value(node, 0)?;
                self.alias(node, x);
                Ok(())
            }
            "Constant" => self.constant_node(node),
            "Softmax" | "LogSoftmax" => Err(
                "the model ends in a softmax; export its logits (the bundle's output activation \
                 turns them into probabilities when screening)"
                    .into(),
            ),
            other => Err(format!(
                "operator {other} is not one the importer reads (Conv, BatchNormalization, Relu, \
                 Clip, MaxPool, AveragePool, GlobalAveragePool, ReduceMean, Flatten, Reshape, \
                 Squeeze, Unsqueeze, Gemm, MatMul, Add, Mul, Concat, HardSwish, HardSigmoid, \
                 Sigmoid, Identity, Dropout, Constant)"
            )),
        }
    }

    fn constant_node(&mut self, node: &pb::NodeProto) -> Outcome {
        let value = if let Some(t) = proto::tensor_attr(node, "value") {
            proto::constant(t)?
        } else if let Some(ints) = ints_attr(node, "value_ints") {
            Constant {
                dims: vec![ints.len()],
                values: ints.iter().map(|&v| v as f32).collect(),
                ints: Some(ints),
            }
        } else {
            return Err("only tensor and integer-list constants are read".into());
        };
        let name = node.output.first().cloned().unwrap_or_default();
        self.constants.insert(name, value);
        Ok(())
    }

    /// Kernel, strides, pads (explicit or `auto_pad`) and dilations of a convolution or pool
    /// over an input of `[height, width]`.
    fn window(
        &self,
        node: &pb::NodeProto,
        kernel: Option<[usize; 2]>,
        input: [usize; 2],
    ) -> std::result::Result<Window, String> {
        let pair = |name: &str, default: usize| -> std::result::Result<[usize; 2], String> {
            match ints_attr(node, name).as_deref() {
                None => Ok([default; 2]),
                Some(&[a, b]) if a >= 0 && b >= 0 => Ok([a as usize, b as usize]),
                Some(v) => Err(format!(
                    "{name} {v:?}: two non-negative values expected (2-D)"
                )),
            }
        };
        let kernel = match (ints_attr(node, "kernel_shape"), kernel) {
            (Some(_), _) | (None, None) => pair("kernel_shape", 0)?,
            (None, Some(k)) => k,
        };
        if kernel.contains(&0) {
            return Err("kernel_shape is missing".into());
        }
        let stride = pair("strides", 1)?;
        let dilation = pair("dilations", 1)?;
        let pads = match ints_attr(node, "pads").as_deref() {
            None => [0; 4],
            Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
                [t as usize, l as usize, b as usize, r as usize]
            }
            Some(v) => return Err(format!("pads {v:?}: four non-negative values expected")),
        };
        let mut window = Window {
            kernel,
            stride,
            pads,
            dilation,
        };
        match string_attr(node, "auto_pad").as_deref() {
            None | Some("NOTSET") | Some("") => {}
            Some("VALID") => window.pads = [0; 4],
            Some(mode @ ("SAME_UPPER" | "SAME_LOWER")) => {
                for axis in 0..2 {
                    let out = input[axis].div_ceil(stride[axis]);
                    let span = dilation[axis] * (kernel[axis] - 1) + 1;
                    let total = ((out - 1) * stride[axis] + span).saturating_sub(input[axis]);
                    let small = total / 2;
                    let (begin, end) = if mode == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    window.pads[axis] = begin;
                    window.pads[axis + 2] = end;
                }
            }
            Some(other) => return Err(format!("auto_pad {other:?} is not an ONNX mode")),
        }
        if int_attr(node, "ceil_mode", 0) != 0 {
            return Err("ceil_mode 1 is not supported (export with ceil_mode=False)".into());
        }
        Ok(window)
    }

    fn conv(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.image(node, 0)?;
        let [c, h, w] = self.shape(x);
        let weight = self.required_constant(node, 1, "weight")?.clone();
        let &[o, per_group, kh, kw] = &weight.dims[..] else {
            return Err(format!(
                "weight dims {:?}: only 2-D convolutions are read",
                weight.dims
            ));
        };
        let groups = usize::try_from(int_attr(node, "group", 1)).unwrap_or(0);
        if groups == 0 || per_group * groups != c || o % groups != 0 {
            return Err(format!(
                "weight {:?} with group {groups} does not fit {c} input channels",
                weight.dims
            ));
        }
        let bias = match self.constant(node, 2) {
            Some(b) if b.len() == o => b.values.clone(),
            Some(b) => return Err(format!("bias has {} values for {o} filters", b.len())),
            None => vec![0.0; o],
        };
        let window = self.window(node, Some([kh, kw]), [h, w])?;
        let [oh, ow] = window
            .output_size([h, w])
            .ok_or_else(|| format!("the kernel does not fit the {h}×{w} input"))?;
        let conv = FoldedConv {
            weight: weight.values,
            shape: [o, per_group, kh, kw],
            bias,
            window,
            groups,
        };
        let op = FloatOp::Conv {
            conv,
            activation: Activation::None,
        };
        let y = self.push(op, vec![x], [o, oh, ow], false, node);
        self.define(node, Value::Tensor(y));
        Ok(())
    }

    fn batch_norm(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.image(node, 0)?;
        let [c, h, w] = self.shape(x);
        let mut stats = Vec::with_capacity(4);
        for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
            let v = self.required_constant(node, i, what)?;
            if v.len() != c {
                return Err(format!("{what} has {} values for {c} channels", v.len()));
            }
            stats.push(v.values.clone());
        }
        let [gamma, beta, mean, var] = <[Vec<f32>; 4]>::try_from(stats).expect("four");
        let bn = BatchNormValues {
            gamma,
            beta,
            mean,
            var,
            epsilon: float_attr(node, "epsilon", 1e-5),
        };
        if let Some(layer) = self.sole_producer(Value::Tensor(x)) {
            if let FloatOp::Conv {
                conv,
                activation: Activation::None,
            } = &mut self.graph.layers[layer].op
            {
                conv.fold_batch_norm(&bn);
                self.alias(node, Value::Tensor(x));
                return Ok(());
            }
        }
        // No convolution to fold into: a per-channel scale and shift, which is a depthwise
        // 1×1 convolution.
        let mut conv = FoldedConv {
            weight: vec![1.0; c],
            shape: [c, 1, 1, 1],
            bias: vec![0.0; c],
            window: Window::square(1, 1, 0),
            groups: c,
        };
        conv.fold_batch_norm(&bn);
        let op = FloatOp::Conv {
            conv,
            activation: Activation::None,
        };
        let y = self.push(op, vec![x], [c, h, w], false, node);
        self.define(node, Value::Tensor(y));
        Ok(())
    }

    /// A Clip's bounds: inputs 1 and 2 from opset 11, attributes before.
    fn clip_bounds(&self, node: &pb::NodeProto) -> std::result::Result<Activation, String> {
        let bound = |i: usize, attr: &str, default: f32| -> std::result::Result<f32, String> {
            if self.opset < 11 {
                return Ok(float_attr(node, attr, default));
            }
            match node.input.get(i).filter(|n| !n.is_empty()) {
                None => Ok(default),
                Some(_) => match self.constant(node, i) {
                    Some(c) if c.len() == 1 => Ok(c.values[0]),
                    _ => Err(format!("the {attr} bound must be a scalar constant")),
                },
            }
        };
        let (min, max) = (
            bound(1, "min", f32::NEG_INFINITY)?,
            bound(2, "max", f32::INFINITY)?,
        );
        Ok(if min == 0.0 && max == f32::INFINITY {
            Activation::Relu
        } else {
            Activation::Clip { min, max }
        })
    }

    /// Fused into the convolution, fully connected layer or add that made the input when
    /// nothing else reads it; a layer of its own otherwise.
    fn activation(&mut self, node: &pb::NodeProto, activation: Activation) -> Outcome {
        let x = self.value(node, 0)?;
        if let Some(layer) = self.sole_producer(x) {
            let slot = match &mut self.graph.layers[layer].op {
                FloatOp::Conv { activation, .. }
                | FloatOp::FullyConnected { activation, .. }
                | FloatOp::Add { activation } => Some(activation),
                _ => None,
            };
            if let Some(slot @ Activation::None) = slot {
                *slot = activation;
                let t = x.tensor();
                self.graph.tensors[t].non_negative = activation.non_negative();
                self.alias(node, x);
                return Ok(());
            }
        }
        self.unary(node, Unary::Activation(activation))
    }

    fn unary(&mut self, node: &pb::NodeProto, unary: Unary) -> Outcome {
        let x = self.value(node, 0)?;
        let t = x.tensor();
        let non_negative = match unary {
            Unary::Activation(a) => a.non_negative(),
            Unary::HardSwish => false,
            Unary::HardSigmoid { .. } | Unary::Sigmoid => true,
        };
        let y = self.push(
            FloatOp::Unary(unary),
            vec![t],
            self.shape(t),
            non_negative,
            node,
        );
        self.define(
            node,
            match x {
                Value::Tensor(_) => Value::Tensor(y),
                Value::Flat(_) => Value::Flat(y),
            },
        );
        Ok(())
    }

    fn max_pool(&mut self, node: &pb::NodeProto) -> Outcome {
        if node.output.get(1).is_some_and(|o| !o.is_empty()) {
            return Err("MaxPool's indices output is not supported".into());
        }
        let x = self.image(node, 0)?;
        let [c, h, w] = self.shape(x);
        let window = self.window(node, None, [h, w])?;
        let [oh, ow] = window
            .output_size([h, w])
            .ok_or_else(|| format!("the window does not fit the {h}×{w} input"))?;
        let non_negative = self.graph.tensors[x].non_negative;
        let y = self.push(
            FloatOp::MaxPool { window },
            vec![x],
            [c, oh, ow],
            non_negative,
            node,
        );
        self.define(node, Value::Tensor(y));
        Ok(())
    }

    fn avg_pool(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.image(node, 0)?;
        let [c, h, w] = self.shape(x);
        let window = self.window(node, None, [h, w])?;
        if window.symmetric_pads().is_none() || window.dilation != [1, 1] {
            return Err("AveragePool with asymmetric pads or dilation is not supported".into());
        }
        let [oh, ow] = window
            .output_size([h, w])
            .ok_or_else(|| format!("the window does not fit the {h}×{w} input"))?;
        let op = FloatOp::AvgPool {
            window,
            count_include_pad: int_attr(node, "count_include_pad", 0) != 0,
        };
        let non_negative = self.graph.tensors[x].non_negative;
        let y = self.push(op, vec![x], [c, oh, ow], non_negative, node);
        self.define(node, Value::Tensor(y));
        Ok(())
    }

    fn global_avg_pool(&mut self, node: &pb::NodeProto, keep_dims: bool) -> Outcome {
        let x = self.image(node, 0)?;
        let [c, _, _] = self.shape(x);
        let non_negative = self.graph.tensors[x].non_negative;
        let y = self.push(
            FloatOp::GlobalAvgPool,
            vec![x],
            [c, 1, 1],
            non_negative,
            node,
        );
        self.define(
            node,
            if keep_dims {
                Value::Tensor(y)
            } else {
                Value::Flat(y)
            },
        );
        Ok(())
    }

    /// `ReduceMean` over the two spatial axes is a global average pool.
    fn reduce_mean(&mut self, node: &pb::NodeProto) -> Outcome {
        let axes = ints_attr(node, "axes")
            .or_else(|| self.constant(node, 1).and_then(|c| c.ints.clone()))
            .unwrap_or_default();
        let mut axes: Vec<i64> = axes
            .iter()
            .map(|&a| if a < 0 { a + 4 } else { a })
            .collect();
        axes.sort_unstable();
        if axes != [2, 3] {
            return Err(format!(
                "ReduceMean over axes {axes:?}: only the spatial mean (axes 2, 3) is read"
            ));
        }
        self.global_avg_pool(node, int_attr(node, "keepdims", 1) != 0)
    }

    fn flatten(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.value(node, 0)?;
        if int_attr(node, "axis", 1) != 1 {
            return Err("only Flatten with axis 1 (per image) is read".into());
        }
        self.alias(node, Value::Flat(x.tensor()));
        Ok(())
    }

    /// A reshape to `N×(C·H·W)` flattens; one to the tensor's own `N×C×H×W` (or from a
    /// flattened `N×C` to `N×C×1×1`) keeps it as it is; any other is refused.
    fn reshape(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.value(node, 0)?;
        let shape = self
            .required_constant(node, 1, "shape")?
            .ints
            .clone()
            .ok_or("the shape must be integers")?;
        let t = x.tensor();
        let [c, h, w] = self.shape(t);
        let input: Vec<i64> = match x {
            Value::Tensor(_) => vec![1, c as i64, h as i64, w as i64],
            Value::Flat(_) => vec![1, (c * h * w) as i64],
        };
        let resolved = resolve_reshape(&input, &shape)
            .ok_or_else(|| format!("cannot reshape {input:?} (per batch of 1) to {shape:?}"))?;
        let volume = (c * h * w) as i64;
        let value = match resolved[..] {
            [1, v] if v == volume => Value::Flat(t),
            [1, a, b, d] if [a, b, d] == [c as i64, h as i64, w as i64] => Value::Tensor(t),
            _ => {
                return Err(format!(
                    "reshape to {shape:?} changes the layout of a {c}×{h}×{w} tensor; only \
                     flattening per image is read"
                ))
            }
        };
        self.alias(node, value);
        Ok(())
    }

    /// Squeezing the `1×1` spatial axes flattens; unsqueezing them back restores the tensor.
    fn squeeze(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.value(node, 0)?;
        let t = x.tensor();
        let [_, h, w] = self.shape(t);
        let axes = ints_attr(node, "axes")
            .or_else(|| self.constant(node, 1).and_then(|c| c.ints.clone()))
            .unwrap_or_default();
        let mut axes: Vec<i64> = axes
            .iter()
            .map(|&a| if a < 0 { a + 4 } else { a })
            .collect();
        axes.sort_unstable();
        let value = match (node.op_type.as_str(), x) {
            ("Squeeze", Value::Tensor(_)) if axes == [2, 3] && h * w == 1 => Value::Flat(t),
            ("Unsqueeze", Value::Flat(_)) if axes == [2, 3] && h * w == 1 => Value::Tensor(t),
            _ => {
                return Err(format!(
                    "{} over axes {axes:?}: only the 1×1 spatial axes (2, 3) are read",
                    node.op_type
                ))
            }
        };
        self.alias(node, value);
        Ok(())
    }

    fn fully_connected(
        &mut self,
        node: &pb::NodeProto,
        x: Value,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Outcome {
        let t = x.tensor();
        let out = bias.len();
        let y = self.push(
            FloatOp::FullyConnected {
                weight,
                bias,
                activation: Activation::None,
            },
            vec![t],
            [out, 1, 1],
            false,
            node,
        );
        self.define(node, Value::Flat(y));
        Ok(())
    }

    /// The flattened input's length.
    fn flat_len(&self, x: Value) -> std::result::Result<usize, String> {
        let [c, h, w] = self.shape(x.tensor());
        match x {
            Value::Flat(_) => Ok(c * h * w),
            Value::Tensor(_) => Err(format!(
                "the input is {c}×{h}×{w} per image; flatten it first"
            )),
        }
    }

    fn gemm(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.value(node, 0)?;
        let fin = self.flat_len(x)?;
        if int_attr(node, "transA", 0) != 0 {
            return Err("transA is not supported".into());
        }
        let b = self.required_constant(node, 1, "weight")?;
        let &[rows, cols] = &b.dims[..] else {
            return Err(format!("weight dims {:?}: 2-D expected", b.dims));
        };
        let trans_b = int_attr(node, "transB", 0) != 0;
        let (out, inner) = if trans_b { (rows, cols) } else { (cols, rows) };
        if inner != fin {
            return Err(format!("weight {:?} does not take {fin} inputs", b.dims));
        }
        let alpha = float_attr(node, "alpha", 1.0);
        let weight: Vec<f32> = (0..out * fin)
            .map(|i| {
                let (o, k) = (i / fin, i % fin);
                alpha
                    * if trans_b {
                        b.values[i]
                    } else {
                        b.values[k * out + o]
                    }
            })
            .collect();
        let beta = float_attr(node, "beta", 1.0);
        let bias = match self.constant(node, 2) {
            None => vec![0.0; out],
            Some(c) if c.len() == out => c.values.iter().map(|v| beta * v).collect(),
            Some(c) if c.len() == 1 => vec![beta * c.values[0]; out],
            Some(c) => return Err(format!("bias dims {:?} for {out} outputs", c.dims)),
        };
        self.fully_connected(node, x, weight, bias)
    }

    fn matmul(&mut self, node: &pb::NodeProto) -> Outcome {
        let x = self.value(node, 0)?;
        let fin = self.flat_len(x)?;
        let b = self.required_constant(node, 1, "weight")?;
        let &[inner, out] = &b.dims[..] else {
            return Err(format!("weight dims {:?}: 2-D expected", b.dims));
        };
        if inner != fin {
            return Err(format!("weight {:?} does not take {fin} inputs", b.dims));
        }
        let weight = (0..out * fin)
            .map(|i| b.values[(i % fin) * out + i / fin])
            .collect();
        self.fully_connected(node, x, weight, vec![0.0; out])
    }

    fn add(&mut self, node: &pb::NodeProto) -> Outcome {
        let constant_at = (0..2).find(|&i| self.constant(node, i).is_some());
        if let Some(i) = constant_at {
            let bias = self.constant(node, i).expect("found").values.clone();
            return self.fold_bias(node, self.value(node, 1 - i)?, bias);
        }
        let (a, b) = (self.value(node, 0)?, self.value(node, 1)?);
        let (ta, tb) = (a.tensor(), b.tensor());
        if self.shape(ta) != self.shape(tb) {
            return Err(format!(
                "adds {:?} and {:?}: only tensors of one shape are added (no broadcasting)",
                self.shape(ta),
                self.shape(tb)
            ));
        }
        let non_negative =
            self.graph.tensors[ta].non_negative && self.graph.tensors[tb].non_negative;
        let op = FloatOp::Add {
            activation: Activation::None,
        };
        let y = self.push(op, vec![ta, tb], self.shape(ta), non_negative, node);
        self.define(
            node,
            match a {
                Value::Tensor(_) => Value::Tensor(y),
                Value::Flat(_) => Value::Flat(y),
            },
        );
        Ok(())
    }

    /// A constant added after a convolution or fully connected layer is its bias.
    fn fold_bias(&mut self, node: &pb::NodeProto, x: Value, bias: Vec<f32>) -> Outcome {
        let layer = self.sole_producer(x).ok_or(
            "a constant is added to a tensor that is not the sole output of a Conv, Gemm or \
             MatMul (only biases are read)",
        )?;
        let target = match &mut self.graph.layers[layer].op {
            FloatOp::Conv {
                conv,
                activation: Activation::None,
            } => &mut conv.bias,
            FloatOp::FullyConnected {
                bias,
                activation: Activation::None,
                ..
            } => bias,
            _ => {
                return Err(
                    "a constant is added to something other than a Conv, Gemm or MatMul output"
                        .into(),
                )
            }
        };
        if bias.len() != target.len() && bias.len() != 1 {
            return Err(format!(
                "a constant of {} values is added to {} channels (only per-channel biases are read)",
                bias.len(),
                target.len()
            ));
        }
        for (i, b) in target.iter_mut().enumerate() {
            *b += bias[i.min(bias.len() - 1)];
        }
        self.alias(node, x);
        Ok(())
    }

    /// `x · s` with `s` of `x`'s shape or `C×1×1` (squeeze-and-excitation's gate).
    fn mul(&mut self, node: &pb::NodeProto) -> Outcome {
        if self.constant(node, 0).is_some() || self.constant(node, 1).is_some() {
            return Err("multiplying by a constant is not read".into());
        }
        let (mut a, mut b) = (self.value(node, 0)?, self.value(node, 1)?);
        let (sa, sb) = (self.shape(a.tensor()), self.shape(b.tensor()));
        if sa[1] * sa[2] == 1 && sb[1] * sb[2] > 1 {
            std::mem::swap(&mut a, &mut b);
        }
        let (sa, sb) = (self.shape(a.tensor()), self.shape(b.tensor()));
        if !(sa == sb || (sb[0] == sa[0] && sb[1] * sb[2] == 1)) {
            return Err(format!(
                "multiplies {sa:?} by {sb:?}: only equal shapes or a C×1×1 gate are read"
            ));
        }
        let non_negative = self.graph.tensors[a.tensor()].non_negative
            && self.graph.tensors[b.tensor()].non_negative;
        let y = self.push(
            FloatOp::Mul,
            vec![a.tensor(), b.tensor()],
            sa,
            non_negative,
            node,
        );
        self.define(node, Value::Tensor(y));
        Ok(())
    }

    fn concat(&mut self, node: &pb::NodeProto) -> Outcome {
        let axis = int_attr(node, "axis", 1);
        if axis != 1 && axis != -3 {
            return Err(format!(
                "Concat along axis {axis}: only channels (axis 1) are read"
            ));
        }
        let inputs = (0..node.input.len())
            .map(|i| self.image(node, i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let [_, h, w] = self.shape(inputs[0]);
        let mut channels = 0;
        for &t in &inputs {
            let [c, th, tw] = self.shape(t);
            if [th, tw] != [h, w] {
                return Err("concatenated tensors differ in height or width".into());
            }
            channels += c;
        }
        let non_negative = inputs.iter().all(|&t| self.graph.tensors[t].non_negative);
        let y = self.push(
            FloatOp::Concat,
            inputs,
            [channels, h, w],
            non_negative,
            node,
        );
        self.define(node, Value::Tensor(y));
        Ok(())
    }
}

/// ONNX `Reshape` semantics (0 copies the input's dimension, −1 takes the rest).
fn resolve_reshape(input: &[i64], shape: &[i64]) -> Option<Vec<i64>> {
    let volume: i64 = input.iter().product();
    let mut out: Vec<i64> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 {
                input.get(i).copied().unwrap_or(0)
            } else {
                d
            }
        })
        .collect();
    let known: i64 = out.iter().filter(|&&d| d != -1).product();
    match out.iter().filter(|&&d| d == -1).count() {
        0 => {}
        1 if known > 0 && volume % known == 0 => {
            let rest = volume / known;
            out.iter_mut().filter(|d| **d == -1).for_each(|d| *d = rest);
        }
        _ => return None,
    }
    (out.iter().product::<i64>() == volume && out.iter().all(|&d| d > 0)).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::resolve_reshape;

    #[test]
    fn reshape_targets_resolve_like_onnx() {
        assert_eq!(resolve_reshape(&[1, 8, 2, 2], &[0, -1]), Some(vec![1, 32]));
        assert_eq!(resolve_reshape(&[1, 8, 2, 2], &[1, -1]), Some(vec![1, 32]));
        assert_eq!(resolve_reshape(&[1, 8, 2, 2], &[-1, 32]), Some(vec![1, 32]));
        assert_eq!(
            resolve_reshape(&[1, 8], &[0, 8, 1, 1]),
            Some(vec![1, 8, 1, 1])
        );
        assert_eq!(resolve_reshape(&[1, 8, 2, 2], &[-1, -1]), None);
        assert_eq!(resolve_reshape(&[1, 8, 2, 2], &[3, -1]), None);
    }
}
