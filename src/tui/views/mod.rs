//! Drawing: each screen borrows the `App` and draws; nothing here changes
//! state. The footer always shows the screen's main keys; `?` shows all.

mod chart;
mod compare;
mod confusion;
mod dashboard;
mod editor;
mod runs;

pub use chart::short;

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Modal, Screen};
use super::theme::Theme;

/// The smallest terminal the layout is made for.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let theme = &app.theme;
    frame.render_widget(Block::new().style(theme.text()), area);
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = Text::from(vec![
            Line::styled("t5-tui needs a terminal of at least 80x24", theme.warning()),
            Line::from(format!("this one is {}x{}", area.width, area.height)),
            Line::styled("enlarge it, or press q to quit", theme.muted()),
        ]);
        let h = 3.min(area.height);
        let r = Rect {
            y: area.y + area.height.saturating_sub(h) / 2,
            height: h,
            ..area
        };
        frame.render_widget(Paragraph::new(text).centered().wrap(Wrap { trim: true }), r);
        return;
    }
    let [body, footer] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(area);
    match app.screen {
        Screen::Runs => runs::render(app, frame, body),
        Screen::Editor => editor::render(app, frame, body),
        Screen::Dashboard => dashboard::render(app, frame, body),
        Screen::Compare => compare::render(app, frame, body),
    }
    render_footer(app, frame, footer);
    if let Some(modal) = &app.modal {
        render_modal(app, modal, frame, area);
    }
}

/// The main keys of each screen, as `(key, what)`.
pub fn footer_keys(app: &App) -> Vec<(&'static str, &'static str)> {
    match app.screen {
        Screen::Runs => vec![
            ("Enter", "open"),
            ("n", "new"),
            ("Space", "mark"),
            ("c", "compare"),
            ("r", "resume"),
            ("/", "filter"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Screen::Editor => {
            let typing = app.editor.as_ref().is_some_and(|e| e.entry.is_some());
            if typing {
                vec![("Enter", "keep"), ("Esc", "cancel"), ("Ctrl-U", "clear")]
            } else {
                vec![
                    ("Enter", "edit"),
                    ("s", "start run"),
                    ("w", "save"),
                    ("/", "find"),
                    ("u", "default"),
                    ("Esc", "back"),
                    ("?", "help"),
                ]
            }
        }
        Screen::Dashboard => vec![
            ("+/-", "lr"),
            ("L", "set lr"),
            ("p", "pause"),
            ("s", "sample"),
            ("c", "checkpoint"),
            ("x", "stop"),
            ("Esc", "runs"),
            ("?", "help"),
        ],
        Screen::Compare => vec![
            ("x", "x-axis"),
            ("l", "log y"),
            ("[ ]", "smooth"),
            ("v", "train/val"),
            ("Tab", "table"),
            ("Esc", "runs"),
            ("?", "help"),
        ],
    }
}

/// Every key of a screen, for the help overlay.
pub fn help_keys(screen: Screen) -> Vec<(&'static str, &'static str)> {
    let mut keys = match screen {
        Screen::Runs => vec![
            ("Up/Down, j/k", "move"),
            ("g / G", "first / last run"),
            (
                "Enter, l",
                "open the run's dashboard (the demo, with no runs)",
            ),
            ("n", "new experiment from a demo, preset or config file"),
            ("e", "edit a copy of the run's config"),
            ("Space", "mark the run for comparison"),
            ("c", "compare the marked runs"),
            ("r", "resume a stopped or crashed run"),
            ("d, Delete", "delete the run (asks first)"),
            ("/", "filter by name, id or status; Esc clears"),
            ("R, F5", "re-read the run list"),
        ],
        Screen::Editor => vec![
            ("Up/Down, j/k", "move; PgUp/PgDn by ten"),
            ("Tab", "next section"),
            ("Enter, i", "edit the field (Enter keeps, Esc cancels)"),
            ("Ctrl-U / Ctrl-W", "clear the entry / delete a word"),
            ("u, Delete", "reset the field to its default"),
            ("/", "find fields by name"),
            ("s, F5", "start the run (when every field is valid)"),
            ("w", "save the config as a TOML file"),
            ("Esc", "back to the runs"),
        ],
        Screen::Dashboard => vec![
            ("+ / -", "learning rate x1.25 / /1.25 from the next step"),
            ("L", "set an exact learning rate"),
            ("p", "pause / resume"),
            ("s", "decode samples now"),
            ("c", "write a checkpoint now"),
            ("x", "stop (finish the step, checkpoint; asks first)"),
            ("Tab", "samples or event log (small terminals)"),
            ("Esc, h", "back to the runs (the run keeps training)"),
        ],
        Screen::Compare => vec![
            ("x", "x-axis: step, tokens seen, training time"),
            ("l", "log-scale y"),
            ("[ / ]", "less / more smoothing (EMA, as TensorBoard)"),
            ("v", "training or validation loss"),
            (
                "Tab",
                "hyperparameters, metrics or samples (small terminals)",
            ),
            ("Esc, h", "back to the runs"),
        ],
    };
    keys.extend([
        ("t", "next colour theme"),
        ("?", "this help"),
        ("q, Ctrl-C", "quit (asks what to do with a training run)"),
    ]);
    keys
}

fn render_footer(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let mut spans = Vec::new();
    if let Some((text, is_error)) = &app.status {
        let style = if *is_error {
            theme.error()
        } else {
            theme.good()
        };
        spans.push(Span::styled(format!(" {text} "), style));
        spans.push(Span::styled("│", theme.border()));
    }
    for (k, what) in footer_keys(app) {
        spans.push(Span::styled(format!(" {k}"), theme.accent()));
        spans.push(Span::styled(format!(" {what}"), theme.muted()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A box of `width` x `height` in the middle of `area`.
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [r] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(r);
    r
}

pub fn panel<'a>(title: impl Into<Line<'a>>, theme: &Theme) -> Block<'a> {
    Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(theme.border())
        .title(title.into().style(theme.title()))
}

fn render_modal(app: &App, modal: &Modal, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let (title, lines, width): (&str, Vec<Line>, u16) = match modal {
        Modal::Help => {
            let keys = help_keys(app.screen);
            let lines = keys
                .iter()
                .map(|(k, what)| {
                    Line::from(vec![
                        Span::styled(format!("{k:>16}  "), theme.accent()),
                        Span::styled(*what, theme.text()),
                    ])
                })
                .chain([
                    Line::from(""),
                    Line::styled("any key closes this", theme.muted()),
                ])
                .collect();
            ("Keys", lines, 76)
        }
        Modal::Confirm { message, .. } => (
            "Confirm",
            vec![
                Line::from(message.as_str()),
                Line::from(""),
                Line::from(vec![
                    Span::styled("y", theme.accent()),
                    Span::raw(" yes   "),
                    Span::styled("n", theme.accent()),
                    Span::raw(" no"),
                ]),
            ],
            60,
        ),
        Modal::QuitTraining => (
            "A run is training",
            vec![
                Line::from("Quit while a run trains:"),
                Line::from(""),
                Line::from(vec![
                    Span::styled("s", theme.accent()),
                    Span::raw("  stop it (it finishes its step and writes a checkpoint)"),
                ]),
                Line::from(vec![
                    Span::styled("k", theme.accent()),
                    Span::raw("  keep it training here, with plain progress lines"),
                ]),
                Line::from(vec![
                    Span::styled("Esc", theme.accent()),
                    Span::raw(" stay in the UI"),
                ]),
            ],
            66,
        ),
        Modal::Input {
            prompt,
            buffer,
            error,
            ..
        } => {
            let mut lines = vec![
                Line::from(prompt.as_str()),
                Line::from(vec![
                    Span::styled("> ", theme.accent()),
                    Span::styled(buffer.as_str(), theme.text()),
                    Span::styled("▏", theme.accent()),
                ]),
            ];
            if let Some(e) = error {
                lines.push(Line::styled(e.as_str(), theme.error()));
            }
            lines.push(Line::styled("Enter accepts, Esc cancels", theme.muted()));
            ("Enter a value", lines, 66)
        }
        Modal::Picker { items, selected } => {
            let lines = items
                .iter()
                .enumerate()
                .map(|(i, (label, _))| {
                    let style = if i == *selected {
                        theme.selected()
                    } else {
                        theme.text()
                    };
                    Line::styled(format!(" {label} "), style)
                })
                .collect();
            ("New experiment from", lines, 50)
        }
    };
    let height = (lines.len() as u16 + 2).min(area.height);
    let r = centered(area, width, height);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines)
            .block(panel(format!(" {title} "), theme))
            .style(theme.text())
            .wrap(Wrap { trim: false }),
        r,
    );
}

pub use crate::runs::utc_date;

/// `3725` → `1h02m`, `65` → `1m05s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs.round() as u64;
    if s >= 86_400 {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Cuts `s` to `n` characters, with an ellipsis when cut.
/// The metrics an eval event may carry, in the order a reader looks for
/// them (the task's headline score first, the generic ones last), with
/// their short names. Metrics not listed follow, by name.
const METRICS: &[(&str, &str)] = &[
    ("bleu", "BLEU"),
    ("chrf", "chrF"),
    ("bleu_char", "BLEU char"),
    ("rougeL", "ROUGE-L"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeLsum", "ROUGE-Lsum"),
    ("f1", "F1"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("micro_f1", "micro F1"),
    ("invalid", "invalid"),
    ("macro_precision", "macro P"),
    ("macro_recall", "macro R"),
    ("exact_match", "exact match"),
    ("token_accuracy", "token acc"),
    ("gen_len", "gen len"),
    ("gen_chars", "gen chars"),
];

/// `names` in reading order (see [`METRICS`]), each with its short name.
pub fn ordered_metrics<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, String)> {
    let rank = |k: &str| {
        METRICS
            .iter()
            .position(|(m, _)| *m == k)
            .unwrap_or(METRICS.len())
    };
    let mut v: Vec<&str> = names.into_iter().collect();
    v.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    v.dedup();
    v.into_iter()
        .map(|k| {
            let label = METRICS
                .iter()
                .find(|(m, _)| *m == k)
                .map_or_else(|| k.replace('_', " "), |(_, l)| (*l).to_string());
            (k, label)
        })
        .collect()
}

/// A metric's value as the views print it: counts whole, scores to 0.01.
pub fn metric_value(key: &str, v: f64) -> String {
    if key == "invalid" {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_clipping() {
        assert_eq!(duration(65.0), "1m05s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
