//! ONNX import: a classifier trained elsewhere (PyTorch's `torch.onnx.export`, timm, MONAI,
//! the ONNX model zoo) read into the trainer's one float graph ([`crate::graph::FloatGraph`]),
//! so the calibration, the int8 blob and the QDQ writer that serve scanside's own models
//! serve it too. BatchNorm folds into the convolution before it (or becomes a depthwise 1×1
//! convolution where none precedes it), ReLU and Clip (ReLU6) fuse into the layer they
//! follow, a bias `Add` after `MatMul` or `Conv` folds into its bias, and Flatten, Reshape,
//! Squeeze, Unsqueeze, Dropout and Identity only change how a tensor is addressed.
//!
//! Reads bytes, returns a graph or one error naming the file, the node and the problem; it
//! never runs the model (the export compares the graph with tract's run of the file) and
//! never writes anything.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use crate::graph::{FloatGraph, FloatLayer, FloatOp, FloatTensor};
use crate::{Error, Result};

mod ops;
mod proto;

use proto::Constant;

/// What the runtime needs to know of an imported model's interface.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxInterface {
    /// The graph input (`N×C×H×W`).
    pub input_name: String,
    /// Its dimensions; `None` where symbolic (the batch, or a free image size).
    pub input_dims: Vec<Option<usize>>,
    /// The graph output (`N×classes`).
    pub output_name: String,
    /// Its dimensions.
    pub output_dims: Vec<Option<usize>>,
    /// The default-domain opset.
    pub opset: i64,
}

/// An ONNX classifier read into the float graph.
#[derive(Debug, Clone)]
pub struct ImportedModel {
    /// Its interface.
    pub interface: OnnxInterface,
    pub(crate) graph: FloatGraph,
    /// ONNX nodes read.
    pub nodes: usize,
}

impl ImportedModel {
    /// Output classes.
    pub fn classes(&self) -> usize {
        self.graph.classes()
    }

    /// Operators the int8 core lacks (empty: the whole graph quantises to the blob).
    pub fn int8_gaps(&self) -> Vec<String> {
        self.graph.int8_gaps()
    }

    /// Layers of the float graph (after folding and fusing).
    pub fn layers(&self) -> usize {
        self.graph.layers.len()
    }
}

fn import_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decodes an ONNX file's bytes.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<pb::ModelProto> {
    pb::ModelProto::decode(bytes)
        .map_err(|e| import_error(path, format!("not an ONNX model (protobuf: {e})")))
}

/// The input and output of a classifier: one graph input besides the initializers, one
/// output.
pub fn interface(model: &pb::ModelProto, path: &Path) -> Result<OnnxInterface> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| import_error(path, "the model has no graph"))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .collect();
    let [input] = inputs[..] else {
        return Err(import_error(
            path,
            format!(
                "a classifier has one input (an N×C×H×W image batch); this graph has {}",
                inputs.len()
            ),
        ));
    };
    let [output] = &graph.output[..] else {
        return Err(import_error(
            path,
            format!(
                "a classifier has one output (N×classes logits); this graph has {}",
                graph.output.len()
            ),
        ));
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    Ok(OnnxInterface {
        input_name: input.name.clone(),
        input_dims: proto::dims(input),
        output_name: output.name.clone(),
        output_dims: proto::dims(output),
        opset,
    })
}

/// How a value of the ONNX graph maps onto the float graph's tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    /// `N×C×H×W`: the tensor itself.
    Tensor(usize),
    /// `N×(C·H·W)`: the tensor flattened (after Flatten, Reshape, Gemm …).
    Flat(usize),
}

impl Value {
    fn tensor(self) -> usize {
        match self {
            Value::Tensor(t) | Value::Flat(t) => t,
        }
    }
}

/// The walk over the ONNX nodes, building the float graph.
struct Importer {
    graph: FloatGraph,
    values: HashMap<String, Value>,
    constants: HashMap<String, Constant>,
    /// How many nodes (and graph outputs) read each ONNX value.
    readers: HashMap<String, usize>,
    /// Readers of each float-graph tensor still to come, over every name it goes by.
    tensor_readers: Vec<usize>,
    /// The layer that made each tensor (`None`: the input).
    producer: Vec<Option<usize>>,
    opset: i64,
}

/// Reads an ONNX classifier into the float graph, its input taken as `chw`.
pub fn import_onnx(bytes: &[u8], path: &Path, chw: [usize; 3]) -> Result<ImportedModel> {
    let model = decode_model(bytes, path)?;
    let interface = interface(&model, path)?;
    check_input_dims(&interface, chw, path)?;
    let graph = model.graph.as_ref().expect("checked by interface");
    let mut importer = Importer::new(graph, &interface, chw, path)?;
    for node in &graph.node {
        importer.node(node).map_err(|reason| {
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            import_error(path, format!("node {name:?} ({}): {reason}", node.op_type))
        })?;
    }
    let graph = importer.finish(&interface.output_name, path)?;
    Ok(ImportedModel {
        interface,
        graph,
        nodes: model.graph.as_ref().map_or(0, |g| g.node.len()),
    })
}

/// The model's fixed input dimensions must be the preprocessing's.
fn check_input_dims(interface: &OnnxInterface, chw: [usize; 3], path: &Path) -> Result<()> {
    let dims = &interface.input_dims;
    if !dims.is_empty() && dims.len() != 4 {
        return Err(import_error(
            path,
            format!(
                "input {:?} has {} dimensions; a classifier takes N×C×H×W",
                interface.input_name,
                dims.len()
            ),
        ));
    }
    for (axis, (&want, got)) in chw.iter().zip(dims.iter().skip(1)).enumerate() {
        if let Some(got) = got.filter(|&g| g != want) {
            return Err(import_error(
                path,
                format!(
                    "input {:?} has {} = {got}, the preprocessing gives {want}",
                    interface.input_name,
                    ["channels", "height", "width"][axis]
                ),
            ));
        }
    }
    Ok(())
}

impl Importer {
    fn new(
        graph: &pb::GraphProto,
        interface: &OnnxInterface,
        [c, h, w]: [usize; 3],
        path: &Path,
    ) -> Result<Self> {
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            let value = proto::constant(t).map_err(|e| import_error(path, e))?;
            constants.insert(t.name.clone(), value);
        }
        let mut readers: HashMap<String, usize> = HashMap::new();
        for name in graph.node.iter().flat_map(|n| n.input.iter()) {
            *readers.entry(name.clone()).or_default() += 1;
        }
        for output in &graph.output {
            *readers.entry(output.name.clone()).or_default() += 1;
        }
        let mut importer = Importer {
            graph: FloatGraph {
                tensors: vec![],
                layers: vec![],
            },
            values: HashMap::new(),
            constants,
            readers,
            tensor_readers: vec![],
            producer: vec![],
            opset: interface.opset,
        };
        let input = importer.new_tensor([c, h, w], false, &interface.input_name, None);
        importer
            .values
            .insert(interface.input_name.clone(), Value::Tensor(input));
        Ok(importer)
    }

    fn readers_of(&self, name: &str) -> usize {
        self.readers.get(name).copied().unwrap_or(0)
    }

    fn new_tensor(
        &mut self,
        [c, h, w]: [usize; 3],
        non_negative: bool,
        name: &str,
        producer: Option<usize>,
    ) -> usize {
        self.graph.tensors.push(FloatTensor {
            height: h,
            width: w,
            channels: c,
            non_negative,
        });
        self.tensor_readers.push(self.readers_of(name));
        self.producer.push(producer);
        self.graph.tensors.len() - 1
    }

    /// Adds a layer reading `inputs` and returns its output tensor, named `name`.
    fn push(
        &mut self,
        op: FloatOp,
        inputs: Vec<usize>,
        shape: [usize; 3],
        non_negative: bool,
        node: &pb::NodeProto,
    ) -> usize {
        let name = node.output.first().cloned().unwrap_or_default();
        let output = self.new_tensor(shape, non_negative, &name, Some(self.graph.layers.len()));
        let source = if node.name.is_empty() {
            name
        } else {
            node.name.clone()
        };
        self.graph.layers.push(FloatLayer {
            op,
            inputs,
            output,
            source,
        });
        output
    }

    /// `node`'s first output names `value` (a new layer's output or an alias of an input).
    fn define(&mut self, node: &pb::NodeProto, value: Value) {
        if let Some(name) = node.output.first() {
            self.values.insert(name.clone(), value);
        }
    }

    /// `node`'s first output is another name of its input's tensor: that tensor's readers
    /// gain the new name's and lose this node.
    fn alias(&mut self, node: &pb::NodeProto, value: Value) {
        let t = value.tensor();
        let added = node.output.first().map_or(0, |n| self.readers_of(n));
        self.tensor_readers[t] = (self.tensor_readers[t] + added).saturating_sub(1);
        self.define(node, value);
    }

    /// The layer that made `value`'s tensor, when this node is the tensor's only reader and
    /// so may change it in place (fold a BatchNorm or bias, fuse an activation).
    fn sole_producer(&self, value: Value) -> Option<usize> {
        let t = value.tensor();
        (self.tensor_readers[t] == 1)
            .then_some(self.producer[t])
            .flatten()
    }

    fn value(&self, node: &pb::NodeProto, i: usize) -> std::result::Result<Value, String> {
        let name = node
            .input
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("input {i} is missing"))?;
        self.values.get(name).copied().ok_or_else(|| {
            if self.constants.contains_key(name) {
                format!("input {name:?} is a constant where an activation was expected")
            } else {
                format!("input {name:?} is not made by any node read so far")
            }
        })
    }

    /// An `N×C×H×W` input.
    fn image(&self, node: &pb::NodeProto, i: usize) -> std::result::Result<usize, String> {
        match self.value(node, i)? {
            Value::Tensor(t) => Ok(t),
            Value::Flat(_) => Err(format!(
                "input {i} is flattened; an N×C×H×W tensor is needed"
            )),
        }
    }

    fn constant(&self, node: &pb::NodeProto, i: usize) -> Option<&Constant> {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| self.constants.get(n))
    }

    fn required_constant(
        &self,
        node: &pb::NodeProto,
        i: usize,
        what: &str,
    ) -> std::result::Result<&Constant, String> {
        self.constant(node, i)
            .ok_or_else(|| format!("the {what} (input {i}) must be a constant stored in the model"))
    }

    fn shape(&self, t: usize) -> [usize; 3] {
        let t = &self.graph.tensors[t];
        [t.channels, t.height, t.width]
    }

    /// The float graph, checked to end in the model's output as `N×classes`.
    fn finish(self, output: &str, path: &Path) -> Result<FloatGraph> {
        let value = self.values.get(output).copied().ok_or_else(|| {
            import_error(
                path,
                format!("the output {output:?} is not made by any node"),
            )
        })?;
        let t = value.tensor();
        let last = self.graph.tensors.len() - 1;
        let [c, h, w] = self.shape(t);
        if t != last || self.graph.layers.is_empty() {
            return Err(import_error(
                path,
                format!("the output {output:?} must be made by the graph's last layer"),
            ));
        }
        if !matches!(value, Value::Flat(_)) || h * w != 1 {
            return Err(import_error(
                path,
                format!(
                    "the output {output:?} is {c}×{h}×{w} per image; a classifier returns \
                     N×classes logits (flatten them)"
                ),
            ));
        }
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{evaluate, Activation, FloatOp};
    use crate::model::to_vec;
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};
    use tract_onnx::prelude::{
        tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue,
    };

    /// A small ONNX graph written by hand, as exporters write them.
    #[derive(Default)]
    struct Onnx {
        nodes: Vec<pb::NodeProto>,
        inits: Vec<pb::TensorProto>,
        state: u32,
    }

    fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: v,
            ..Default::default()
        }
    }

    impl Onnx {
        fn random(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.state = self
                        .state
                        .wrapping_mul(1_664_525)
                        .wrapping_add(1_013_904_223);
                    ((self.state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2.0 * scale
                })
                .collect()
        }

        fn init(&mut self, dims: &[usize], values: Vec<f32>) -> String {
            let name = format!("c{}", self.inits.len());
            self.inits.push(pb::TensorProto {
                name: name.clone(),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: pb::tensor_proto::DataType::Float as i32,
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            });
            name
        }

        fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
            let out = format!("{}_{}", op.to_lowercase(), self.nodes.len());
            self.nodes.push(pb::NodeProto {
                name: out.clone(),
                op_type: op.into(),
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec![out.clone()],
                attribute: attrs,
                ..Default::default()
            });
            out
        }

        fn conv(
            &mut self,
            x: &str,
            cin: usize,
            cout: usize,
            k: usize,
            stride: i64,
            group: usize,
        ) -> String {
            let w = self.random(cout * cin / group * k * k, 0.5);
            let w = self.init(&[cout, cin / group, k, k], w);
            let p = (k / 2) as i64;
            let attrs = vec![
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[p, p, p, p]),
                attr_int("group", group as i64),
            ];
            self.node("Conv", &[x, &w], attrs)
        }

        fn batch_norm(&mut self, x: &str, c: usize) -> String {
            let gamma = self.random(c, 0.4).iter().map(|v| v + 1.0).collect();
            let beta = self.random(c, 0.1);
            let mean = self.random(c, 0.1);
            let var = self.random(c, 0.3).iter().map(|v| v + 1.0).collect();
            let names: Vec<String> = [gamma, beta, mean, var]
                .into_iter()
                .map(|v| self.init(&[c], v))
                .collect();
            self.node(
                "BatchNormalization",
                &[x, &names[0], &names[1], &names[2], &names[3]],
                vec![],
            )
        }

        fn bytes(mut self, last_output: &str, side: usize, classes: usize) -> Vec<u8> {
            let last = self
                .nodes
                .iter_mut()
                .find(|n| n.output[0] == last_output)
                .unwrap();
            last.output[0] = "logits".into();
            let info = |name: &str, dims: &[i64]| pb::ValueInfoProto {
                name: name.into(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: pb::tensor_proto::DataType::Float as i32,
                        shape: Some(pb::TensorShapeProto {
                            dim: dims
                                .iter()
                                .map(|&d| pb::tensor_shape_proto::Dimension {
                                    value: Some(
                                        pb::tensor_shape_proto::dimension::Value::DimValue(d),
                                    ),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            };
            pb::ModelProto {
                ir_version: 8,
                opset_import: vec![pb::OperatorSetIdProto {
                    domain: String::new(),
                    version: 13,
                }],
                graph: Some(pb::GraphProto {
                    node: self.nodes,
                    initializer: self.inits,
                    input: vec![info("input", &[1, 3, side as i64, side as i64])],
                    output: vec![info("logits", &[1, classes as i64])],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        }
    }

    /// Conv + BatchNorm + ReLU6 stem, a depthwise-separable block with a residual add, a
    /// stand-alone BatchNorm, max-pool, global pool, Flatten and Gemm (transB).
    fn small_mobilenet(side: usize) -> Vec<u8> {
        let mut g = Onnx::default();
        let six = g.init(&[], vec![6.0]);
        let zero = g.init(&[], vec![0.0]);
        let x = g.conv("input", 3, 8, 3, 2, 1);
        let x = g.batch_norm(&x, 8);
        let x = g.node("Clip", &[&x, &zero, &six], vec![]);
        let y = g.conv(&x, 8, 8, 3, 1, 8);
        let y = g.batch_norm(&y, 8);
        let y = g.node("Relu", &[&y], vec![]);
        let y = g.conv(&y, 8, 8, 1, 1, 1);
        let b = g.random(8, 0.1);
        let b = g.init(&[8, 1, 1], b);
        let y = g.node("Add", &[&y, &b], vec![]);
        let x = g.node("Add", &[&x, &y], vec![]);
        let x = g.batch_norm(&x, 8);
        let x = g.node(
            "MaxPool",
            &[&x],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[0, 0, 1, 1]),
            ],
        );
        let x = g.node("GlobalAveragePool", &[&x], vec![]);
        let x = g.node("Flatten", &[&x], vec![attr_int("axis", 1)]);
        let w = g.random(3 * 8, 0.5);
        let w = g.init(&[3, 8], w);
        let b = g.random(3, 0.1);
        let b = g.init(&[3], b);
        let logits = g.node("Gemm", &[&x, &w, &b], vec![attr_int("transB", 1)]);
        g.bytes(&logits, side, 3)
    }

    fn tract_logits(bytes: &[u8], side: usize, input: &[f32]) -> Vec<f32> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, side, side]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap();
        let x = tract_onnx::prelude::Tensor::from_shape(&[1, 3, side, side], input).unwrap();
        let out = plan.run(tvec!(x.into_tvalue())).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn an_imported_graph_folds_fuses_and_reproduces_tract() {
        let side = 16;
        let bytes = small_mobilenet(side);
        let model = import_onnx(&bytes, Path::new("small.onnx"), [3, side, side]).unwrap();
        let g = &model.graph;
        // Both BatchNorms after a convolution folded, the third became a depthwise 1×1; the
        // ReLU6, the ReLU and the bias add fused into their producers.
        let convs: Vec<(usize, Activation)> = g
            .layers
            .iter()
            .filter_map(|l| match &l.op {
                FloatOp::Conv { conv, activation } => Some((conv.groups, *activation)),
                _ => None,
            })
            .collect();
        assert_eq!(
            convs,
            vec![
                (1, Activation::Clip { min: 0.0, max: 6.0 }),
                (8, Activation::Relu),
                (1, Activation::None),
                (8, Activation::None),
            ]
        );
        assert_eq!(
            g.layers.len(),
            8,
            "conv ×4, add, max-pool, global pool, gemm"
        );
        assert!(
            model.int8_gaps().iter().any(|gap| gap.contains("MaxPool")),
            "{:?}",
            model.int8_gaps()
        );
        let input: Vec<f32> = (0..3 * side * side)
            .map(|i| ((i * 31 % 97) as f32 / 48.0) - 1.0)
            .collect();
        let want = tract_logits(&bytes, side, &input);
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(input, [1, 3, side, side]),
            &Default::default(),
        );
        let got = to_vec(evaluate(g, x).pop().unwrap());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "burn {got:?} vs tract {want:?}");
        }
    }

    /// Regression: torchvision models exported by torch pass shared biases through
    /// `Identity` nodes of initializers, which the importer first took for activations.
    #[test]
    fn torch_exports_constants_through_identity_nodes() {
        let side = 8;
        let mut g = Onnx::default();
        let w = g.random(4 * 3 * 9, 0.5);
        let w = g.init(&[4, 3, 3, 3], w);
        let b = g.init(&[4], vec![0.1, -0.2, 0.3, 0.0]);
        let b2 = g.node("Identity", &[&b], vec![]);
        let x = g.node(
            "Conv",
            &["input", &w, &b2],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        );
        let x = g.node("GlobalAveragePool", &[&x], vec![]);
        let x = g.node("Flatten", &[&x], vec![]);
        let bytes = g.bytes(&x, side, 4);
        let model = import_onnx(&bytes, Path::new("torch.onnx"), [3, side, side]).unwrap();
        let FloatOp::Conv { conv, .. } = &model.graph.layers[0].op else {
            panic!("a convolution first")
        };
        assert_eq!(conv.bias, vec![0.1, -0.2, 0.3, 0.0]);
    }

    #[test]
    fn what_cannot_be_read_is_named_with_the_file_and_node() {
        let side = 8;
        let mut g = Onnx::default();
        let x = g.conv("input", 3, 4, 3, 1, 1);
        let x = g.node("LpNormalization", &[&x], vec![]);
        let bytes = g.bytes(&x, side, 4);
        let e = import_onnx(&bytes, Path::new("odd.onnx"), [3, side, side])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("odd.onnx")
                && e.contains("LpNormalization")
                && e.contains("lpnormalization_1"),
            "{e}"
        );
        // A softmax at the end: the message says to export the logits.
        let mut g = Onnx::default();
        let x = g.conv("input", 3, 4, 3, 1, 1);
        let x = g.node("GlobalAveragePool", &[&x], vec![]);
        let x = g.node("Flatten", &[&x], vec![]);
        let x = g.node("Softmax", &[&x], vec![]);
        let e = import_onnx(&g.bytes(&x, side, 4), Path::new("p.onnx"), [3, side, side])
            .unwrap_err()
            .to_string();
        assert!(e.contains("export its logits"), "{e}");
        // The preprocessing's size must be the model's fixed one.
        let e = import_onnx(&small_mobilenet(16), Path::new("s.onnx"), [3, 32, 32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("height = 16") && e.contains("32"), "{e}");
        let e = import_onnx(b"not a model", Path::new("junk.onnx"), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("junk.onnx"), "{e}");
    }
}
