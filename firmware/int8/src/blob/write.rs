//! Writing blobs (host only): the exporter describes tensors and layers, [`encode`] plans the
//! arena, lays out the weights, checksums, and parses the result back before returning it, so
//! a blob that leaves this function is one the engine accepts.

use super::{
    checksum, BlobError, Model, Op, HEADER_LEN, LAYER_RECORD_LEN, MAGIC, NO_TENSOR,
    TENSOR_RECORD_LEN, VERSION,
};

/// A tensor to be written: shape and quantisation (its arena place comes from the planner).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// int8 zero point.
    pub zero_point: i8,
    /// Real value of one step.
    pub scale: f32,
}

impl TensorSpec {
    fn len(&self) -> usize {
        self.height * self.width * self.channels
    }
}

/// A layer to be written, mirroring the layer record.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// The operator.
    pub op: Op,
    /// Square kernel size (convolutions and pooling; 0 otherwise).
    pub kernel: usize,
    /// Stride (1 when unused).
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
    /// Input tensors: one, or two for an add.
    pub inputs: Vec<usize>,
    /// Output tensor.
    pub output: usize,
    /// Lower output clamp.
    pub activation_min: i8,
    /// Upper output clamp.
    pub activation_max: i8,
    /// Operator constants (add: three multiplier/shift pairs; average pool: one).
    pub params: [i32; 6],
    /// int8 weights (empty for operators without).
    pub weights: Vec<i8>,
    /// int32 biases per output channel.
    pub bias: Vec<i32>,
    /// Q31 multipliers per output channel.
    pub multipliers: Vec<i32>,
    /// Shifts per output channel.
    pub shifts: Vec<i32>,
}

/// A whole model to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// All tensors, the input and output included.
    pub tensors: Vec<TensorSpec>,
    /// Layers in execution order.
    pub layers: Vec<LayerSpec>,
    /// The input tensor.
    pub input: usize,
    /// The output tensor.
    pub output: usize,
}

/// Where the planner put every tensor and what it saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Byte offset of each tensor in the arena.
    pub offsets: Vec<usize>,
    /// Arena size: the peak of simultaneously live tensors as placed.
    pub arena_bytes: usize,
    /// What giving every tensor its own buffer would take.
    pub unplanned_bytes: usize,
}

/// The layer range over which each tensor must keep its bytes: from its producer (the input:
/// from the start) to its last reader (the output: to the end).
fn lifetimes(spec: &ModelSpec) -> Vec<(usize, usize)> {
    let end = spec.layers.len();
    let mut life = vec![(usize::MAX, 0_usize); spec.tensors.len()];
    for (i, layer) in spec.layers.iter().enumerate() {
        let (first, last) = &mut life[layer.output];
        *first = (*first).min(i);
        *last = (*last).max(i);
        for &t in &layer.inputs {
            life[t].1 = life[t].1.max(i);
        }
    }
    life[spec.input].0 = 0;
    life[spec.output].1 = end;
    life
}

/// Greedy by size (largest first), each tensor at the lowest 4-aligned offset that does not
/// collide with a placed tensor whose lifetime overlaps its own — the strategy of TFLite
/// Micro's greedy planner; for a chain of layers it reaches the two-largest-neighbours bound.
pub fn plan_memory(spec: &ModelSpec) -> MemoryPlan {
    let life = lifetimes(spec);
    let mut order: Vec<usize> = (0..spec.tensors.len()).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(spec.tensors[t].len()));
    let mut offsets = vec![0_usize; spec.tensors.len()];
    let mut placed: Vec<usize> = Vec::new();
    for t in order {
        let len = spec.tensors[t].len();
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&o| life[o].0 <= life[t].1 && life[t].0 <= life[o].1)
            .map(|&o| (offsets[o], offsets[o] + spec.tensors[o].len()))
            .collect();
        busy.sort_unstable();
        let mut candidate = 0;
        for (start, end) in busy {
            if candidate + len <= start {
                break;
            }
            candidate = candidate.max(end.next_multiple_of(4));
        }
        offsets[t] = candidate;
        placed.push(t);
    }
    let arena_bytes = (0..spec.tensors.len())
        .map(|t| offsets[t] + spec.tensors[t].len())
        .max()
        .unwrap_or(0)
        .next_multiple_of(4);
    MemoryPlan {
        offsets,
        arena_bytes,
        unplanned_bytes: spec
            .tensors
            .iter()
            .map(|t| t.len().next_multiple_of(4))
            .sum(),
    }
}

fn put_u16(out: &mut Vec<u8>, v: usize) -> Result<(), BlobError> {
    out.extend_from_slice(
        &u16::try_from(v)
            .map_err(|_| BlobError::BadLayout)?
            .to_le_bytes(),
    );
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: usize) -> Result<(), BlobError> {
    out.extend_from_slice(
        &u32::try_from(v)
            .map_err(|_| BlobError::BadLayout)?
            .to_le_bytes(),
    );
    Ok(())
}

/// Appends `values` to the weights section at a 4-aligned offset and returns that offset.
fn push_i32s(weights: &mut Vec<u8>, values: &[i32]) -> usize {
    weights.resize(weights.len().next_multiple_of(4), 0);
    let at = weights.len();
    weights.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    at
}

/// Plans the arena and writes the blob; the bytes are parsed back (in an aligned copy) before
/// they are returned, so any inconsistency in `spec` is reported here, not on the device.
pub fn encode(spec: &ModelSpec) -> Result<(Vec<u8>, MemoryPlan), BlobError> {
    if spec.tensors.is_empty()
        || spec.tensors.len() >= usize::from(NO_TENSOR)
        || spec.input >= spec.tensors.len()
        || spec.output >= spec.tensors.len()
        || spec.layers.iter().any(|l| {
            l.output >= spec.tensors.len()
                || l.inputs.is_empty()
                || l.inputs.len() > 2
                || l.inputs.iter().any(|&t| t >= spec.tensors.len())
        })
    {
        return Err(BlobError::BadLayer);
    }
    let plan = plan_memory(spec);
    let mut weights = Vec::new();
    let mut layer_records = Vec::with_capacity(spec.layers.len() * LAYER_RECORD_LEN);
    for layer in &spec.layers {
        let r = &mut layer_records;
        let start = r.len();
        let as_u8 = |v: usize| u8::try_from(v).map_err(|_| BlobError::BadLayer);
        r.extend_from_slice(&[
            layer.op.code(),
            as_u8(layer.kernel)?,
            as_u8(layer.stride)?,
            as_u8(layer.padding)?,
        ]);
        put_u16(r, layer.inputs[0])?;
        put_u16(
            r,
            layer
                .inputs
                .get(1)
                .copied()
                .unwrap_or(usize::from(NO_TENSOR)),
        )?;
        put_u16(r, layer.output)?;
        r.extend_from_slice(&[layer.activation_min as u8, layer.activation_max as u8]);
        for p in layer.params {
            r.extend_from_slice(&p.to_le_bytes());
        }
        if layer.op.has_weights() {
            weights.resize(weights.len().next_multiple_of(4), 0);
            let w_at = weights.len();
            weights.extend(layer.weights.iter().map(|&w| w as u8));
            let bias_at = push_i32s(&mut weights, &layer.bias);
            let mult_at = push_i32s(&mut weights, &layer.multipliers);
            let shift_at = push_i32s(&mut weights, &layer.shifts);
            for v in [w_at, layer.weights.len(), bias_at, mult_at, shift_at] {
                put_u32(r, v)?;
            }
        } else {
            r.extend_from_slice(&[0; 20]);
        }
        r.extend_from_slice(&[0; 8]);
        debug_assert_eq!(r.len() - start, LAYER_RECORD_LEN);
    }
    weights.resize(weights.len().next_multiple_of(4), 0);

    let weights_offset =
        HEADER_LEN + spec.tensors.len() * TENSOR_RECORD_LEN + spec.layers.len() * LAYER_RECORD_LEN;
    let total = weights_offset + weights.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_u16(&mut out, HEADER_LEN)?;
    put_u32(&mut out, total)?;
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    put_u16(&mut out, spec.tensors.len())?;
    put_u16(&mut out, spec.layers.len())?;
    put_u32(&mut out, plan.arena_bytes)?;
    put_u32(&mut out, weights_offset)?;
    put_u32(&mut out, weights.len())?;
    put_u16(&mut out, spec.input)?;
    put_u16(&mut out, spec.output)?;
    out.extend_from_slice(&[0; 4]);
    for (t, offset) in spec.tensors.iter().zip(&plan.offsets) {
        put_u16(&mut out, t.height)?;
        put_u16(&mut out, t.width)?;
        put_u16(&mut out, t.channels)?;
        out.extend_from_slice(&[t.zero_point as u8, 0]);
        put_u32(&mut out, *offset)?;
        out.extend_from_slice(&t.scale.to_bits().to_le_bytes());
    }
    out.extend_from_slice(&layer_records);
    out.extend_from_slice(&weights);
    debug_assert_eq!(out.len(), total);
    let crc = checksum(&out[super::CRC_START..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    Model::parse(AlignedBlob::new(&out).bytes())?;
    Ok((out, plan))
}

/// A blob in 4-byte-aligned memory, as [`Model::parse`] requires (`Vec<u8>` makes no alignment
/// promise).
#[derive(Debug, Clone)]
pub struct AlignedBlob {
    storage: Storage,
    len: usize,
}

#[derive(Debug, Clone)]
enum Storage {
    /// A copy in words.
    Words(Vec<u32>),
    /// The bytes as given, which happened to be aligned.
    Bytes(Vec<u8>),
}

impl AlignedBlob {
    /// Copies `bytes` into aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0_u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            storage: Storage::Words(words),
            len: bytes.len(),
        }
    }

    /// Takes `bytes` as they are when they are aligned (as the allocator returns large buffers),
    /// copies them otherwise: a model read from a file is then held once, not twice.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.as_ptr().align_offset(4) == 0 {
            let len = bytes.len();
            Self {
                storage: Storage::Bytes(bytes),
                len,
            }
        } else {
            Self::new(&bytes)
        }
    }

    /// The blob's bytes, 4-byte aligned.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Words(words) => &bytemuck::cast_slice::<u32, u8>(words)[..self.len],
            Storage::Bytes(bytes) => bytes,
        }
    }
}
