//! `scanside inspect`: what the decoder reads from image files — size, format, DICOM modality,
//! photometric interpretation, bits, the windowing applied, the value range — as one JSON
//! object per file, optionally with the decoded image as a 16-bit PNG and a DICOM file's
//! values before and after windowing as raw f32 (for comparing with other toolkits).
//!
//! It has no bundle: DICOM is shown with the file's own window ([`DicomWindow::File`], the
//! default policy). It never preprocesses or runs a model.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::decode::{self, DicomWindow, FileFormat};
use crate::{persist, Error, Result};

/// Where `inspect` writes besides its JSON lines.
#[derive(Debug, Clone, Default)]
pub struct InspectOutputs {
    /// Folder for `<file name>.png`: each decoded, windowed image as a 16-bit PNG.
    pub png: Option<PathBuf>,
    /// Folder for `<file name>.f32` (a DICOM file's first frame before windowing, little-endian
    /// f32, rows × columns × channels) and `<file name>.windowed.f32` (the same after VOI).
    pub values: Option<PathBuf>,
}

/// What an `inspect` run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InspectSummary {
    /// Files reported.
    pub reported: usize,
    /// Files that could not be read or decoded (each handed to the failure callback).
    pub failed: usize,
}

/// Reports every file as one JSON line on `out`, in order; a file that fails is handed to
/// `failure` and the others are still reported. Creates the output folders first. The first
/// error writing to `out` stops the run; a closed pipe (`scanside inspect … | head`) stops it
/// quietly.
pub fn inspect_files(
    files: &[PathBuf],
    outputs: &InspectOutputs,
    out: &mut impl Write,
    mut failure: impl FnMut(&Error),
) -> std::result::Result<InspectSummary, InspectError> {
    for dir in [&outputs.png, &outputs.values].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|source| InspectError::Folder {
            path: dir.clone(),
            source,
        })?;
    }
    let mut summary = InspectSummary::default();
    for file in files {
        match inspect_file(file, outputs) {
            Ok(report) => match writeln!(out, "{report}") {
                Ok(()) => summary.reported += 1,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(InspectError::Write(e)),
            },
            Err(e) => {
                summary.failed += 1;
                failure(&e);
            }
        }
    }
    Ok(summary)
}

/// Why an `inspect` run stopped.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// An output folder could not be created.
    #[error("{}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Writing a report line failed (not a closed pipe: that only ends the run).
    #[error("writing a report")]
    Write(#[source] std::io::Error),
}

/// One file's report: the decoder's findings as JSON, the PNG and value files written when
/// asked.
pub fn inspect_file(file: &Path, outputs: &InspectOutputs) -> Result<serde_json::Value> {
    let bytes = persist::read(file)?;
    let name = file
        .file_name()
        .map_or("image".into(), |n| n.to_string_lossy().into_owned());
    let window = DicomWindow::File;
    let (image, dicom) = match (&outputs.values, decode::sniff(&bytes)) {
        (Some(dir), Some(FileFormat::Dicom)) => {
            let (image, report) = dump_dicom_values(file, &bytes, dir, &name)?;
            (image, Some(report))
        }
        _ => (decode::decode_bytes_with(file, &bytes, window)?, None),
    };
    let (min, max) = image
        .pixels
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let mean =
        image.pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / image.pixels.len().max(1) as f64;
    let written = match &outputs.png {
        Some(dir) => {
            let path = dir.join(format!("{name}.png"));
            persist::write_atomically(&path, &decode::to_png16(&image, file)?)?;
            Some(path)
        }
        None => None,
    };
    Ok(serde_json::json!({
        "file": file,
        "width": image.width,
        "height": image.height,
        "channels": image.channels,
        "source": image.source,
        "value_range": [min, max],
        "mean": mean,
        "png": written,
        "dicom": dicom,
    }))
}

/// Writes a DICOM file's first frame before (`NAME.f32`) and after (`NAME.windowed.f32`)
/// windowing into `dir`; returns the windowed image and the JSON describing the files.
fn dump_dicom_values(
    file: &Path,
    bytes: &[u8],
    dir: &Path,
    name: &str,
) -> Result<(decode::DecodedImage, serde_json::Value)> {
    let dicom = decode::read_dicom_values(file, bytes)?;
    let as_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let path = dir.join(format!("{name}.f32"));
    persist::write_atomically(&path, &as_bytes(&dicom.values))?;
    let dims = [dicom.height, dicom.width, dicom.channels];
    let (transfer_syntax, frames) = (dicom.transfer_syntax.clone(), dicom.frames);
    let image = decode::dicom_image(dicom, DicomWindow::File);
    // What the model sees before resizing: after VOI (window or LUT) and inversion.
    let windowed = dir.join(format!("{name}.windowed.f32"));
    persist::write_atomically(&windowed, &as_bytes(&image.pixels))?;
    let report = serde_json::json!({
        "values": path,
        "windowed": windowed,
        "transfer_syntax": transfer_syntax,
        "frames": frames,
        "dims": dims,
    });
    Ok((image, report))
}
