//! The int8 engine on the host: runs the bundle's int8 blob with the shared no_std core
//! (`scanside-firmware`), the same code and arithmetic the microcontroller firmware runs, so
//! the host result is the firmware's reference bit for bit.
//!
//! Why not tract for int8: tract 0.23 executes ONNX QDQ convolutions in float, does not load
//! onnxruntime's QLinearAdd/QGemm contrib ops, and its QLinearConv path measured slower than
//! fp32 (docs/benchmarks.md). The core's kernels are integer end to end.

use std::path::{Path, PathBuf};

use scanside_firmware::blob::write::AlignedBlob;
use scanside_firmware::blob::{Model, Tensor};
#[cfg(not(target_arch = "x86_64"))]
use scanside_firmware::engine::run;
use scanside_firmware::engine::{dequantize, quantize};
#[cfg(target_arch = "x86_64")]
use scanside_firmware::engine::{run_prepared, HostPrepared};

use crate::{Error, Result};

/// A validated int8 model ready to run.
#[derive(Debug, Clone)]
pub struct Int8Classifier {
    blob: AlignedBlob,
    input: Tensor,
    output: Tensor,
    arena_bytes: usize,
    path: PathBuf,
    /// x86-64: the convolutions' filters repacked for the AVX2 kernel, once per model.
    #[cfg(target_arch = "x86_64")]
    prepared: HostPrepared,
}

impl Int8Classifier {
    /// Parses and validates a blob (named `path` in errors) for a `channels×height×width`
    /// input and `classes` outputs.
    pub fn from_bytes(bytes: &[u8], path: &Path, chw: [usize; 3], classes: usize) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: path.to_path_buf(),
            reason,
        };
        let blob = AlignedBlob::new(bytes);
        let model =
            Model::parse(blob.bytes()).map_err(|e| bad(format!("int8 blob refused: {e}")))?;
        let (input, output) = (model.input(), model.output());
        let [c, h, w] = chw;
        if (input.channels, input.height, input.width) != (c, h, w) {
            return Err(bad(format!(
                "int8 model input is {}×{}×{}, the manifest says {c}×{h}×{w}",
                input.channels, input.height, input.width
            )));
        }
        if output.len() != classes {
            return Err(bad(format!(
                "int8 model has {} outputs for {classes} classes",
                output.len()
            )));
        }
        let arena_bytes = model.arena_bytes();
        #[cfg(target_arch = "x86_64")]
        let prepared = HostPrepared::new(&model);
        Ok(Self {
            blob,
            input,
            output,
            arena_bytes,
            path: path.to_path_buf(),
            #[cfg(target_arch = "x86_64")]
            prepared,
        })
    }

    /// Arena bytes one inference needs.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Quantises a normalised `C×H×W` float input into the model's NHWC int8 input.
    pub fn quantize_input(&self, chw: &[f32]) -> Vec<i8> {
        let (c, plane) = (self.input.channels, self.input.height * self.input.width);
        let mut out = vec![0_i8; chw.len()];
        for (ch, values) in chw.chunks_exact(plane).enumerate().take(c) {
            for (i, &v) in values.iter().enumerate() {
                out[i * c + ch] = quantize(v, self.input.scale, self.input.zero_point);
            }
        }
        out
    }

    /// Runs an already quantised NHWC input and returns the int8 output.
    pub fn run_quantized(&self, input: &[i8]) -> Result<Vec<i8>> {
        // Verified with its CRC at load; the structure is re-checked (cheap), not the CRC.
        let model = Model::parse_checked_before(self.blob.bytes()).map_err(|e| Error::Model {
            path: self.path.clone(),
            reason: format!("int8 blob refused: {e}"),
        })?;
        let mut arena = vec![0_i8; self.arena_bytes];
        #[cfg(target_arch = "x86_64")]
        let result = run_prepared(&model, &self.prepared, &mut arena, input, |_, _| ());
        #[cfg(not(target_arch = "x86_64"))]
        let result = run(&model, &mut arena, input, |_, _| ());
        result.map(<[i8]>::to_vec).map_err(|e| Error::Model {
            path: self.path.clone(),
            reason: format!("int8 inference failed: {e}"),
        })
    }

    /// The quantised input and the int8 output for one preprocessed `C×H×W` input: a golden
    /// test vector for the firmware.
    pub fn vector(&self, chw: &[f32]) -> Result<(Vec<i8>, Vec<i8>)> {
        let input = self.quantize_input(chw);
        let output = self.run_quantized(&input)?;
        Ok((input, output))
    }

    /// Runs one preprocessed `C×H×W` input and returns the dequantised logits.
    pub fn logits(&self, chw: &[f32]) -> Result<Vec<f32>> {
        if chw.len() != self.input.len() {
            return Err(Error::Model {
                path: self.path.clone(),
                reason: format!(
                    "input has {} values, {} expected",
                    chw.len(),
                    self.input.len()
                ),
            });
        }
        let out = self.run_quantized(&self.quantize_input(chw))?;
        Ok(out
            .iter()
            .map(|&q| dequantize(q, self.output.scale, self.output.zero_point))
            .collect())
    }
}
