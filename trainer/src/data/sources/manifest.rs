//! CSV manifests (and the HAM10000 and NIH layouts, which are manifests with known columns):
//! one row per image, with its path, its case, its label — one class, joined findings, or one
//! CheXpert-style column per finding — and other columns kept as attributes for
//! sub-population analyses. Rows are read in file order; the content hash covers the manifest's
//! bytes and each image file's size. Image files are never opened here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use csv::StringRecord;
use sha2::{Digest, Sha256};

use super::{hash_file_entry, CsvLabels, CsvSpec, SourceSpec};
use crate::data::{hex, DatasetIndex, Finding, ImageRef, Sample, Target, Task};
use crate::{Error, Result};

/// Reads a manifest's index.
pub(super) fn read_csv(spec: &CsvSpec) -> Result<DatasetIndex> {
    let manifest = Manifest {
        spec,
        root: match &spec.image_root {
            Some(r) => r.clone(),
            None => spec
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        },
    };
    let bytes = scanside_runtime::persist::read(&spec.path)?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| manifest.bad(format!("unreadable header: {e}")))?
        .clone();
    let columns = manifest.columns(&headers)?;
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    let mut rows = Vec::new();
    let mut seen_ids = HashSet::new();
    for (n, record) in reader.records().enumerate() {
        let row = n + 2;
        let record = record.map_err(|e| manifest.bad(format!("row {row}: {e}")))?;
        let read = (&mut hasher, &mut seen_ids);
        rows.push(manifest.row(row, &record, &headers, &columns, read)?);
    }
    if rows.is_empty() {
        return Err(manifest.bad("lists no images".into()));
    }
    let (task, class_names) = manifest.classes(&rows);
    if class_names.iter().any(|c| c.is_empty()) {
        return Err(manifest.bad("a class name is empty (blank label cell?)".into()));
    }
    let position: HashMap<&str, usize> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut samples = Vec::with_capacity(rows.len());
    for row in rows {
        let target = manifest.target(&row, &position, &class_names)?;
        samples.push(Sample {
            id: row.id,
            group: row.group,
            target,
            image: ImageRef::File(row.file),
            official: None,
            attributes: row.attributes,
        });
    }
    Ok(DatasetIndex {
        source: SourceSpec::Csv(spec.clone()),
        task,
        class_names,
        uncertainty: spec.uncertainty,
        grouped_by: spec
            .group_column
            .clone()
            .unwrap_or_else(|| "none (one group per image)".into()),
        samples,
        content_sha256: hex(&hasher.finalize()),
        arrays: None,
    })
}

/// Where the manifest's columns are.
struct Columns {
    path: usize,
    group: Option<usize>,
    /// The label column, or one column per finding.
    labels: Vec<usize>,
}

/// One row as read, before its labels are resolved against the class names.
struct Row {
    /// Its line in the file (the header is line 1).
    line: usize,
    id: String,
    group: String,
    file: PathBuf,
    /// The raw label cells.
    cells: Vec<String>,
    /// The other columns.
    attributes: BTreeMap<String, String>,
}

/// A manifest being read: every error names its file.
struct Manifest<'a> {
    spec: &'a CsvSpec,
    /// The folder image paths are relative to.
    root: PathBuf,
}

impl Manifest<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Data {
            path: self.spec.path.clone(),
            reason,
        }
    }

    /// The columns the spec names, found in the header.
    fn columns(&self, headers: &StringRecord) -> Result<Columns> {
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| {
                    self.bad(format!(
                        "no column {name:?} (columns: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ))
                })
        };
        let path = column(&self.spec.path_column)?;
        let group = self.spec.group_column.as_deref().map(column).transpose()?;
        let labels = match &self.spec.labels {
            CsvLabels::Class { column: c, .. } | CsvLabels::Joined { column: c, .. } => {
                vec![column(c)?]
            }
            CsvLabels::Findings { columns } => {
                if columns.is_empty() {
                    return Err(self.bad("no finding columns given".into()));
                }
                columns.iter().map(|c| column(c)).collect::<Result<_>>()?
            }
        };
        Ok(Columns {
            path,
            group,
            labels,
        })
    }

    /// Row `line`: its image id (not seen before) and file (added to the content hash), group,
    /// label cells and other columns.
    fn row(
        &self,
        line: usize,
        record: &StringRecord,
        headers: &StringRecord,
        columns: &Columns,
        (hasher, seen_ids): (&mut Sha256, &mut HashSet<String>),
    ) -> Result<Row> {
        let spec = self.spec;
        let field = |i: usize| record.get(i).unwrap_or("").trim().to_string();
        let id = field(columns.path);
        if id.is_empty() {
            return Err(self.bad(format!("row {line}: empty {:?} cell", spec.path_column)));
        }
        if !seen_ids.insert(id.clone()) {
            return Err(self.bad(format!("row {line}: image {id:?} is listed twice")));
        }
        let group = match columns.group {
            Some(c) => {
                let g = field(c);
                if g.is_empty() {
                    return Err(self.bad(format!(
                        "row {line}: empty {:?} cell",
                        spec.group_column.as_deref().unwrap_or_default()
                    )));
                }
                g
            }
            None => id.clone(),
        };
        let file = self.root.join(spec.path_template.replace("{}", &id));
        hash_file_entry(hasher, &id, &file);
        let attributes = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                *i != columns.path && Some(*i) != columns.group && !columns.labels.contains(i)
            })
            .map(|(i, h)| (h.trim().to_string(), field(i)))
            .collect();
        Ok(Row {
            line,
            cells: columns.labels.iter().map(|&c| field(c)).collect(),
            id,
            group,
            file,
            attributes,
        })
    }

    /// The task and the class names in label order: as the spec gives them, else the sorted
    /// distinct labels (or findings) of the rows.
    fn classes(&self, rows: &[Row]) -> (Task, Vec<String>) {
        match &self.spec.labels {
            CsvLabels::Class { classes, .. } => (
                Task::MultiClass,
                match classes {
                    Some(c) => c.clone(),
                    None => rows
                        .iter()
                        .map(|r| r.cells[0].clone())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                },
            ),
            CsvLabels::Joined {
                separator,
                none_value,
                classes,
                ..
            } => (
                Task::MultiLabel,
                match classes {
                    Some(c) => c.clone(),
                    None => rows
                        .iter()
                        .flat_map(|r| split_joined(&r.cells[0], separator))
                        .filter(|f| Some(f) != none_value.as_ref())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                },
            ),
            CsvLabels::Findings { columns } => (Task::MultiLabel, columns.clone()),
        }
    }

    /// A row's target, its label cells resolved against the class names.
    fn target(
        &self,
        row: &Row,
        position: &HashMap<&str, usize>,
        class_names: &[String],
    ) -> Result<Target> {
        let (line, cells) = (row.line, &row.cells);
        match &self.spec.labels {
            CsvLabels::Class { column, .. } => {
                let c = *position.get(cells[0].as_str()).ok_or_else(|| {
                    self.bad(format!(
                        "row {line}: {column} {:?} is not a known class (known: {})",
                        cells[0],
                        class_names.join(", ")
                    ))
                })?;
                Ok(Target::Class(c))
            }
            CsvLabels::Joined {
                column,
                separator,
                none_value,
                ..
            } => {
                let mut findings = vec![Finding::Unmentioned; class_names.len()];
                let names = split_joined(&cells[0], separator);
                for name in &names {
                    if Some(name) == none_value.as_ref() {
                        if names.len() > 1 {
                            return Err(self.bad(format!(
                                "row {line}: {column} has {name:?} together with findings"
                            )));
                        }
                        continue;
                    }
                    let c = *position.get(name.as_str()).ok_or_else(|| {
                        self.bad(format!(
                            "row {line}: {column} names {name:?}, not a known finding (known: {})",
                            class_names.join(", ")
                        ))
                    })?;
                    findings[c] = Finding::Positive;
                }
                Ok(Target::Findings(findings))
            }
            CsvLabels::Findings { columns } => Ok(Target::Findings(
                cells
                    .iter()
                    .zip(columns)
                    .map(|(cell, column)| {
                        parse_chexpert(cell).ok_or_else(|| {
                            self.bad(format!(
                                "row {line}: {column} is {cell:?}; expected 1, 0, -1 or blank"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            )),
        }
    }
}

/// A CheXpert cell: 1, 0, -1 (uncertain) or blank (not mentioned).
fn parse_chexpert(cell: &str) -> Option<Finding> {
    match cell.trim() {
        "" => Some(Finding::Unmentioned),
        v => match v.parse::<f64>().ok()? {
            1.0 => Some(Finding::Positive),
            0.0 => Some(Finding::Negative),
            -1.0 => Some(Finding::Uncertain),
            _ => None,
        },
    }
}

fn split_joined(cell: &str, separator: &str) -> Vec<String> {
    cell.split(separator)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chexpert_cells_parse_and_others_are_refused() {
        assert_eq!(parse_chexpert("1.0"), Some(Finding::Positive));
        assert_eq!(parse_chexpert("0"), Some(Finding::Negative));
        assert_eq!(parse_chexpert("-1.0"), Some(Finding::Uncertain));
        assert_eq!(parse_chexpert(" "), Some(Finding::Unmentioned));
        assert_eq!(parse_chexpert("2"), None);
        assert_eq!(parse_chexpert("yes"), None);
    }
}
