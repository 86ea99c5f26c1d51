//! VOI (value of interest) mapping of monochrome DICOM values to `[0, 1]`: the file's VOI LUT,
//! a window centre/width with its VOI LUT Function, or the image's own range, as the
//! [`DicomWindow`] policy picks. It maps values only: reading them from the file is `dicom`'s.

use super::lut::LookupTable;
use super::DicomWindow;

/// (0028,1056) VOI LUT Function: how a window centre/width maps values (PS3.3 C.11.2.1.2–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiFunction {
    /// `LINEAR` (the default): the centre − 0.5, width − 1 formula.
    #[default]
    Linear,
    /// `LINEAR_EXACT`: `(x − c) / w + 0.5`, clamped.
    LinearExact,
    /// `SIGMOID`: `1 / (1 + exp(−4 (x − c) / w))`.
    Sigmoid,
}

impl VoiFunction {
    /// Maps `x` to `[0, 1]` with the window `(center, width)`.
    pub fn apply(self, x: f64, center: f64, width: f64) -> f32 {
        match self {
            VoiFunction::Linear => linear_window(x, center, width),
            VoiFunction::LinearExact => {
                if x <= center - width / 2.0 {
                    0.0
                } else if x > center + width / 2.0 {
                    1.0
                } else {
                    ((x - center) / width + 0.5).clamp(0.0, 1.0) as f32
                }
            }
            VoiFunction::Sigmoid => (1.0 / (1.0 + (-4.0 * (x - center) / width).exp())) as f32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            VoiFunction::Linear => "LINEAR",
            VoiFunction::LinearExact => "LINEAR_EXACT",
            VoiFunction::Sigmoid => "SIGMOID",
        }
    }
}

/// The mapping one monochrome frame gets.
pub(super) enum Voi<'a> {
    /// The file's VOI LUT.
    Table(&'a LookupTable),
    /// A window `(center, width)` with its function.
    Window(VoiFunction, f64, f64),
    /// The frame's own minimum and maximum.
    MinMax,
}

impl<'a> Voi<'a> {
    /// What `policy` picks for a frame with this VOI LUT, window and VOI LUT Function.
    pub(super) fn choose(
        policy: DicomWindow,
        voi_lut: Option<&'a LookupTable>,
        window: Option<(f64, f64)>,
        function: VoiFunction,
    ) -> Self {
        match (policy, voi_lut, window) {
            (DicomWindow::File, Some(table), _) => Voi::Table(table),
            (DicomWindow::File, None, Some((center, width))) => {
                Voi::Window(function, center, width)
            }
            (DicomWindow::File, None, None) | (DicomWindow::MinMax, ..) => Voi::MinMax,
            (DicomWindow::Fixed { center, width }, ..) => {
                Voi::Window(VoiFunction::Linear, center, width.max(1.0))
            }
        }
    }

    /// `values` mapped to `[0, 1]`, and how (for the report).
    pub(super) fn apply(&self, values: &[f32]) -> (Vec<f32>, String) {
        match *self {
            Voi::Table(table) => {
                let top = ((1_u32 << table.bits) - 1) as f32;
                (
                    values
                        .iter()
                        .map(|&v| (table.look_up(v) / top).clamp(0.0, 1.0))
                        .collect(),
                    format!(
                        "VOI LUT ({} entries from {}, {} bits)",
                        table.entries.len(),
                        table.first,
                        table.bits
                    ),
                )
            }
            Voi::Window(function, center, width) => (
                values
                    .iter()
                    .map(|&v| function.apply(f64::from(v), center, width))
                    .collect(),
                match function {
                    VoiFunction::Linear => format!("window center {center} width {width}"),
                    other => format!("window center {center} width {width} ({})", other.name()),
                },
            ),
            Voi::MinMax => {
                let (lo, hi) = min_max(values);
                let span = if hi > lo { hi - lo } else { 1.0 };
                (
                    values.iter().map(|&v| (v - lo) / span).collect(),
                    format!("min-max {lo}..{hi}"),
                )
            }
        }
    }
}

/// DICOM PS3.3 C.11.2.1.2.1 linear VOI function, mapped to `[0, 1]` instead of an integer
/// output range (dicom-pixeldata applies windows only when producing integer images).
fn linear_window(x: f64, center: f64, width: f64) -> f32 {
    let lower = center - 0.5 - (width - 1.0) / 2.0;
    let upper = center - 0.5 + (width - 1.0) / 2.0;
    if x <= lower {
        0.0
    } else if x > upper {
        1.0
    } else {
        (((x - (center - 0.5)) / (width - 1.0)) + 0.5).clamp(0.0, 1.0) as f32
    }
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_the_dicom_formula() {
        assert_eq!(linear_window(-1000.0, 40.0, 400.0), 0.0);
        assert_eq!(linear_window(1000.0, 40.0, 400.0), 1.0);
        let mid = linear_window(39.5, 40.0, 400.0);
        assert!((mid - 0.5).abs() < 1e-6, "{mid}");
    }
}
