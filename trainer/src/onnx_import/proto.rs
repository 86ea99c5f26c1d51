//! Reading the parts of ONNX protobuf messages the importer needs: constant tensors as `f32`
//! or `i64`, node attributes with their defaults, and tensor shapes.

use tract_onnx::pb;

/// A constant tensor: an initializer or a `Constant` node's value.
#[derive(Debug, Clone)]
pub(super) struct Constant {
    pub(super) dims: Vec<usize>,
    pub(super) values: Vec<f32>,
    /// Integer contents (shapes, axes), when the tensor is INT64 or INT32.
    pub(super) ints: Option<Vec<i64>>,
}

impl Constant {
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }
}

/// Decodes a tensor stored inside the model (float, double, int64 or int32).
pub(super) fn constant(t: &pb::TensorProto) -> Result<Constant, String> {
    use pb::tensor_proto::{DataLocation, DataType};
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(format!(
            "tensor {:?} is stored in an external file; save the model with every tensor inside \
             (onnx.save_model(m, path, save_as_external_data=False))",
            t.name
        ));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let raw = |width: usize| t.raw_data.chunks_exact(width);
    let (values, ints) = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if t.raw_data.is_empty() => (t.float_data.clone(), None),
        Ok(DataType::Float) => (
            raw(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            None,
        ),
        Ok(DataType::Double) if t.raw_data.is_empty() => {
            (t.double_data.iter().map(|&v| v as f32).collect(), None)
        }
        Ok(DataType::Double) => (
            raw(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            None,
        ),
        Ok(DataType::Int64) => {
            let ints: Vec<i64> = if t.raw_data.is_empty() {
                t.int64_data.clone()
            } else {
                raw(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect()
            };
            (ints.iter().map(|&v| v as f32).collect(), Some(ints))
        }
        Ok(DataType::Int32) => {
            let ints: Vec<i64> = if t.raw_data.is_empty() {
                t.int32_data.iter().map(|&v| i64::from(v)).collect()
            } else {
                raw(4)
                    .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect()
            };
            (ints.iter().map(|&v| v as f32).collect(), Some(ints))
        }
        _ => {
            return Err(format!(
                "tensor {:?} has element type {} (float, double, int64 and int32 are read)",
                t.name, t.data_type
            ))
        }
    };
    let expected: usize = dims.iter().product();
    if values.len() != expected {
        return Err(format!(
            "tensor {:?}: {} values for dims {:?}",
            t.name,
            values.len(),
            dims
        ));
    }
    Ok(Constant { dims, values, ints })
}

fn attribute<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(super) fn int_attr(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).map_or(default, |a| a.i)
}

pub(super) fn float_attr(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).map_or(default, |a| a.f)
}

pub(super) fn ints_attr(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

pub(super) fn string_attr(node: &pb::NodeProto, name: &str) -> Option<String> {
    attribute(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

pub(super) fn tensor_attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::TensorProto> {
    attribute(node, name).and_then(|a| a.t.as_ref())
}

/// A value's dimensions: `Some(n)` when fixed, `None` when symbolic or unknown.
pub(super) fn dims(info: &pb::ValueInfoProto) -> Vec<Option<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return vec![];
    };
    t.shape.as_ref().map_or(vec![], |s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                _ => None,
            })
            .collect()
    })
}
