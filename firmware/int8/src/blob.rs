//! The int8 model blob: the one definition of the format the exporter writes (under the `std`
//! feature), the runtime executes on the host and the firmware executes from flash.
//!
//! Little-endian throughout; every section and per-channel array starts 4-byte aligned, so a
//! blob loaded at an aligned address is read in place (no copies, no heap):
//!
//! ```text
//! header (40 B)   magic "SSI8" · version u16 · header_len u16 · total_len u32 · crc32 u32
//!                 (over bytes 16..total_len) · tensors u16 · layers u16 · arena_bytes u32 ·
//!                 weights_offset u32 · weights_len u32 · input u16 · output u16 · reserved u32
//! tensors (16 B)  height u16 · width u16 · channels u16 · zero_point i8 · reserved u8 ·
//!                 arena_offset u32 · scale f32
//! layers (64 B)   op u8 · kernel u8 · stride u8 · padding u8 · input0 u16 · input1 u16 ·
//!                 output u16 · activation_min i8 · activation_max i8 · params [i32; 6] ·
//!                 weights_offset u32 · weights_len u32 · bias_offset u32 · multipliers_offset u32 ·
//!                 shifts_offset u32 · reserved [u32; 2]
//! weights         int8 weights and int32 biases / multipliers / shifts, offsets relative here
//! ```
//!
//! Tensors are NHWC with batch 1; conv weights OHWI, depthwise `[k][k][C]`, fully connected
//! `[out][in]`. `params` holds the add's three multiplier/shift pairs or the average pool's
//! one; per-channel constants sit in the weights section. [`Model::parse`] checks the magic,
//! version, CRC, every offset and length against the blob and the arena, every layer's shapes,
//! and that the memory plan never overwrites a tensor before its last reader has run.

use crate::kernels::conv::{volume, ConvParams};

#[cfg(target_endian = "big")]
compile_error!("the blob is read in place as little-endian int32 arrays");

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"SSI8";
/// Format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 40;
/// Bytes per tensor record.
pub const TENSOR_RECORD_LEN: usize = 16;
/// Bytes per layer record.
pub const LAYER_RECORD_LEN: usize = 64;
/// `input1` of layers with a single input.
pub const NO_TENSOR: u16 = u16::MAX;
/// Bytes covered by the header fields before the checksummed part.
const CRC_START: usize = 16;

/// Why a blob was refused. Fieldless, so it is cheap and loggable with defmt on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlobError {
    /// Shorter than its header or its declared length.
    Truncated,
    /// Not an int8 model blob (wrong magic).
    BadMagic,
    /// Written by a format version this code does not read.
    UnsupportedVersion,
    /// The declared lengths do not add up.
    BadLayout,
    /// The CRC32 does not match: corrupted in storage or transfer.
    ChecksumMismatch,
    /// The blob is not 4-byte aligned in memory (int32 arrays are read in place).
    Misaligned,
    /// A tensor has a zero or overflowing size or lies outside the arena.
    BadTensor,
    /// A layer has an unknown operator.
    UnknownOp,
    /// A layer's shapes, kernel geometry or tensor references are inconsistent.
    BadLayer,
    /// A layer's weights or per-channel constants lie outside the weights section.
    WeightsOutOfBounds,
    /// A requantisation shift lies outside `-31..=30`.
    ShiftOutOfRange,
    /// The memory plan lets a tensor be overwritten while it is still needed.
    BadMemoryPlan,
}

impl core::fmt::Display for BlobError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BlobError::Truncated => "the blob is truncated",
            BlobError::BadMagic => "not a scanside int8 model blob (bad magic)",
            BlobError::UnsupportedVersion => "unsupported blob format version",
            BlobError::BadLayout => "the blob's section lengths are inconsistent",
            BlobError::ChecksumMismatch => "CRC32 mismatch: the blob is corrupted",
            BlobError::Misaligned => "the blob is not 4-byte aligned in memory",
            BlobError::BadTensor => "a tensor record is invalid or outside the arena",
            BlobError::UnknownOp => "a layer has an unknown operator",
            BlobError::BadLayer => "a layer's shapes or tensor references are inconsistent",
            BlobError::WeightsOutOfBounds => "a layer's weights lie outside the weights section",
            BlobError::ShiftOutOfRange => "a requantisation shift is outside -31..=30",
            BlobError::BadMemoryPlan => "the memory plan overwrites a tensor still in use",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BlobError {}

/// Operators of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Op {
    /// Standard convolution with per-channel requantisation.
    Conv2d,
    /// Depthwise convolution (channel multiplier 1).
    DepthwiseConv2d,
    /// Element-wise add of two tensors of one shape.
    Add,
    /// Global average pool to `1×1×C`.
    GlobalAvgPool,
    /// Max pool.
    MaxPool,
    /// Fully connected over the flattened input.
    FullyConnected,
}

impl Op {
    /// The operator's code in a layer record.
    pub fn code(self) -> u8 {
        match self {
            Op::Conv2d => 1,
            Op::DepthwiseConv2d => 2,
            Op::Add => 3,
            Op::GlobalAvgPool => 4,
            Op::MaxPool => 5,
            Op::FullyConnected => 6,
        }
    }

    fn from_code(code: u8) -> Option<Op> {
        Some(match code {
            1 => Op::Conv2d,
            2 => Op::DepthwiseConv2d,
            3 => Op::Add,
            4 => Op::GlobalAvgPool,
            5 => Op::MaxPool,
            6 => Op::FullyConnected,
            _ => return None,
        })
    }

    /// Whether the layer has weights and per-channel constants.
    pub fn has_weights(self) -> bool {
        matches!(self, Op::Conv2d | Op::DepthwiseConv2d | Op::FullyConnected)
    }
}

/// A tensor of the model: shape, quantisation and place in the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tensor {
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
    /// Byte offset in the arena.
    pub arena_offset: usize,
}

impl Tensor {
    /// Number of int8 values.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Whether the tensor is empty (never, in a parsed model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its byte range in the arena.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.arena_offset..self.arena_offset + self.len()
    }
}

/// One layer, read in place from the blob.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    /// The operator.
    pub op: Op,
    /// Square kernel size (convolutions and pooling).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
    /// First input tensor.
    pub input: usize,
    /// Second input tensor (add only).
    pub input2: Option<usize>,
    /// Output tensor.
    pub output: usize,
    /// Lower clamp of the output (its zero point for a fused ReLU).
    pub activation_min: i8,
    /// Upper clamp of the output.
    pub activation_max: i8,
    /// Operator constants: the add's three (multiplier, shift) pairs or the pool's one.
    pub params: [i32; 6],
    /// int8 weights.
    pub weights: &'a [i8],
    /// int32 biases, one per output channel.
    pub bias: &'a [i32],
    /// Q31 multipliers, one per output channel.
    pub multipliers: &'a [i32],
    /// Shifts, one per output channel.
    pub shifts: &'a [i32],
}

/// A validated model blob, borrowed in place.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    bytes: &'a [u8],
    tensors: usize,
    layers: usize,
    arena_bytes: usize,
    weights: &'a [u8],
    input: usize,
    output: usize,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// CRC-32 (IEEE, as zlib) of the checksummed part of a blob.
pub fn checksum(bytes: &[u8]) -> u32 {
    // The device checks once per load without a table (flash is scarce); hosts, which load a
    // model at every start-up, use slicing-by-16 (a bit at a time took ~70 ms for a 700 KB
    // blob in the size-optimised edge build). Same polynomial, same value.
    #[cfg(feature = "std")]
    const CRC32: crc::Crc<u32, crc::Table<16>> =
        crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);
    #[cfg(not(feature = "std"))]
    const CRC32: crc::Crc<u32, crc::NoTable> =
        crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
    CRC32.checksum(bytes)
}

impl<'a> Model<'a> {
    /// Parses and validates a blob. Nothing is trusted: after this returns `Ok`, running the
    /// model cannot index outside the blob or the arena.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>, BlobError> {
        Self::parse_with(bytes, true)
    }

    /// [`Model::parse`] without recomputing the CRC, for a blob that passed [`Model::parse`]
    /// before and stayed in memory the caller owns (and for fuzzing the structural checks,
    /// which all still run).
    pub fn parse_checked_before(bytes: &'a [u8]) -> Result<Model<'a>, BlobError> {
        Self::parse_with(bytes, false)
    }

    // Out of line: its own symbol, counted as engine code (validation is part of the engine).
    #[inline(never)]
    fn parse_with(bytes: &'a [u8], verify_checksum: bool) -> Result<Model<'a>, BlobError> {
        if bytes.len() < HEADER_LEN {
            return Err(BlobError::Truncated);
        }
        if bytes[..4] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        if u16_at(bytes, 4) != usize::from(VERSION) {
            return Err(BlobError::UnsupportedVersion);
        }
        let total = u32_at(bytes, 8);
        if u16_at(bytes, 6) != HEADER_LEN {
            return Err(BlobError::BadLayout);
        }
        if bytes.len() < total {
            return Err(BlobError::Truncated);
        }
        if bytes.len() != total {
            return Err(BlobError::BadLayout);
        }
        if verify_checksum && checksum(&bytes[CRC_START..]) != u32_at(bytes, 12) as u32 {
            return Err(BlobError::ChecksumMismatch);
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err(BlobError::Misaligned);
        }
        let tensors = u16_at(bytes, 16);
        let layers = u16_at(bytes, 18);
        let arena_bytes = u32_at(bytes, 20);
        let weights_offset = u32_at(bytes, 24);
        let weights_len = u32_at(bytes, 28);
        let tables_end = HEADER_LEN + tensors * TENSOR_RECORD_LEN + layers * LAYER_RECORD_LEN;
        if weights_offset != tables_end || weights_offset.checked_add(weights_len) != Some(total) {
            return Err(BlobError::BadLayout);
        }
        let model = Model {
            bytes,
            tensors,
            layers,
            arena_bytes,
            weights: &bytes[weights_offset..],
            input: u16_at(bytes, 32),
            output: u16_at(bytes, 34),
        };
        model.validate()?;
        Ok(model)
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers
    }

    /// Arena bytes the memory plan needs (its peak).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Bytes of weights and per-channel constants.
    pub fn weights_bytes(&self) -> usize {
        self.weights.len()
    }

    /// Multiply-accumulates of one inference (convolutions and fully connected layers).
    pub fn macs(&self) -> u64 {
        (0..self.layers).map(|i| self.layer_macs(i)).sum()
    }

    /// Multiply-accumulates of layer `index` (0 for layers without weights or out of range).
    pub fn layer_macs(&self, index: usize) -> u64 {
        let Some(l) = self.layer(index) else {
            return 0;
        };
        let out = self.tensor_record(l.output);
        match l.op {
            Op::Conv2d | Op::DepthwiseConv2d => {
                (out.height * out.width) as u64 * l.weights.len() as u64
            }
            Op::FullyConnected => l.weights.len() as u64,
            _ => 0,
        }
    }

    /// The input tensor.
    pub fn input(&self) -> Tensor {
        self.tensor_record(self.input)
    }

    /// The output tensor.
    pub fn output(&self) -> Tensor {
        self.tensor_record(self.output)
    }

    /// Tensor `index`, or `None` past the end.
    pub fn tensor(&self, index: usize) -> Option<Tensor> {
        (index < self.tensors).then(|| self.tensor_record(index))
    }

    fn tensor_record(&self, index: usize) -> Tensor {
        let at = HEADER_LEN + index * TENSOR_RECORD_LEN;
        let b = self.bytes;
        Tensor {
            height: u16_at(b, at),
            width: u16_at(b, at + 2),
            channels: u16_at(b, at + 4),
            zero_point: b[at + 6] as i8,
            arena_offset: u32_at(b, at + 8),
            scale: f32::from_bits(u32_at(b, at + 12) as u32),
        }
    }

    /// Layer `index` (validated by [`Model::parse`]), or `None` past the end.
    pub fn layer(&self, index: usize) -> Option<Layer<'a>> {
        if index >= self.layers {
            return None;
        }
        self.layer_record(index).ok()
    }

    fn layer_record(&self, index: usize) -> Result<Layer<'a>, BlobError> {
        let at = HEADER_LEN + self.tensors * TENSOR_RECORD_LEN + index * LAYER_RECORD_LEN;
        let b = self.bytes;
        let op = Op::from_code(b[at]).ok_or(BlobError::UnknownOp)?;
        let output = u16_at(b, at + 8);
        let input2 = u16_at(b, at + 6);
        let mut params = [0_i32; 6];
        for (i, p) in params.iter_mut().enumerate() {
            *p = i32_at(b, at + 12 + 4 * i);
        }
        let channels = if output < self.tensors {
            self.tensor_record(output).channels
        } else {
            return Err(BlobError::BadLayer);
        };
        let (weights, bias, multipliers, shifts) = if op.has_weights() {
            let w_off = u32_at(b, at + 36);
            let w_len = u32_at(b, at + 40);
            let weights = self
                .weights
                .get(
                    w_off
                        ..w_off
                            .checked_add(w_len)
                            .ok_or(BlobError::WeightsOutOfBounds)?,
                )
                .ok_or(BlobError::WeightsOutOfBounds)?;
            let array = |field: usize| -> Result<&'a [i32], BlobError> {
                let off = u32_at(b, at + field);
                let bytes = self
                    .weights
                    .get(
                        off..off
                            .checked_add(channels * 4)
                            .ok_or(BlobError::WeightsOutOfBounds)?,
                    )
                    .ok_or(BlobError::WeightsOutOfBounds)?;
                bytemuck::try_cast_slice(bytes).map_err(|_| BlobError::Misaligned)
            };
            (
                bytemuck::cast_slice(weights),
                array(44)?,
                array(48)?,
                array(52)?,
            )
        } else {
            (&[][..], &[][..], &[][..], &[][..])
        };
        Ok(Layer {
            op,
            kernel: usize::from(b[at + 1]),
            stride: usize::from(b[at + 2]),
            padding: usize::from(b[at + 3]),
            input: u16_at(b, at + 4),
            input2: (input2 != usize::from(NO_TENSOR)).then_some(input2),
            output,
            activation_min: b[at + 10] as i8,
            activation_max: b[at + 11] as i8,
            params,
            weights,
            bias,
            multipliers,
            shifts,
        })
    }

    /// Geometry of a convolution or pooling layer.
    pub fn conv_params(&self, layer: &Layer<'_>) -> ConvParams {
        let input = self.tensor_record(layer.input);
        let output = self.tensor_record(layer.output);
        ConvParams {
            input_height: input.height,
            input_width: input.width,
            input_channels: input.channels,
            output_height: output.height,
            output_width: output.width,
            output_channels: output.channels,
            kernel: layer.kernel,
            stride: layer.stride,
            padding: layer.padding,
            input_offset: -i32::from(input.zero_point),
            output_offset: i32::from(output.zero_point),
            activation_min: layer.activation_min,
            activation_max: layer.activation_max,
        }
    }

    fn validate(&self) -> Result<(), BlobError> {
        if self.input >= self.tensors || self.output >= self.tensors || self.input == self.output {
            return Err(BlobError::BadLayer);
        }
        for t in 0..self.tensors {
            let tensor = self.tensor_record(t);
            let len = volume(tensor.height, tensor.width, tensor.channels).unwrap_or(0);
            if len == 0
                || !(tensor.scale.is_finite() && tensor.scale > 0.0)
                || tensor
                    .arena_offset
                    .checked_add(len)
                    .is_none_or(|end| end > self.arena_bytes)
            {
                return Err(BlobError::BadTensor);
            }
        }
        for index in 0..self.layers {
            let layer = self.layer_record(index)?;
            self.validate_layer(index, &layer)?;
        }
        // The output must be produced, and left alone by the layers after its producer.
        let producer = (0..self.layers)
            .find(|&i| self.layer_record(i).is_ok_and(|l| l.output == self.output))
            .ok_or(BlobError::BadLayer)?;
        let output = self.tensor_record(self.output).range();
        for j in producer + 1..self.layers {
            if overlaps(
                &self.tensor_record(self.layer_record(j)?.output).range(),
                &output,
            ) {
                return Err(BlobError::BadMemoryPlan);
            }
        }
        Ok(())
    }

    fn validate_layer(&self, index: usize, layer: &Layer<'_>) -> Result<(), BlobError> {
        let n = self.tensors;
        if layer.input >= n || layer.output >= n || layer.input2.is_some_and(|t| t >= n) {
            return Err(BlobError::BadLayer);
        }
        if layer.input2.is_some() != (layer.op == Op::Add)
            || layer.activation_min > layer.activation_max
        {
            return Err(BlobError::BadLayer);
        }
        let input = self.tensor_record(layer.input);
        let output = self.tensor_record(layer.output);
        let shapes_ok = match layer.op {
            Op::Conv2d | Op::DepthwiseConv2d | Op::MaxPool => {
                let p = self.conv_params(layer);
                let extent =
                    |i, o| ConvParams::output_extent(i, p.kernel, p.stride, p.padding) == Some(o);
                let channels_ok = layer.op == Op::Conv2d || input.channels == output.channels;
                let weights_ok = match layer.op {
                    // Checked: on a 32-bit device the products of hostile sizes could wrap.
                    Op::Conv2d => {
                        product(&[p.kernel, p.kernel, input.channels, output.channels])
                            == Some(layer.weights.len())
                    }
                    Op::DepthwiseConv2d => {
                        product(&[p.kernel, p.kernel, output.channels]) == Some(layer.weights.len())
                    }
                    _ => p.padding < p.kernel,
                };
                extent(input.height, output.height)
                    && extent(input.width, output.width)
                    && channels_ok
                    && weights_ok
            }
            Op::Add => {
                let other = self.tensor_record(layer.input2.unwrap_or(layer.input));
                (input.height, input.width, input.channels)
                    == (output.height, output.width, output.channels)
                    && (other.height, other.width, other.channels)
                        == (output.height, output.width, output.channels)
            }
            Op::GlobalAvgPool => {
                output.height == 1
                    && output.width == 1
                    && output.channels == input.channels
                    && product(&[input.height, input.width])
                        .is_some_and(|pixels| pixels <= (i32::MAX / 256) as usize)
            }
            Op::FullyConnected => {
                output.height == 1
                    && output.width == 1
                    && product(&[input.height, input.width, input.channels, output.channels])
                        == Some(layer.weights.len())
            }
        };
        if !shapes_ok {
            return Err(BlobError::BadLayer);
        }
        let shifts_ok = match layer.op {
            Op::Add => [layer.params[1], layer.params[3], layer.params[5]]
                .iter()
                .all(|s| (-31..=30).contains(s)),
            Op::GlobalAvgPool => (-31..=30).contains(&layer.params[1]),
            _ => layer.shifts.iter().all(|s| (-31..=30).contains(s)),
        };
        if !shifts_ok {
            return Err(BlobError::ShiftOutOfRange);
        }
        // Data flow: every input is the model input or an earlier layer's output, written once,
        // and no layer between its producer and this reader writes over its bytes.
        if layer.output == self.input {
            return Err(BlobError::BadLayer);
        }
        let out_range = output.range();
        for t in [Some(layer.input), layer.input2].into_iter().flatten() {
            let range = self.tensor_record(t).range();
            if overlaps(&range, &out_range) {
                return Err(BlobError::BadMemoryPlan);
            }
            let producer = if t == self.input {
                None
            } else {
                match (0..index)
                    .rev()
                    .find(|&j| self.layer_record(j).is_ok_and(|l| l.output == t))
                {
                    Some(j) => Some(j),
                    None => return Err(BlobError::BadLayer),
                }
            };
            let first_after = producer.map_or(0, |j| j + 1);
            for j in first_after..index {
                let written = self.tensor_record(self.layer_record(j)?.output).range();
                if overlaps(&written, &range) {
                    return Err(BlobError::BadMemoryPlan);
                }
            }
        }
        if (0..index).any(|j| self.layer_record(j).is_ok_and(|l| l.output == layer.output)) {
            return Err(BlobError::BadLayer);
        }
        Ok(())
    }
}

/// The product of `factors`, `None` on overflow.
fn product(factors: &[usize]) -> Option<usize> {
    factors
        .iter()
        .try_fold(1_usize, |acc, &f| acc.checked_mul(f))
}

fn overlaps(a: &core::ops::Range<usize>, b: &core::ops::Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

#[cfg(feature = "std")]
pub mod write;

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_is_the_standard_crc32() {
        // The check value of CRC-32/ISO-HDLC (zlib's crc32), so any tool can verify a blob.
        assert_eq!(super::checksum(b"123456789"), 0xcbf4_3926);
    }
}
