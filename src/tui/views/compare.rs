//! Runs side by side: overlaid curves, the hyperparameters that differ,
//! final and best metrics, and samples for the same inputs.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::chart::{self, Series};
use super::{clip, metric_value, ordered_metrics, panel, short};
use crate::tui::app::{App, CompareState};
use crate::tui::theme::Theme;

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let Some(c) = &app.compare else {
        return;
    };
    let big = area.width >= 140 && area.height >= 40;
    let [top, bottom] = Layout::vertical([
        Constraint::Percentage(if big { 55 } else { 60 }),
        Constraint::Min(6),
    ])
    .areas(area);
    render_chart(c, theme, frame, top);
    if big {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)])
                .areas(bottom);
        let [params, metrics] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
        render_params(c, theme, frame, params);
        render_metrics(c, theme, frame, metrics);
        render_samples(c, theme, frame, right);
    } else {
        match app.compare_pane % 3 {
            0 => render_params(c, theme, frame, bottom),
            1 => render_metrics(c, theme, frame, bottom),
            _ => render_samples(c, theme, frame, bottom),
        }
    }
}

fn render_chart(c: &CompareState, theme: &Theme, frame: &mut Frame, area: Rect) {
    let series: Vec<Series> = c
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let curve = if c.validation {
                &r.history.val_loss
            } else {
                &r.history.train_loss
            };
            Series {
                name: clip(&r.name, 32),
                points: curve.xy(c.axis, c.smoothing),
                color: theme.series(i),
            }
        })
        .collect();
    let title = Line::from(vec![
        Span::styled(
            format!(
                " {} loss ",
                if c.validation {
                    "validation"
                } else {
                    "training"
                }
            ),
            theme.title(),
        ),
        Span::styled(
            format!(
                "· by {} · smoothing {:.1} · {} ",
                c.axis.label(),
                c.smoothing,
                if c.log_y { "log y" } else { "linear y" }
            ),
            theme.muted(),
        ),
    ]);
    chart::draw(
        frame,
        area,
        panel(title, theme),
        &series,
        &[],
        c.axis.label(),
        c.log_y,
        true,
        theme,
    );
}

fn run_header(c: &CompareState, theme: &Theme, first: &str) -> Row<'static> {
    let mut cells = vec![Cell::from(first.to_string()).style(theme.muted())];
    for (i, r) in c.runs.iter().enumerate() {
        cells.push(
            Cell::from(clip(&r.name, 30)).style(ratatui::style::Style::new().fg(theme.series(i))),
        );
    }
    Row::new(cells)
}

fn widths(c: &CompareState, first: u16) -> Vec<Constraint> {
    std::iter::once(Constraint::Length(first))
        .chain(c.runs.iter().map(|_| Constraint::Min(10)))
        .collect()
}

fn render_params(c: &CompareState, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(" hyperparameters that differ (Tab: metrics) ", theme);
    if c.differing.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "the runs' configs are the same",
                theme.muted(),
            ))
            .block(block),
            area,
        );
        return;
    }
    let rows: Vec<Row> = c
        .differing
        .iter()
        .map(|(k, vs)| {
            Row::new(
                std::iter::once(Cell::from(k.clone()).style(theme.accent()))
                    .chain(vs.iter().map(|v| Cell::from(clip(v, 24)))),
            )
        })
        .collect();
    frame.render_widget(
        Table::new(rows, widths(c, 26))
            .header(run_header(c, theme, "key"))
            .block(block),
        area,
    );
}

fn render_metrics(c: &CompareState, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(" final and best (Tab: samples) ", theme);
    let metric_names: Vec<&str> = c
        .runs
        .iter()
        .filter_map(|r| r.history.last_eval.as_ref())
        .flat_map(|(_, _, m)| m.keys().map(String::as_str))
        .collect();
    let each = |f: &dyn Fn(&crate::tui::history::RunHistory) -> String| -> Vec<String> {
        c.runs.iter().map(|r| f(&r.history)).collect()
    };
    let mut rows: Vec<(String, Vec<String>)> = vec![(
        "status".into(),
        c.runs.iter().map(|r| r.status.clone()).collect(),
    )];
    // The task's metrics first, lined up by name across the runs: they are
    // what the runs are compared by, and at 80x24 only the first rows fit.
    for (m, label) in ordered_metrics(metric_names) {
        let values = each(&|h| {
            h.last_eval
                .as_ref()
                .and_then(|(_, _, ms)| ms.get(m))
                .map(|v| metric_value(m, *v))
                .unwrap_or("-".into())
        });
        rows.push((label, values));
    }
    rows.extend([
        (
            "best val loss".into(),
            each(&|h| {
                h.best_val_loss
                    .map(|l| format!("{l:.4}"))
                    .unwrap_or("-".into())
            }),
        ),
        (
            "last val loss".into(),
            each(&|h| {
                h.last_eval
                    .as_ref()
                    .map(|(_, l, _)| format!("{l:.4}"))
                    .unwrap_or("-".into())
            }),
        ),
        (
            "final train loss".into(),
            each(&|h| h.loss.map(|l| format!("{l:.4}")).unwrap_or("-".into())),
        ),
        ("steps".into(), each(&|h| h.step.to_string())),
        ("tokens seen".into(), each(&|h| short(h.tokens_seen as f64))),
        (
            "tokens/s".into(),
            each(&|h| {
                h.tokens_per_sec
                    .map(|t| format!("{t:.0}"))
                    .unwrap_or("-".into())
            }),
        ),
    ]);
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|(k, vs)| {
            Row::new(
                std::iter::once(Cell::from(k).style(theme.accent()))
                    .chain(vs.into_iter().map(Cell::from)),
            )
        })
        .collect();
    frame.render_widget(
        Table::new(rows, widths(c, 18))
            .header(run_header(c, theme, ""))
            .block(block),
        area,
    );
}

fn render_samples(c: &CompareState, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(
        " samples for the same inputs (Tab: hyperparameters) ",
        theme,
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // The inputs every run decoded, in the first run's order.
    let inputs: Vec<&str> = c
        .runs
        .first()
        .map(|r| {
            r.history
                .samples
                .iter()
                .map(|s| s.input.as_str())
                .filter(|i| {
                    c.runs
                        .iter()
                        .all(|o| o.history.samples.iter().any(|s| s.input == *i))
                })
                .collect()
        })
        .unwrap_or_default();
    if inputs.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no validation input was sampled by every run",
                theme.muted(),
            ))
            .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let w = inner.width.saturating_sub(21) as usize;
    let mut lines = Vec::new();
    for input in inputs {
        lines.push(Line::from(vec![
            Span::styled("in  ", theme.muted()),
            Span::styled(clip(input, w + 17), theme.text()),
        ]));
        for (i, r) in c.runs.iter().enumerate() {
            if let Some(s) = r.history.samples.iter().find(|s| s.input == input) {
                lines.push(Line::from(vec![
                    Span::styled(
                        format!("{:<15}", clip(&r.name, 14)),
                        ratatui::style::Style::new().fg(theme.series(i)),
                    ),
                    Span::styled(format!("@{:<4}", s.step), theme.muted()),
                    Span::styled(clip(&s.output, w), theme.text()),
                ]));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
