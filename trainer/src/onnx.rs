//! ONNX writers: the fp32 classifier (opset 13, BatchNorm folded into the convolutions) and its
//! int8 twin as a standard QDQ graph. burn has no ONNX export, so the graphs are built here from
//! the model's weights with the ONNX protobuf types that tract-onnx already compiles
//! (`tract_onnx::pb`), encoded with prost. Bytes in, bytes out: nothing here checks, bundles or
//! writes files.

use burn::tensor::backend::Backend;
use prost::Message;
use tract_onnx::pb;

use crate::graph::{fold, Activation, FloatGraph, FloatLayer, FloatOp, FoldedConv, Unary, Window};
use crate::int8_calibration::QdqProfile;
use crate::int8_calibration::{quantize_bias, quantize_per_channel};
use crate::model::{to_vec, Block, Classifier};

/// ONNX opset written.
pub const OPSET: i64 = 13;
/// Name of the models' input tensor (`N×C×H×W`, normalised).
pub const INPUT_NAME: &str = "input";
/// Name of the models' output tensor (`N×classes` logits).
pub const OUTPUT_NAME: &str = "logits";

/// Accumulates nodes and initialisers of the ONNX graph.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    fn constant(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    fn constant_of(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: pb::tensor_proto::DataType,
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// `DequantizeLinear` of an integer initializer (per channel along axis 0 when `scales`
    /// has several entries).
    fn dequantized(
        &mut self,
        name: &str,
        dims: &[usize],
        q: QuantizedConstant<'_>,
        scales: &[f32],
    ) -> String {
        use pb::tensor_proto::DataType;
        let (data, zero) = match q {
            QuantizedConstant::I8(v) => (
                self.constant_of(
                    name,
                    dims,
                    DataType::Int8,
                    v.iter().map(|&x| x as u8).collect(),
                ),
                self.constant_of(
                    &format!("{name}.zero_point"),
                    &[scales.len()],
                    DataType::Int8,
                    vec![0; scales.len()],
                ),
            ),
            QuantizedConstant::I32(v) => (
                self.constant_of(
                    name,
                    dims,
                    DataType::Int32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                self.constant_of(
                    &format!("{name}.zero_point"),
                    &[scales.len()],
                    DataType::Int32,
                    vec![0; 4 * scales.len()],
                ),
            ),
        };
        let scale = self.constant(&format!("{name}.scale"), &[scales.len()], scales.to_vec());
        self.node(
            "DequantizeLinear",
            vec![data, scale, zero],
            vec![int("axis", 0)],
        )
    }

    /// `DequantizeLinear(QuantizeLinear(x))` with a per-tensor int8 scale and zero point.
    fn fake_quant(&mut self, x: String, (scale, zero_point): (f32, i8)) -> String {
        let s = self.fresh("act_scale");
        let s = self.constant(&s, &[], vec![scale]);
        let z = self.fresh("act_zero_point");
        let z = self.constant_of(
            &z,
            &[],
            pb::tensor_proto::DataType::Int8,
            vec![zero_point as u8],
        );
        let q = self.node("QuantizeLinear", vec![x, s.clone(), z.clone()], vec![]);
        self.node("DequantizeLinear", vec![q, s, z], vec![])
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.nodes.push(pb::NodeProto {
            name: output.clone(),
            op_type: op.to_string(),
            input: inputs,
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    fn conv(&mut self, input: String, c: &FoldedConv, name: &str) -> String {
        let w = self.constant(&format!("{name}.weight"), &c.shape, c.weight.clone());
        let b = self.constant(&format!("{name}.bias"), &[c.shape[0]], c.bias.clone());
        let attrs = conv_attributes(c);
        self.node("Conv", vec![input, w, b], attrs)
    }

    fn relu(&mut self, input: String) -> String {
        self.node("Relu", vec![input], vec![])
    }

    fn block<B: Backend>(&mut self, input: String, block: &Block<B>, name: &str) -> String {
        let shortcut = match &block.downsample {
            Some(d) => self.conv(
                input.clone(),
                &fold(&d.conv, &d.bn),
                &format!("{name}.downsample"),
            ),
            None => input.clone(),
        };
        let y = self.conv(
            input,
            &fold(&block.conv1, &block.bn1),
            &format!("{name}.conv1"),
        );
        let y = self.relu(y);
        let mut y = self.conv(y, &fold(&block.conv2, &block.bn2), &format!("{name}.conv2"));
        if let (Some(conv3), Some(bn3)) = (&block.conv3, &block.bn3) {
            let x = self.relu(y);
            y = self.conv(x, &fold(conv3, bn3), &format!("{name}.conv3"));
        }
        let sum = self.node("Add", vec![y, shortcut], vec![]);
        self.relu(sum)
    }
}

/// Integer data behind a `DequantizeLinear`.
enum QuantizedConstant<'a> {
    I8(&'a [i8]),
    I32(&'a [i32]),
}

/// Kernel, strides, pads, dilations and group of an ONNX `Conv`.
fn conv_attributes(c: &FoldedConv) -> Vec<pb::AttributeProto> {
    let mut attrs = window_attributes(&c.window);
    if c.window.dilation != [1, 1] {
        let [dy, dx] = c.window.dilation;
        attrs.push(ints("dilations", &[dy as i64, dx as i64]));
    }
    if c.groups > 1 {
        attrs.push(int("group", c.groups as i64));
    }
    attrs
}

/// `kernel_shape`, `strides` and `pads` of a convolution or pooling window.
fn window_attributes(w: &Window) -> Vec<pb::AttributeProto> {
    let i = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    vec![
        ints("kernel_shape", &i(&w.kernel)),
        ints("strides", &i(&w.stride)),
        ints("pads", &i(&w.pads)),
    ]
}

fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn tensor_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Serialises a classifier as an ONNX model taking `N×C×H×W` normalised images and returning
/// `N×classes` logits.
pub fn onnx_bytes<B: Backend>(model: &Classifier<B>, input_chw: [usize; 3]) -> Vec<u8> {
    let mut g = GraphBuilder::default();
    let backbone = &model.backbone;
    let y = g.conv(
        INPUT_NAME.to_string(),
        &fold(&backbone.stem_conv, &backbone.stem_bn),
        "stem",
    );
    let mut y = g.relu(y);
    if let Some(pool) = &backbone.stem_pool {
        let attrs = vec![
            ints(
                "kernel_shape",
                &[pool.kernel_size[0] as i64, pool.kernel_size[1] as i64],
            ),
            ints("strides", &[pool.stride[0] as i64, pool.stride[1] as i64]),
            ints("pads", &[1, 1, 1, 1]),
        ];
        y = g.node("MaxPool", vec![y], attrs);
    }
    for (i, block) in backbone.blocks.iter().enumerate() {
        y = g.block(y, block, &format!("block{i}"));
    }
    let pooled = g.node("GlobalAveragePool", vec![y], vec![]);
    let flat = g.node("Flatten", vec![pooled], vec![int("axis", 1)]);
    // burn's Linear stores its weight as [in, out], which is Gemm's B without transposition.
    let [fin, fout] = model.head.weight.val().dims();
    let w = g.constant("head.weight", &[fin, fout], to_vec(model.head.weight.val()));
    let b = g.constant(
        "head.bias",
        &[fout],
        model
            .head
            .bias
            .as_ref()
            .map_or(vec![0.0; fout], |b| to_vec(b.val())),
    );
    let logits = g.node("Gemm", vec![flat, w, b], vec![]);
    // Rename the last output to the public output name.
    if let Some(last) = g.nodes.last_mut() {
        last.output = vec![OUTPUT_NAME.to_string()];
    }
    let _ = logits;
    let [c, h, w] = input_chw;
    let graph = pb::GraphProto {
        name: "scanside_classifier".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
        output: vec![tensor_info(OUTPUT_NAME, &[None, Some(fout)])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        producer_name: "scanside-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

impl GraphBuilder {
    /// The activation's node after `x` (none for [`Activation::None`]).
    fn activation(&mut self, x: String, activation: Activation) -> String {
        match activation {
            Activation::None => x,
            Activation::Relu => self.relu(x),
            Activation::Clip { min, max } => {
                let lo = self.fresh("clip_min");
                let lo = self.constant(&lo, &[], vec![min]);
                let hi = self.fresh("clip_max");
                let hi = self.constant(&hi, &[], vec![max]);
                self.node("Clip", vec![x, lo, hi], vec![])
            }
        }
    }

    /// Weights int8 per output channel and the bias behind `DequantizeLinear`s, as inputs of
    /// a `Conv` or `Gemm`: the bias int32 in accumulator scale (onnxruntime fuses it), or
    /// for TensorRT (whose QDQ layers are int8 only) the same int32 values dequantised into
    /// a float initializer, so both profiles add exactly the blob's bias.
    fn quantized_weights(
        &mut self,
        name: &str,
        (weight, dims): (&[f32], &[usize]),
        bias: &[f32],
        input_scale: f32,
        profile: QdqProfile,
    ) -> (String, String) {
        let out = dims[0];
        let (w, scales) = quantize_per_channel(weight, out);
        let b = quantize_bias(bias, input_scale, &scales);
        let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
        let w = self.dequantized(
            &format!("{name}.weight"),
            dims,
            QuantizedConstant::I8(&w),
            &scales,
        );
        let b = match profile {
            QdqProfile::Onnxruntime => self.dequantized(
                &format!("{name}.bias"),
                &[out],
                QuantizedConstant::I32(&b),
                &bias_scales,
            ),
            QdqProfile::Tensorrt => {
                let values = b
                    .iter()
                    .zip(&bias_scales)
                    .map(|(&q, &s)| (f64::from(q) * f64::from(s)) as f32)
                    .collect();
                self.constant(&format!("{name}.bias"), &[out], values)
            }
        };
        (w, b)
    }

    /// One layer of the QDQ graph on its (already fake-quantised) inputs, before the
    /// fake quantisation of its output.
    fn qdq_layer(
        &mut self,
        index: usize,
        layer: &FloatLayer,
        inputs: Vec<String>,
        input_scale: f32,
        profile: QdqProfile,
    ) -> String {
        let x = inputs[0].clone();
        let name = format!("layer{index}");
        match &layer.op {
            FloatOp::Conv { conv, activation } => {
                let (w, b) = self.quantized_weights(
                    &name,
                    (&conv.weight, &conv.shape),
                    &conv.bias,
                    input_scale,
                    profile,
                );
                let y = self.node("Conv", vec![x, w, b], conv_attributes(conv));
                self.activation(y, *activation)
            }
            FloatOp::MaxPool { window } => self.node("MaxPool", vec![x], window_attributes(window)),
            FloatOp::AvgPool {
                window,
                count_include_pad,
            } => {
                let mut attrs = window_attributes(window);
                attrs.push(int("count_include_pad", i64::from(*count_include_pad)));
                self.node("AveragePool", vec![x], attrs)
            }
            FloatOp::Add { activation } => {
                let sum = self.node("Add", inputs, vec![]);
                self.activation(sum, *activation)
            }
            FloatOp::Mul => self.node("Mul", inputs, vec![]),
            FloatOp::Concat => self.node("Concat", inputs, vec![int("axis", 1)]),
            FloatOp::GlobalAvgPool => self.node("GlobalAveragePool", vec![x], vec![]),
            FloatOp::FullyConnected {
                weight,
                bias,
                activation,
            } => {
                let dims = [bias.len(), weight.len() / bias.len()];
                let (w, b) =
                    self.quantized_weights(&name, (weight, &dims), bias, input_scale, profile);
                let flat = self.node("Flatten", vec![x], vec![int("axis", 1)]);
                let y = self.node("Gemm", vec![flat, w, b], vec![int("transB", 1)]);
                self.activation(y, *activation)
            }
            FloatOp::Unary(unary) => self.unary(x, *unary),
        }
    }

    /// Element-wise functions in opset-13 operators (HardSwish arrived in opset 14).
    fn unary(&mut self, x: String, unary: Unary) -> String {
        let hard_sigmoid = |g: &mut Self, x: String, alpha: f32, beta: f32| {
            let attrs = vec![float("alpha", alpha), float("beta", beta)];
            g.node("HardSigmoid", vec![x], attrs)
        };
        match unary {
            Unary::Activation(a) => self.activation(x, a),
            Unary::HardSwish => {
                let gate = hard_sigmoid(self, x.clone(), 1.0 / 6.0, 0.5);
                self.node("Mul", vec![x, gate], vec![])
            }
            Unary::HardSigmoid { alpha, beta } => hard_sigmoid(self, x, alpha, beta),
            Unary::Sigmoid => self.node("Sigmoid", vec![x], vec![]),
        }
    }
}

fn float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

/// The int8 model as a standard ONNX QDQ graph (opset 13): every activation passes through
/// `QuantizeLinear → DequantizeLinear` with the blob's scale and zero point, weights are int8
/// per output channel (axis 0) behind a `DequantizeLinear`, biases int32 in accumulator scale
/// (float for the TensorRT profile) — the form onnxruntime and TensorRT fuse into integer
/// kernels. Same quantisation as the blob, so the two agree up to the rounding of the
/// requantisation (fixed point in the blob). Layers the int8 core lacks are written as their
/// float operators between the same Q/DQ pairs.
pub(crate) fn qdq_onnx_bytes(
    graph: &FloatGraph,
    quant: &[(f32, i8)],
    profile: QdqProfile,
) -> Vec<u8> {
    let mut g = GraphBuilder::default();
    let mut names: Vec<String> = vec![String::new(); graph.tensors.len()];
    names[0] = g.fake_quant(INPUT_NAME.to_string(), quant[0]);
    for (i, layer) in graph.layers.iter().enumerate() {
        let inputs = layer.inputs.iter().map(|&t| names[t].clone()).collect();
        let y = g.qdq_layer(i, layer, inputs, quant[layer.inputs[0]].0, profile);
        names[layer.output] = g.fake_quant(y, quant[layer.output]);
    }
    // Logits as `N×classes` whatever the last layer (a 1×1 convolution head ends 4-D).
    let last = graph.tensors.last().expect("a graph has an output");
    if !matches!(
        graph.layers.last().map(|l| &l.op),
        Some(FloatOp::FullyConnected { .. })
    ) {
        let out = names[graph.tensors.len() - 1].clone();
        g.node("Flatten", vec![out], vec![int("axis", 1)]);
    }
    if let Some(node) = g.nodes.last_mut() {
        node.output = vec![OUTPUT_NAME.to_string()];
    }
    let [c, h, w] = graph.input_chw();
    let graph = pb::GraphProto {
        name: format!("scanside_classifier_qdq_{}", profile.name()),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
        output: vec![tensor_info(OUTPUT_NAME, &[None, Some(last.channels)])],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 7,
        producer_name: "scanside-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResNetConfig;
    use burn::backend::Flex;
    use burn::tensor::Tensor;
    use tract_onnx::prelude::*;

    /// Bottleneck blocks (conv3) and the ImageNet stem (max-pool) export like the basic ones:
    /// tract reproduces burn's logits.
    #[test]
    fn resnet50_with_the_imagenet_stem_exports_to_the_same_logits() {
        exports_to_the_same_logits(ResNetConfig {
            depth: 50,
            width_multiplier: 0.125,
            in_channels: 3,
            small_input_stem: false,
            separable: false,
        });
    }

    /// Depthwise-separable blocks (`--arch micro`) export with ONNX's `group` attribute.
    #[test]
    fn separable_blocks_export_to_the_same_logits() {
        exports_to_the_same_logits(ResNetConfig {
            depth: 18,
            width_multiplier: 0.25,
            in_channels: 3,
            small_input_stem: true,
            separable: true,
        });
    }

    fn exports_to_the_same_logits(config: ResNetConfig) {
        let device = Default::default();
        let model = Classifier::<Flex>::new(config.init(&device), config.feature_dim(), 5, &device);
        let side = 32;
        let input: Vec<f32> = (0..3 * side * side)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let expected = to_vec(model.forward(Tensor::<Flex, 4>::from_data(
            burn::tensor::TensorData::new(input.clone(), [1, 3, side, side]),
            &device,
        )));
        let bytes = onnx_bytes(&model, [3, side, side]);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, side, side]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap();
        let tensor = tract_onnx::prelude::Tensor::from_shape(&[1, 3, side, side], &input).unwrap();
        let out = plan.run(tvec!(tensor.into())).unwrap();
        let got: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(got.len(), 5);
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "tract {got:?} vs burn {expected:?}");
        }
    }
}
