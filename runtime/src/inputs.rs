//! What a front door screens when given paths: files as named; folders walked recursively in
//! name order, hidden entries (`.name`) skipped and files that are not images (by their
//! leading bytes: PNG, JPEG, DICOM) left out and counted; DICOMDIR files replaced by the
//! instances they reference. A referenced instance that is missing is kept, so that screening
//! names it as a failure instead of silently dropping it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::decode::{self, FileFormat};
use crate::{Error, Result};

/// The files behind a command line's paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Files to screen, in order: each found in folders once, named ones as often as named.
    pub files: Vec<PathBuf>,
    /// Files inside folders left out because they are not images.
    pub skipped: Vec<PathBuf>,
}

/// Expands `paths` (files, folders, DICOMDIRs) into the files they hold.
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut inputs)?;
        } else if is_dicomdir_file(path) {
            follow_dicomdir(path, &mut inputs)?;
        } else {
            // Named on the command line: kept as given, repeats included.
            inputs.files.push(path.clone());
        }
    }
    // A file found twice (a folder and the DICOMDIR in it, or overlapping folders) is
    // screened once; files named explicitly are left as they are.
    let mut seen = std::collections::HashSet::new();
    let explicit: std::collections::HashSet<&PathBuf> = paths.iter().collect();
    inputs
        .files
        .retain(|f| explicit.contains(f) || seen.insert(f.clone()));
    Ok(inputs)
}

fn walk(dir: &Path, inputs: &mut Inputs) -> Result<()> {
    let hidden =
        |e: &walkdir::DirEntry| e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.');
    let entries = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !hidden(e));
    for entry in entries {
        let entry = entry.map_err(|e| Error::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("a symlink loop")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.into_path();
        match leading_format(&path)? {
            Some(FileFormat::Dicom) if is_dicomdir_file(&path) => follow_dicomdir(&path, inputs)?,
            Some(_) => inputs.files.push(path),
            None => inputs.skipped.push(path),
        }
    }
    Ok(())
}

/// The image format a file's first bytes announce.
fn leading_format(path: &Path) -> Result<Option<FileFormat>> {
    let mut head = Vec::with_capacity(132);
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    file.take(132)
        .read_to_end(&mut head)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(decode::sniff(&head))
}

fn is_dicomdir_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
        && path.is_file()
}

fn follow_dicomdir(path: &Path, inputs: &mut Inputs) -> Result<()> {
    let bytes = crate::persist::read(path)?;
    if !decode::is_dicomdir(&bytes) {
        return Err(Error::Decode {
            path: path.to_path_buf(),
            reason: format!(
                "named DICOMDIR but not a media directory (Media Storage SOP Class {})",
                decode::MEDIA_STORAGE_DIRECTORY
            ),
        });
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for components in decode::dicomdir_references(path, &bytes)? {
        inputs.files.push(resolve(base, &components));
    }
    Ok(())
}

/// `base` joined with a file ID's components, each matched without regard to case when the
/// exact name is absent (media written in upper case, copied to a case-sensitive disk in lower
/// case).
fn resolve(base: &Path, components: &[String]) -> PathBuf {
    let mut path = base.to_path_buf();
    for component in components {
        let exact = path.join(component);
        path = if exact.exists() {
            exact
        } else {
            std::fs::read_dir(&path)
                .ok()
                .and_then(|entries| {
                    entries
                        .flatten()
                        .find(|e| e.file_name().eq_ignore_ascii_case(component))
                        .map(|e| e.path())
                })
                .unwrap_or(exact)
        };
    }
    path
}
