//! The int8 engine on the host: runs the bundle's int8 blob with the shared no_std core
//! (`scanside-int8`), the same code and arithmetic the microcontroller firmware runs, so
//! the host result is the firmware's reference bit for bit.
//!
//! Why not tract for int8: tract 0.23 executes ONNX QDQ convolutions in float, does not load
//! onnxruntime's QLinearAdd/QGemm contrib ops, and its QLinearConv path measured slower than
//! fp32 (docs/benchmarks.md). The core's kernels are integer end to end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use scanside_int8::blob::write::AlignedBlob;
use scanside_int8::blob::{Model, Tensor};
use scanside_int8::engine::{dequantize, quantize, run_on_threads, run_prepared, HostPrepared};

use crate::bundle::{Bundle, ModelFile};
use crate::{Error, Result};

self_cell::self_cell!(
    /// A blob and the [`Model`] view of it, parsed and validated (CRC and structure) once at
    /// load: re-validating per inference was ~8 % of the int8 engine's time.
    struct ValidatedBlob {
        owner: AlignedBlob,
        #[covariant]
        dependent: Model,
    }
    impl {Debug}
);

/// A validated int8 model ready to run.
#[derive(Debug, Clone)]
pub struct Int8Classifier {
    /// Shared by clones (parallel sessions): immutable after validation.
    blob: Arc<ValidatedBlob>,
    input: Tensor,
    output: Tensor,
    arena_bytes: usize,
    path: PathBuf,
    /// x86-64: the convolutions' filters repacked for the AVX2 kernel, once per model.
    prepared: Arc<HostPrepared>,
    /// The threads one inference's convolutions run on (none: the calling thread).
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Int8Classifier {
    /// Parses and validates a blob (named `path` in errors) for a `channels×height×width`
    /// input and `classes` outputs.
    pub fn from_bytes(bytes: &[u8], path: &Path, chw: [usize; 3], classes: usize) -> Result<Self> {
        Self::from_aligned(AlignedBlob::new(bytes), path, chw, classes)
    }

    /// [`Int8Classifier::from_bytes`] for a blob already in aligned memory.
    fn from_aligned(
        aligned: AlignedBlob,
        path: &Path,
        chw: [usize; 3],
        classes: usize,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: path.to_path_buf(),
            reason,
        };
        let blob = ValidatedBlob::try_new(aligned, |blob| {
            Model::parse(blob.bytes()).map_err(|e| bad(format!("int8 blob refused: {e}")))
        })?;
        let model = blob.borrow_dependent();
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
        let prepared = Arc::new(HostPrepared::new(model));
        Ok(Self {
            blob: Arc::new(blob),
            input,
            output,
            arena_bytes,
            path: path.to_path_buf(),
            prepared,
            pool: None,
        })
    }

    /// Runs each inference's convolutions on `threads` threads, in bands of output rows (one:
    /// on the calling thread, as built); the outputs are the same, bit for bit.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.pool = super::threads::inference_pool(threads, "int8", &self.path)?;
        Ok(self)
    }

    /// Threads one inference runs on.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// The bundle's int8 blob (read and checked against the manifest's hash), for the
    /// manifest's input and classes; a bundle exported without the `mcu` target is refused by
    /// name.
    pub fn load(bundle: &Bundle) -> Result<Self> {
        // Held once (the bytes as read, when aligned), before the filters are repacked.
        let aligned = AlignedBlob::from_vec(bundle.read_model(ModelFile::Int8Blob)?);
        let (path, _) = bundle.model_entry(ModelFile::Int8Blob)?;
        let p = &bundle.manifest.preprocess;
        Self::from_aligned(
            aligned,
            &path,
            [p.channels as usize, p.height as usize, p.width as usize],
            bundle.manifest.class_names.len(),
        )
    }

    /// The blob it runs, as read from the bundle (verified, validated).
    pub fn blob_bytes(&self) -> &[u8] {
        self.blob.borrow_owner().bytes()
    }

    /// Arena bytes one inference needs.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Quantises a normalised `C×H×W` float input into the model's NHWC int8 input.
    pub fn quantize_input(&self, chw: &[f32]) -> Vec<i8> {
        let (c, plane) = (self.input.channels, self.input.height * self.input.width);
        let (scale, zero_point) = (self.input.scale, self.input.zero_point);
        // Quantised plane by plane (contiguous, so the divisions vectorise), then interleaved.
        let planar: Vec<i8> = chw
            .iter()
            .map(|&v| quantize(v, scale, zero_point))
            .collect();
        let mut out = vec![0_i8; chw.len()];
        for (ch, values) in planar.chunks_exact(plane).enumerate().take(c) {
            for (o, &q) in out.iter_mut().skip(ch).step_by(c).zip(values) {
                *o = q;
            }
        }
        out
    }

    /// Runs an already quantised NHWC input and returns the int8 output.
    pub fn run_quantized(&self, input: &[i8]) -> Result<Vec<i8>> {
        let model = self.blob.borrow_dependent();
        let mut arena = vec![0_i8; self.arena_bytes];
        let result = match &self.pool {
            Some(pool) => pool.install(|| {
                let threads = pool.current_num_threads();
                run_on_threads(model, &self.prepared, (&mut arena, input), threads)
            }),
            None => run_prepared(model, &self.prepared, &mut arena, input, |_, _| ()),
        };
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
