//! Line charts over curves: bounds from the data, optional log scale,
//! vertical marks (learning-rate changes, resumes).

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, LegendPosition, Paragraph};
use ratatui::Frame;

use crate::tui::theme::Theme;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Color,
}

/// A vertical mark at `x`.
pub struct Mark {
    pub x: f64,
    pub color: Color,
}

/// Draws `series` in `block`; `log_y` plots log10 of positive values.
#[allow(clippy::too_many_arguments)]
pub fn draw(
    frame: &mut Frame,
    area: Rect,
    block: Block,
    series: &[Series],
    marks: &[Mark],
    x_label: &str,
    log_y: bool,
    legend: bool,
    theme: &Theme,
) {
    let transformed: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .collect()
        })
        .collect();
    let all = transformed.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        frame.render_widget(
            Paragraph::new(Line::styled("no data yet", theme.muted())).centered(),
            Rect {
                y: inner.y + inner.height / 2,
                height: 1.min(inner.height),
                ..inner
            },
        );
        return;
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        let pad = if y0.abs() > 1e-12 {
            y0.abs() * 0.05
        } else {
            1.0
        };
        y0 -= pad;
        y1 += pad;
    } else {
        let pad = (y1 - y0) * 0.05;
        // Positive data (a learning rate) keeps its axis above zero.
        y0 = if y0 >= 0.0 && !log_y {
            (y0 - pad).max(0.0)
        } else {
            y0 - pad
        };
        y1 += pad;
    }
    let mark_lines: Vec<[(f64, f64); 2]> = marks
        .iter()
        .filter(|m| m.x >= x0 && m.x <= x1)
        .map(|m| [(m.x, y0), (m.x, y1)])
        .collect();
    let markers = [
        Marker::Braille,
        Marker::Dot,
        Marker::Block,
        Marker::HalfBlock,
    ];
    let mut datasets: Vec<Dataset> = Vec::new();
    for (m, line) in marks.iter().zip(&mark_lines) {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(m.color))
                .data(line),
        );
    }
    for (i, (s, pts)) in series.iter().zip(&transformed).enumerate() {
        // Without colour, series differ by their marker.
        let marker = if theme.colored {
            Marker::Braille
        } else {
            markers[i % markers.len()]
        };
        datasets.push(
            Dataset::default()
                .name(s.name.clone())
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(s.color))
                .data(pts),
        );
    }
    let y_label = |v: f64| {
        if log_y {
            short(10f64.powf(v))
        } else {
            short(v)
        }
    };
    let x_labels = vec![
        Line::from(short(x0)),
        Line::from(short((x0 + x1) / 2.0)),
        Line::from(short(x1)),
    ];
    let y_labels = vec![
        Line::from(y_label(y0)),
        Line::from(y_label((y0 + y1) / 2.0)),
        Line::from(y_label(y1)),
    ];
    let chart = Chart::new(datasets)
        .block(block)
        .style(theme.text())
        .x_axis(
            Axis::default()
                .title(Line::styled(x_label.to_string(), theme.muted()))
                .style(theme.muted())
                .bounds([x0, x1])
                .labels(x_labels),
        )
        .y_axis(
            Axis::default()
                .style(theme.muted())
                .bounds([y0, y1])
                .labels(y_labels),
        )
        .legend_position(legend.then_some(LegendPosition::TopRight))
        .hidden_legend_constraints((
            ratatui::layout::Constraint::Percentage(60),
            ratatui::layout::Constraint::Percentage(60),
        ));
    frame.render_widget(chart, area);
}

/// A number in a few characters: `0.0031`, `3.1e-4`, `12.5k`, `3.2M`.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(3e-4), "3.0e-4");
        assert_eq!(short(2.345), "2.35");
        assert_eq!(short(12_500.0), "12.5k");
        assert_eq!(short(3_200_000.0), "3.2M");
    }
}
