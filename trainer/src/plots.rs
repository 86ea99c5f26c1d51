//! SVG plots for reports (plotters): line charts with confidence bars (label-efficiency,
//! training curves), ROC curves, the confusion matrix and the reliability diagram. Each
//! function returns the SVG text, which reports embed in HTML or write beside it.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::ReliabilityBin;

const SIZE: (u32, u32) = (640, 440);

/// A point `(x, y, optional (low, high))` of a chart line.
pub type Point = (f64, f64, Option<(f64, f64)>);

/// One line of a chart: name and points.
pub type Series = (String, Vec<Point>);

fn palette(i: usize) -> RGBColor {
    // Colour-blind-safe (Okabe–Ito).
    const COLOURS: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (0, 0, 0),
        (240, 228, 66),
    ];
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    RGBColor(r, g, b)
}

fn render(draw: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<(), String>) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        if let Err(e) = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(root.clone()))
        {
            // Plotting cannot fail on valid numbers; say so in the picture rather than panic.
            return format!("<svg xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">plot failed: {e}</text></svg>");
        }
        let _ = root.present();
    }
    svg
}

fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-6);
    (lo - pad * span, hi + pad * span)
}

/// Lines with optional vertical interval bars; `log_x` plots x on a log10 axis (labelled as
/// percentages, for label fractions).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> String {
    line_chart_with_legend(
        title,
        x_label,
        y_label,
        series,
        log_x,
        SeriesLabelPosition::LowerRight,
    )
}

/// [`line_chart`] with the legend placed where the lines are not.
pub fn line_chart_with_legend(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    legend: SeriesLabelPosition,
) -> String {
    let fx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let (x0, x1) = range(
        series.iter().flat_map(|s| s.1.iter().map(|p| fx(p.0))),
        0.05,
    );
    let (y0, y1) = range(
        series.iter().flat_map(|s| {
            s.1.iter()
                .flat_map(|p| [p.1, p.2.map_or(p.1, |b| b.0), p.2.map_or(p.1, |b| b.1)])
        }),
        0.08,
    );
    render(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| {
                if log_x {
                    let x = 10f64.powf(*v);
                    if x >= 0.1 {
                        format!("{:.0}%", x * 100.0)
                    } else {
                        format!("{:.1}%", x * 100.0)
                    }
                } else {
                    let text = format!("{v:.2}");
                    text.trim_end_matches('0').trim_end_matches('.').to_string()
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = palette(i);
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (fx(p.0), p.1)),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((fx(p.0), p.1), 3, colour.filled())),
                )
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(points.iter().filter_map(|p| {
                    p.2.map(|(lo, hi)| {
                        ErrorBar::new_vertical(fx(p.0), lo, p.1, hi, colour.stroke_width(1), 8)
                    })
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// ROC curves (false-positive rate → true-positive rate) with the chance diagonal.
pub fn roc_chart(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> String {
    render(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate (1 − specificity)")
            .y_desc("sensitivity")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in curves.iter().enumerate() {
            let colour = palette(i);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Confusion matrix as a heat map, rows = true class, columns = predicted, each cell shaded by
/// its share of the row (recall) and labelled with its count.
pub fn confusion_chart(title: &str, names: &[String], matrix: &[Vec<usize>]) -> String {
    let k = names.len().max(1);
    render(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())
            .map_err(|e| e.to_string())?;
        // Rows are drawn top-down: true class t sits at y = k − 1 − t.
        let name_at = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < k => names[if flip { k - 1 - i } else { *i }].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(k + 1)
            .y_labels(k + 1)
            .x_label_formatter(&|v| name_at(v, false))
            .y_label_formatter(&|v| name_at(v, true))
            .draw()
            .map_err(|e| e.to_string())?;
        for (t, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let y = k - 1 - t;
                let shade = RGBColor(
                    (255.0 - share * 255.0) as u8,
                    (255.0 - share * 141.0) as u8,
                    (255.0 - share * 77.0) as u8,
                );
                chart
                    .draw_series([Rectangle::new(
                        [
                            (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                            (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
                        ],
                        shade.filled(),
                    )])
                    .map_err(|e| e.to_string())?;
                let colour = if share > 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series([Text::new(
                        count.to_string(),
                        (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y)),
                        ("sans-serif", 14).into_font().color(&colour),
                    )])
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// Reliability diagram: accuracy against mean confidence per bin, before and after
/// calibration, with the diagonal of perfect calibration.
pub fn reliability_chart(
    title: &str,
    before: &[ReliabilityBin],
    after: &[ReliabilityBin],
) -> String {
    let points = |bins: &[ReliabilityBin]| -> Vec<(f64, f64)> {
        bins.iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect()
    };
    render(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("confidence (top-class probability)")
            .y_desc("accuracy")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(|e| e.to_string())?;
        for (i, (name, bins)) in [("softmax", before), ("temperature-scaled", after)]
            .iter()
            .enumerate()
        {
            let colour = palette(i);
            let pts = points(bins);
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let series: Vec<Series> = vec![
            (
                "scratch".into(),
                vec![(0.01, 0.6, Some((0.55, 0.65))), (1.0, 0.8, None)],
            ),
            (
                "simclr".into(),
                vec![(0.01, 0.7, None), (1.0, 0.85, Some((0.8, 0.9)))],
            ),
        ];
        let svg = line_chart("label efficiency", "labels", "AUC", &series, true);
        assert!(
            svg.starts_with("<svg") && svg.contains("simclr") && svg.contains("100%"),
            "{svg}"
        );
        let roc = roc_chart(
            "ROC",
            &[("mel".into(), vec![(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)])],
        );
        assert!(roc.contains("mel"));
        let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let confusion = confusion_chart("confusion", &names, &[vec![5, 1], vec![2, 7]]);
        assert!(
            confusion.contains("\n7\n") && confusion.contains("\nb\n"),
            "{confusion}"
        );
    }
}
