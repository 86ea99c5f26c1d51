//! Model bundles: a directory holding the exported model and a JSON manifest that carries
//! everything needed to use it — input size, preprocessing, class names, the model's sha256 and
//! the provenance of training. The manifest format is defined here, once, and the trainer
//! writes it through [`write_bundle`].
//!
//! How logits become probabilities ([`OutputActivation`]: softmax or sigmoid, after the
//! calibration's temperature) belongs to the same contract, so it is defined here too.
//!
//! Loading reads the manifest (its signature verified over its bytes before they are parsed);
//! a model file is read only when an engine asks for it ([`Bundle::read_model`]) — only the
//! file that engine runs, so a cold start never reads or hashes the others — and its bytes are
//! checked against the manifest's hash before anything parses them; the engine is built from
//! those same bytes and the caller drops them once it is.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod guard;
pub mod signing;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

pub use guard::{InputRules, OodGuard};

use crate::persist::{read, write_atomically};
use crate::preprocess::PreprocessConfig;
use crate::{Error, Result};

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest format this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A bundle's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The fp32 ONNX model.
    pub model: ModelEntry,
    /// How to turn an image into the model's input.
    pub preprocess: PreprocessConfig,
    /// Class names in the order of the model's outputs.
    pub class_names: Vec<String>,
    /// How logits become probabilities: one class (softmax) or independent findings (sigmoid).
    #[serde(default)]
    pub output: OutputActivation,
    /// Temperature and per-class screening thresholds fitted on validation (none: raw
    /// probabilities, nothing flagged).
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// Where the model came from.
    pub provenance: Provenance,
    /// The int8 model (the `mcu` export target), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Entry>,
    /// The inputs the model is for (DICOM attributes, channels, size); others are reported
    /// `not_applicable` without running the model. None: every decodable image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rules: Option<InputRules>,
    /// The out-of-distribution guard fitted at export; none: no score reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodGuard>,
}

/// The int8 model blob of a bundle (format: `scanside_int8::blob`), run on the host by the
/// shared int8 core and on microcontrollers by the firmware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Entry {
    /// File name inside the bundle directory.
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// How activation ranges were calibrated (`minmax`, `percentile-99.99`, `entropy`).
    pub calibration_method: String,
    /// Arena bytes one inference needs (the memory plan's peak).
    pub arena_bytes: usize,
    /// Bytes of the blob (flash).
    pub blob_bytes: usize,
    /// int8 against fp32 on the validation split, for every calibration method tried.
    #[serde(default)]
    pub report: Option<serde_json::Value>,
    /// The same quantisation as a standard ONNX QDQ model (QuantizeLinear/DequantizeLinear
    /// around float operators) for onnxruntime or TensorRT users; the runtime does not run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdq_onnx: Option<FileEntry>,
}

/// A further file of the bundle, pinned by its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name inside the bundle directory.
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// How a model's logits become probabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputActivation {
    /// Exactly one class per image: probabilities sum to one.
    #[default]
    Softmax,
    /// Any number of findings per image: one independent probability each.
    Sigmoid,
}

/// What the trainer fitted on validation for screening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Logits are divided by this before the softmax / sigmoid (temperature scaling).
    pub temperature: f32,
    /// The sensitivity each threshold reached on validation.
    pub target_sensitivity: f32,
    /// Per class, in class order: flag the image when the calibrated probability is at least
    /// this (`None`: no validation positives, never flagged).
    pub thresholds: Vec<Option<f32>>,
}

impl Calibration {
    /// The classes flagged for calibrated `probabilities`.
    pub fn flags<'a>(&self, class_names: &'a [String], probabilities: &[f32]) -> Vec<&'a str> {
        class_names
            .iter()
            .zip(probabilities)
            .zip(&self.thresholds)
            .filter(|((_, &p), t)| t.is_some_and(|t| p >= t))
            .map(|((name, _), _)| name.as_str())
            .collect()
    }
}

impl OutputActivation {
    /// Probabilities from logits.
    pub fn probabilities(self, logits: &[f32]) -> Vec<f32> {
        match self {
            OutputActivation::Softmax => softmax(logits),
            OutputActivation::Sigmoid => logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect(),
        }
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// One model file in the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// File name inside the bundle directory (no directories).
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// ONNX opset the model was written with.
    pub opset: i64,
    /// Name of the single input (`N×C×H×W` float32).
    pub input_name: String,
    /// Name of the single output (`N×classes` float32 logits).
    pub output_name: String,
}

/// Provenance: what produced the model, from what, with which settings and results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Program and version that wrote the bundle.
    pub created_by: String,
    /// Seconds since the Unix epoch at export.
    pub created_unix_s: u64,
    /// The resolved training configuration (fine-tuning and, nested, pretraining).
    pub training_config: serde_json::Value,
    /// The evaluation report of the exported checkpoint, when one was made.
    #[serde(default)]
    pub evaluation: Option<serde_json::Value>,
}

/// Which bundles to accept.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only bundles whose manifest signature verifies with one of these keys.
    Keys(Vec<VerifyingKey>),
    /// Any bundle, signed or not, its signature unchecked (development only: the caller warns).
    AllowUnsigned,
}

impl Trust {
    /// The public key files a bundle must be signed with, read and checked; or, with
    /// `allow_unsigned`, no check at all (the caller warns).
    pub fn from_key_files(keys: &[PathBuf], allow_unsigned: bool) -> Result<Self> {
        Ok(if allow_unsigned {
            Trust::AllowUnsigned
        } else {
            Trust::Keys(
                keys.iter()
                    .map(|p| signing::read_verifying_key(p))
                    .collect::<Result<_>>()?,
            )
        })
    }
}

/// What the signature check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "key_id")]
pub enum SignatureStatus {
    /// Verified with the key of this id.
    Verified(String),
    /// Not checked (`Trust::AllowUnsigned`).
    Unchecked,
}

/// A loaded bundle: signature verified (or knowingly unchecked) and manifest valid. Its model
/// files are read, and checked against their hashes, by [`Bundle::read_model`].
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: BundleManifest,
    /// The signature check.
    pub signature: SignatureStatus,
}

/// One of the model files a bundle may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFile {
    /// The fp32 ONNX model (always present).
    Fp32,
    /// The int8 blob (the `mcu` export target).
    Int8Blob,
    /// The int8 model's QDQ ONNX twin (the `onnx-int8` export target).
    QdqOnnx,
}

impl Bundle {
    /// Reads and checks a bundle directory: with `Trust::Keys`, the manifest's signature is
    /// verified over its bytes before they are parsed.
    pub fn load(dir: &Path, trust: &Trust) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bad = |path: &Path, reason: String| Error::Bundle {
            path: path.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(bad(
                dir,
                "not a directory (a bundle is a directory with manifest.json)".into(),
            ));
        }
        let manifest_bytes = read(&manifest_path)?;
        let signature = match trust {
            Trust::AllowUnsigned => SignatureStatus::Unchecked,
            Trust::Keys(keys) => {
                let sig_path = dir.join(signing::SIGNATURE_FILE);
                if !sig_path.is_file() {
                    return Err(Error::Signature {
                        path: sig_path,
                        reason: "the bundle is not signed (export with --sign-key; only for \
                                 development: --allow-unsigned)"
                            .into(),
                    });
                }
                let signature_text = read(&sig_path)?;
                SignatureStatus::Verified(signing::verify(
                    keys,
                    &manifest_bytes,
                    &signature_text,
                    &sig_path,
                )?)
            }
        };
        let manifest: BundleManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| bad(&manifest_path, format!("malformed manifest: {e}")))?;
        manifest.validate(&manifest_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            signature,
        })
    }

    /// Where `which` is and the hash the manifest pins it to; a file the bundle was exported
    /// without is refused with the export target that makes it.
    pub fn model_entry(&self, which: ModelFile) -> Result<(PathBuf, &str)> {
        let int8 = self.manifest.int8.as_ref();
        let (file, sha256) = match which {
            ModelFile::Fp32 => Some((&self.manifest.model.file, &self.manifest.model.sha256)),
            ModelFile::Int8Blob => int8.map(|e| (&e.file, &e.sha256)),
            ModelFile::QdqOnnx => int8
                .and_then(|e| e.qdq_onnx.as_ref())
                .map(|q| (&q.file, &q.sha256)),
        }
        .ok_or_else(|| Error::Bundle {
            path: self.dir.clone(),
            reason: match which {
                ModelFile::QdqOnnx => {
                    "the bundle has no QDQ ONNX model (export with --targets onnx,onnx-int8)"
                }
                _ => "the bundle has no int8 model (export with --targets onnx,mcu)",
            }
            .into(),
        })?;
        Ok((self.dir.join(file), sha256))
    }

    /// Reads `which` and checks its bytes against the manifest's sha256 before returning them.
    pub fn read_model(&self, which: ModelFile) -> Result<Vec<u8>> {
        let (path, sha256) = self.model_entry(which)?;
        let (bytes, actual) = read_hashing(&path)?;
        check_sha256(&path, &actual, sha256)?;
        Ok(bytes)
    }

    /// Checks every model file the manifest names except `except` against its hash, reading
    /// each through a small buffer (nothing kept): an engine runs only from a bundle that is
    /// whole as signed, though it reads just its own file.
    pub fn verify_models_except(&self, except: ModelFile) -> Result<()> {
        let mut others = vec![ModelFile::Fp32];
        if let Some(int8) = &self.manifest.int8 {
            others.push(ModelFile::Int8Blob);
            if int8.qdq_onnx.is_some() {
                others.push(ModelFile::QdqOnnx);
            }
        }
        for which in others.into_iter().filter(|&w| w != except) {
            let (path, sha256) = self.model_entry(which)?;
            check_sha256(&path, &sha256_file(&path)?, sha256)?;
        }
        Ok(())
    }

    /// Path of the model file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.model.file)
    }

    /// A short, stable identifier of the model: the first 12 hex digits of its sha256.
    pub fn model_id(&self) -> &str {
        &self.manifest.model.sha256[..12]
    }
}

impl BundleManifest {
    /// What the runtime reports for `logits`: temperature-scaled (when the bundle carries a
    /// calibration), then softmax or sigmoid.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let temperature = self.calibration.as_ref().map_or(1.0, |c| c.temperature);
        let scaled: Vec<f32> = logits.iter().map(|z| z / temperature).collect();
        self.output.probabilities(&scaled)
    }

    /// Checks internal consistency; `path` names the manifest in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Bundle {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (this runtime reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let mut files = vec![("model", &self.model.file, &self.model.sha256)];
        if let Some(int8) = &self.int8 {
            files.push(("int8", &int8.file, &int8.sha256));
            if let Some(qdq) = &int8.qdq_onnx {
                files.push(("int8.qdq_onnx", &qdq.file, &qdq.sha256));
            }
        }
        let mut names: Vec<&String> = files.iter().map(|f| f.1).collect();
        names.sort();
        names.dedup();
        if names.len() != files.len() {
            return bad("the bundle's model files must have distinct names".into());
        }
        for (what, file, sha256) in files {
            let path = Path::new(file);
            if path.components().count() != 1 || path.file_name().is_none() {
                return bad(format!(
                    "{what}.file {file:?} must be a plain file name inside the bundle"
                ));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("{what}.sha256 must be 64 hex digits"));
            }
        }
        if self.class_names.len() < 2 {
            return bad("class_names must list at least two classes".into());
        }
        if let Some(c) = &self.calibration {
            if !(c.temperature.is_finite() && c.temperature > 0.0) {
                return bad(format!(
                    "calibration.temperature {} must be positive",
                    c.temperature
                ));
            }
            if c.thresholds.len() != self.class_names.len() {
                return bad(format!(
                    "calibration.thresholds has {} entries for {} classes",
                    c.thresholds.len(),
                    self.class_names.len()
                ));
            }
            if c.thresholds
                .iter()
                .flatten()
                .any(|t| !(0.0..=1.0).contains(t))
            {
                return bad("calibration.thresholds must be probabilities in [0, 1]".into());
            }
        }
        if let Some(rules) = &self.input_rules {
            rules.validate().or_else(bad)?;
        }
        if let Some(ood) = &self.ood {
            ood.validate(self.class_names.len(), self.preprocess.channels as usize)
                .or_else(bad)?;
        }
        self.preprocess.validate(path)
    }
}

/// Refuses `path` when its hash `actual` is not the manifest's `expected`.
fn check_sha256(path: &Path, actual: &str, expected: &str) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(Error::Bundle {
        path: path.to_path_buf(),
        reason: format!(
            "sha256 {actual} does not match the manifest's {expected} (model replaced or corrupted)"
        ),
    })
}

/// A file's bytes and their lower-case hex sha256, hashed on a second thread chunk by chunk
/// while the next chunk is read: SHA-256 is sequential, so this overlap is what parallelism
/// can do for one file (ResNet-18's 45 MB: reading and hashing took about 27 ms each).
fn read_hashing(path: &Path) -> Result<(Vec<u8>, String)> {
    const CHUNK: usize = 4 << 20;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // Reserved fallibly, as `fs::read` does: a file larger than memory is an error, not an abort.
    let mut bytes = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|len| bytes.try_reserve_exact(len).ok().map(|()| len))
        .map(|len| bytes.resize(len, 0))
        .ok_or_else(|| io(std::io::ErrorKind::OutOfMemory.into()))?;
    let digest = std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel::<&[u8]>(4);
        let hasher = scope.spawn(move || {
            let mut hasher = Sha256::new();
            received.iter().for_each(|chunk| hasher.update(chunk));
            hex(&hasher.finalize())
        });
        let read = bytes
            .chunks_mut(CHUNK)
            .try_for_each(|chunk| -> std::io::Result<()> {
                file.read_exact(chunk)?;
                let chunk: &[u8] = chunk;
                // The hasher only stops early by panicking, which join re-raises below.
                let _ = chunks.send(chunk);
                Ok(())
            });
        drop(chunks);
        let digest = hasher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.map(|()| digest)
    })
    .map_err(io)?;
    // A file that grew after its length was read is not the file that was hashed.
    if file.read(&mut [0_u8; 1]).map_err(io)? != 0 {
        return Err(io(std::io::Error::other(
            "the file changed size while it was read",
        )));
    }
    Ok((bytes, digest))
}

/// Lower-case hex sha256 of a file's content, read through a 1 MiB buffer.
fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    std::io::copy(
        &mut std::io::BufReader::with_capacity(1 << 20, file),
        &mut hasher,
    )
    .map_err(io)?;
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes` (hashes, keys, signatures).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a bundle directory: the model first, then the manifest, then its signature (each
/// atomically), so a reader never finds a manifest pointing at a missing or partial model, and
/// a half-updated bundle fails verification instead of loading. The manifest's
/// `model.sha256` is set from `model_bytes`. Unsigned (`key` none): a stale signature is removed.
pub fn write_bundle(
    dir: &Path,
    manifest: BundleManifest,
    model_bytes: &[u8],
    key: Option<&SigningKey>,
) -> Result<BundleManifest> {
    write_bundle_with_int8(dir, manifest, model_bytes, None, None, key)
}

/// [`write_bundle`] with the int8 blob too (its entry must be in the manifest; its sha256 is
/// set here). The blob is written before the manifest that names it.
pub fn write_bundle_with_int8(
    dir: &Path,
    mut manifest: BundleManifest,
    model_bytes: &[u8],
    int8_bytes: Option<&[u8]>,
    qdq_bytes: Option<&[u8]>,
    key: Option<&SigningKey>,
) -> Result<BundleManifest> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let manifest_path = dir.join(MANIFEST_FILE);
    manifest.model.sha256 = sha256_hex(model_bytes);
    match (&mut manifest.int8, int8_bytes) {
        (Some(entry), Some(bytes)) => {
            entry.sha256 = sha256_hex(bytes);
            match (&mut entry.qdq_onnx, qdq_bytes) {
                (Some(qdq), Some(bytes)) => qdq.sha256 = sha256_hex(bytes),
                (None, None) => {}
                _ => {
                    return Err(Error::Bundle {
                        path: manifest_path,
                        reason: "the int8 entry's qdq_onnx and the QDQ model must come together"
                            .into(),
                    })
                }
            }
        }
        (None, None) => {}
        _ => {
            return Err(Error::Bundle {
                path: manifest_path,
                reason: "the manifest's int8 entry and the int8 blob must come together".into(),
            })
        }
    }
    manifest.validate(&manifest_path)?;
    write_atomically(&dir.join(&manifest.model.file), model_bytes)?;
    if let (Some(entry), Some(bytes)) = (&manifest.int8, int8_bytes) {
        write_atomically(&dir.join(&entry.file), bytes)?;
        if let (Some(qdq), Some(bytes)) = (&entry.qdq_onnx, qdq_bytes) {
            write_atomically(&dir.join(&qdq.file), bytes)?;
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let sig_path = dir.join(signing::SIGNATURE_FILE);
    if sig_path.exists() {
        std::fs::remove_file(&sig_path).map_err(|source| Error::Io {
            path: sig_path.clone(),
            source,
        })?;
    }
    write_atomically(&dir.join(MANIFEST_FILE), &json)?;
    if let Some(key) = key {
        write_atomically(&sig_path, signing::sign(key, &json).as_bytes())?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::{read_hashing, sha256_file, sha256_hex, softmax};

    #[test]
    fn a_file_read_and_hashed_in_chunks_has_its_whole_content_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, inside one chunk, and over two chunk boundaries with a ragged end.
        for len in [0, 1000, (8 << 20) + 3] {
            let path = dir.path().join(format!("{len}.bin"));
            let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &content).unwrap();
            let (bytes, digest) = read_hashing(&path).unwrap();
            assert!(bytes == content, "{len} bytes");
            assert_eq!(digest, sha256_hex(&content));
            assert_eq!(sha256_file(&path).unwrap(), digest);
        }
        let missing = dir.path().join("missing.onnx");
        let err = read_hashing(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.onnx"), "{err}");
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }
}
