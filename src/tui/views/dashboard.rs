//! A live or finished run: curves, numbers, samples and the event log.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph, Sparkline, Wrap};
use ratatui::Frame;

use super::chart::{self, Mark, Series};
use super::confusion;
use super::{clip, duration, metric_value, ordered_metrics, panel, short};
use crate::tui::app::App;
use crate::tui::history::{LogKind, Phase, RunHistory, XAxis};
use crate::tui::theme::Theme;

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let Some(h) = app.dashboard_history() else {
        frame.render_widget(
            Paragraph::new("no run selected").block(panel(" dashboard ", theme)),
            area,
        );
        return;
    };
    let name = app
        .viewed
        .as_ref()
        .map(|v| v.name.clone())
        .unwrap_or_default();
    let live = app.live_run(&h.id).is_some_and(|l| !l.ended);
    // Trained by another process right now (headless), or by nobody.
    let elsewhere = app.viewed.as_ref().is_some_and(|v| v.locked);
    let tall = area.height >= 34;
    let [head, main, lower] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Percentage(if tall { 45 } else { 55 }),
        Constraint::Min(6),
    ])
    .areas(area);
    render_head(h, &name, live, elsewhere, theme, frame, head);

    let stats_width = if area.width >= 120 { 34 } else { 30 };
    let [loss_area, stats_area] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(stats_width)]).areas(main);
    render_loss(h, theme, frame, loss_area);
    render_stats(app, h, theme, frame, stats_area, !tall);

    if tall {
        let [charts, bottom] =
            Layout::vertical([Constraint::Percentage(45), Constraint::Min(5)]).areas(lower);
        let [lr_area, tps_area] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(charts);
        render_curve(h, Which::Lr, theme, frame, lr_area);
        render_curve(h, Which::Throughput, theme, frame, tps_area);
        render_bottom(app, h, theme, frame, bottom);
    } else {
        render_bottom(app, h, theme, frame, lower);
    }
}

fn render_head(
    h: &RunHistory,
    name: &str,
    live: bool,
    elsewhere: bool,
    theme: &Theme,
    frame: &mut Frame,
    area: Rect,
) {
    // Not over, yet nobody trains it: the process died.
    let crashed = !live && !elsewhere && !h.phase.is_over() && h.events > 0;
    let (label, phase_style) = match &h.phase {
        _ if crashed => ("crashed", theme.warning()),
        Phase::Failed(_) => (h.phase.label(), theme.error()),
        Phase::Paused(_) => (h.phase.label(), theme.warning()),
        Phase::Finished(_) => (h.phase.label(), theme.good()),
        _ => (h.phase.label(), theme.accent()),
    };
    let mut title = vec![
        Span::styled(format!(" {} ", h.id), theme.title()),
        Span::styled(format!("[{label}] "), phase_style),
    ];
    if !name.is_empty() && !h.id.ends_with(name) {
        title.push(Span::styled(format!("{name} "), theme.muted()));
    }
    if elsewhere {
        title.push(Span::styled(
            "(trained by another process; followed from its log) ",
            theme.muted(),
        ));
    } else if crashed {
        title.push(Span::styled(
            "(no process trains it: r on the run list resumes it) ",
            theme.muted(),
        ));
    }
    let block = panel(Line::from(title), theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // A failure or a pause says why where the eye goes first.
    let why = match &h.phase {
        Phase::Failed(e) => Some((format!("failed: {e}"), theme.error())),
        Phase::Paused(r) => Some((format!("paused: {r}"), theme.warning())),
        _ => None,
    };
    if let Some((text, style)) = why {
        frame.render_widget(
            Paragraph::new(Line::styled(clip(&text, inner.width as usize * 2), style))
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let eta = h
        .eta()
        .filter(|_| live || elsewhere)
        .map(duration)
        .unwrap_or_else(|| "-".into());
    let label = format!(
        "step {}/{} · {} tokens · elapsed {} · ETA {}",
        h.step,
        h.total_steps,
        short(h.tokens_seen as f64),
        duration(h.elapsed),
        eta
    );
    frame.render_widget(
        Gauge::default()
            .ratio(h.progress())
            .label(Span::styled(label, theme.text()))
            .gauge_style(
                ratatui::style::Style::new()
                    .fg(theme.series(0))
                    .bg(theme.selection),
            )
            .use_unicode(true),
        inner,
    );
}

fn marks(h: &RunHistory, theme: &Theme) -> Vec<Mark> {
    h.lr_marks
        .iter()
        .filter(|m| m.by == crate::train::LrSource::User)
        .map(|m| Mark {
            x: m.step as f64,
            color: theme.warning,
        })
        .chain(h.resume_marks.iter().filter(|&&s| s > 0).map(|&s| Mark {
            x: s as f64,
            color: theme.good,
        }))
        .collect()
}

fn render_loss(h: &RunHistory, theme: &Theme, frame: &mut Frame, area: Rect) {
    let series = vec![
        Series {
            name: "train".into(),
            points: h.train_loss.xy(XAxis::Step, 0.0),
            color: theme.series(0),
        },
        Series {
            name: "validation".into(),
            points: h.val_loss.xy(XAxis::Step, 0.0),
            color: theme.series(1),
        },
    ];
    let title = Line::from(vec![
        Span::styled(" loss ", theme.title()),
        Span::styled(
            "│ lr change ",
            ratatui::style::Style::new().fg(theme.warning),
        ),
        Span::styled("│ resume ", ratatui::style::Style::new().fg(theme.good)),
    ]);
    chart::draw(
        frame,
        area,
        panel(title, theme),
        &series,
        &marks(h, theme),
        "step",
        false,
        true,
        theme,
    );
}

enum Which {
    Lr,
    Throughput,
}

fn render_curve(h: &RunHistory, which: Which, theme: &Theme, frame: &mut Frame, area: Rect) {
    let (title, curve, color, m) = match which {
        Which::Lr => (
            " learning rate ",
            &h.lr_curve,
            theme.series(2),
            marks(h, theme),
        ),
        Which::Throughput => (" tokens/s ", &h.throughput, theme.series(3), Vec::new()),
    };
    let series = vec![Series {
        name: String::new(),
        points: curve.xy(XAxis::Step, 0.0),
        color,
    }];
    chart::draw(
        frame,
        area,
        panel(title, theme),
        &series,
        &m,
        "step",
        false,
        false,
        theme,
    );
}

/// Spark-line heights for the last `n` points of a curve.
fn spark(curve: &crate::tui::history::Curve, n: usize) -> Vec<u64> {
    let pts: Vec<f64> = curve.points().map(|p| p.y).collect();
    let tail = &pts[pts.len().saturating_sub(n)..];
    let (lo, hi) = tail
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    // Bars of positive numbers stand on zero: a slow cosine decay of the
    // learning rate is then the flat line it is, not a steep ramp.
    let lo = if lo >= 0.0 { 0.0 } else { lo };
    tail.iter()
        .map(|&y| {
            if hi - lo < 1e-300 {
                4
            } else {
                1 + ((y - lo) / (hi - lo) * 7.0).round() as u64
            }
        })
        .collect()
}

fn render_stats(
    app: &App,
    h: &RunHistory,
    theme: &Theme,
    frame: &mut Frame,
    area: Rect,
    with_sparks: bool,
) {
    let block = panel(" now ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let fmt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    let val = h.last_eval.as_ref().map(|(_, l, _)| *l);
    let mut rows: Vec<(String, String)> = vec![
        ("loss".into(), fmt(h.loss, &|v| format!("{v:.4}"))),
        (
            "val loss".into(),
            match (val, h.best_val_loss) {
                (Some(v), Some(b)) if (v - b).abs() < 1e-12 => format!("{v:.4} (best)"),
                (Some(v), Some(b)) => format!("{v:.3} (best {b:.3})"),
                _ => "-".into(),
            },
        ),
    ];
    // The task's scores come right after the losses: at 80x24 only the
    // first rows fit, and a fine-tuning run is judged by its metric.
    if let Some((step, _, metrics)) = &h.last_eval {
        for (k, label) in ordered_metrics(metrics.keys().map(String::as_str))
            .into_iter()
            .take(4)
        {
            let v = metric_value(k, metrics[k]);
            rows.push((clip(&label, 10), format!("{v} @{step}")));
        }
    }
    let more: Vec<(&str, String)> = vec![
        ("lr", fmt(h.lr, &|v| format!("{v:.3e}"))),
        ("grad norm", fmt(h.grad_norm, &|v| format!("{v:.3}"))),
        ("tokens/s", fmt(h.tokens_per_sec, &|v| format!("{v:.0}"))),
        ("device", clip(&h.device, 20)),
        (
            "memory",
            app.memory
                .filter(|_| app.live_run(&h.id).is_some())
                .map(|b| format!("{:.2} GiB RSS", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "params",
            if h.params > 0 {
                short(h.params as f64)
            } else {
                "-".into()
            },
        ),
        (
            "checkpoint",
            h.last_checkpoint
                .map(|s| format!("step {s}"))
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    rows.extend(more.into_iter().map(|(k, v)| (k.to_string(), v)));
    if h.warnings > 0 {
        rows.push(("warnings".into(), h.warnings.to_string()));
    }
    let spark_rows = if with_sparks { 4 } else { 0 };
    let room = (inner.height as usize).saturating_sub(spark_rows);
    let lines: Vec<Line> = rows
        .into_iter()
        .take(room)
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<11}"), theme.muted()),
                Span::styled(v, theme.text()),
            ])
        })
        .collect();
    let n_lines = lines.len() as u16;
    frame.render_widget(Paragraph::new(lines), inner);
    if with_sparks && inner.height >= n_lines + 4 {
        let w = inner.width.saturating_sub(11) as usize;
        let y = inner.y + inner.height - 4;
        for (i, (label, curve, color)) in [
            ("lr", &h.lr_curve, theme.series(2)),
            ("tokens/s", &h.throughput, theme.series(3)),
        ]
        .into_iter()
        .enumerate()
        {
            let r = Rect {
                x: inner.x,
                y: y + 2 * i as u16,
                width: inner.width,
                height: 2,
            };
            let [l, s] = Layout::horizontal([Constraint::Length(11), Constraint::Min(1)]).areas(r);
            frame.render_widget(Paragraph::new(Span::styled(label, theme.muted())), l);
            frame.render_widget(
                Sparkline::default()
                    .data(spark(curve, w))
                    .max(8)
                    .style(ratatui::style::Style::new().fg(color)),
                s,
            );
        }
    }
}

fn render_bottom(app: &App, h: &RunHistory, theme: &Theme, frame: &mut Frame, area: Rect) {
    let wide = area.width >= 140;
    let mut area = area;
    // A classification run's confusion matrix sits at the right, as wide
    // as it needs; too many labels for the room, it says so in its place.
    if let Some((step, report)) = &h.last_classification {
        // At most half the width: the samples beside it must stay readable.
        let room = area.width.saturating_sub(30).min(area.width / 2);
        // Too wide even at its narrowest: a 30-column note says so.
        let need = confusion::width(report, room).min(room).max(30);
        if area.width >= need + 30 {
            let [rest, matrix] =
                Layout::horizontal([Constraint::Min(30), Constraint::Length(need)]).areas(area);
            confusion::render(report, *step, theme, frame, matrix);
            area = rest;
        }
    }
    if wide {
        let [s, l] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .areas(area);
        render_samples(h, theme, frame, s);
        render_log(h, theme, frame, l);
    } else if app.show_log {
        render_log(h, theme, frame, area);
    } else {
        render_samples(h, theme, frame, area);
    }
}

fn render_samples(h: &RunHistory, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(" samples (Tab: log) ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if h.samples.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no samples yet: they are decoded every eval.samples_every_steps, or now with s",
                theme.muted(),
            ))
            .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let w = inner.width.saturating_sub(8) as usize;
    let mut lines = Vec::new();
    for s in &h.samples {
        lines.push(Line::from(vec![
            Span::styled("in     ", theme.muted()),
            Span::styled(clip(&s.input, w), theme.text()),
        ]));
        lines.push(Line::from(vec![
            Span::styled("target ", theme.muted()),
            Span::styled(clip(&s.target, w), theme.good()),
        ]));
        lines.push(Line::from(vec![
            Span::styled("output ", theme.muted()),
            Span::styled(clip(&s.output, w), theme.accent()),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_log(h: &RunHistory, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(" events (Tab: samples) ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let n = inner.height as usize;
    let start = h.log.len().saturating_sub(n);
    let lines: Vec<Line> = h
        .log
        .iter()
        .skip(start)
        .map(|l| {
            let style = match l.kind {
                LogKind::Info => theme.text(),
                LogKind::Good => theme.good(),
                LogKind::Warning => theme.warning(),
                LogKind::Error => theme.error(),
            };
            Line::styled(clip(&l.text, inner.width as usize), style)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
