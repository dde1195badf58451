//! The home screen: every run in the store, newest first.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use super::{clip, panel, short, utc_date};
use crate::runs::RunStatus;
use crate::tui::app::App;
use crate::tui::theme::Theme;

fn status_style(s: RunStatus, theme: &Theme) -> ratatui::style::Style {
    match s {
        RunStatus::Running => theme.accent(),
        RunStatus::Finished => theme.good(),
        RunStatus::Stopped | RunStatus::New => theme.text(),
        RunStatus::Crashed => theme.warning(),
        RunStatus::Failed => theme.error(),
    }
}

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let list = &app.runs;
    let visible = list.visible();
    let title = format!(
        " t5-tui · runs ({}{}) · {} ",
        visible.len(),
        if visible.len() != list.all.len() {
            format!(" of {}", list.all.len())
        } else {
            String::new()
        },
        app.store.root().display()
    );
    let block = panel(title, theme);
    let [top, main] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(block.inner(area));
    frame.render_widget(block, area);

    let filter = if list.filtering || !list.filter.is_empty() {
        Line::from(vec![
            Span::styled(" filter: ", theme.muted()),
            Span::styled(list.filter.clone(), theme.accent()),
            Span::styled(if list.filtering { "▏" } else { "" }, theme.accent()),
        ])
    } else if !list.marked.is_empty() {
        Line::styled(
            format!(
                " {} marked for comparison: press c to compare",
                list.marked.len()
            ),
            theme.muted(),
        )
    } else {
        Line::styled(
            " type / to filter, Space to mark runs for comparison",
            theme.muted(),
        )
    };
    frame.render_widget(Paragraph::new(filter), top);

    if let Some(e) = &list.error {
        frame.render_widget(
            Paragraph::new(Line::styled(e.clone(), theme.error())).wrap(Wrap { trim: true }),
            main,
        );
        return;
    }
    if list.all.is_empty() {
        let lines = vec![
            Line::from(""),
            Line::styled("No runs yet.", theme.title()),
            Line::from(""),
            Line::from(vec![
                Span::raw("Press "),
                Span::styled("Enter", theme.accent()),
                Span::raw(" to open the demo experiment: t5-tiny pre-trained with"),
            ]),
            Line::from("span corruption on the built-in Tanaka sentences (no download)."),
            Line::from(vec![
                Span::raw("Press "),
                Span::styled("n", theme.accent()),
                Span::raw(" to start from another preset or a config file."),
            ]),
        ];
        frame.render_widget(Paragraph::new(lines).centered(), main);
        return;
    }
    let wide = main.width >= 110;
    let header = Row::new(
        [
            "",
            "run",
            "status",
            "steps",
            "best val",
            "tokens/s",
            if wide { "started (UTC)" } else { "UTC" },
        ]
        .into_iter()
        .map(|h| Cell::from(h).style(theme.muted())),
    );
    let rows: Vec<Row> = visible
        .iter()
        .map(|r| {
            let mark = if list.marked.contains(&r.id) {
                "●"
            } else {
                " "
            };
            let name = if wide {
                format!("{}  {}", r.name, r.id)
            } else {
                r.id.clone()
            };
            let name = match &r.problem {
                Some(p) => format!("{name}  ⚠ {p}"),
                None => name,
            };
            Row::new(vec![
                Cell::from(mark).style(theme.accent()),
                Cell::from(clip(&name, if wide { 80 } else { 40 })),
                Cell::from(r.status.as_str()).style(status_style(r.status, theme)),
                Cell::from(r.steps.to_string()),
                Cell::from(
                    r.best_val_loss
                        .map(|l| format!("{l:.4}"))
                        .unwrap_or("-".into()),
                ),
                Cell::from(r.tokens_per_sec.map(short).unwrap_or("-".into())),
                Cell::from(
                    r.started
                        .map(|t| {
                            let d = utc_date(t);
                            // 80 columns: the year goes, the run's name stays.
                            if wide {
                                d
                            } else {
                                d[5..].to_string()
                            }
                        })
                        .unwrap_or("-".into()),
                ),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(1),
        Constraint::Min(20),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(if wide { 16 } else { 11 }),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(theme.selected());
    let mut state = TableState::default().with_selected(Some(list.selected));
    frame.render_stateful_widget(table, main, &mut state);
}
