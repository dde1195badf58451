//! The experiment editor: the form, the selected field's help and error.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::{clip, panel};
use crate::tui::app::App;

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let Some(ed) = &app.editor else {
        return;
    };
    let invalid = ed.fields.iter().filter(|f| f.error.is_some()).count();
    let title = format!(
        " editor · {} {}",
        ed.origin,
        if invalid > 0 {
            format!("· {invalid} invalid ")
        } else {
            "· ready to start ".into()
        }
    );
    let block = panel(title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [top, list_area, help_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(inner);

    let top_line = if ed.filtering || !ed.filter.is_empty() {
        Line::from(vec![
            Span::styled(" find: ", theme.muted()),
            Span::styled(ed.filter.clone(), theme.accent()),
            Span::styled(if ed.filtering { "▏" } else { "" }, theme.accent()),
        ])
    } else {
        Line::styled(
            " Enter edits a field · values are TOML (3e-4, true, [\"a\", \"b\"]); words need no quotes",
            theme.muted(),
        )
    };
    frame.render_widget(Paragraph::new(top_line), top);

    let key_width = 32usize.min(list_area.width as usize / 2);
    let value_width = (list_area.width as usize).saturating_sub(key_width + 4);
    let mut items = Vec::new();
    let mut selected_row = 0;
    let mut last_section: Option<&str> = None;
    for i in ed.visible() {
        let f = &ed.fields[i];
        if last_section != Some(f.section.as_str()) {
            let name = if f.section.is_empty() {
                "experiment".to_string()
            } else {
                format!("[{}]", f.section)
            };
            items.push(ListItem::new(Line::styled(name, theme.title())));
            last_section = Some(f.section.as_str());
        }
        if i == ed.selected {
            selected_row = items.len();
        }
        let value_span = match (&ed.entry, i == ed.selected) {
            (Some(buf), true) => Span::styled(format!("{buf}▏"), theme.accent()),
            _ if f.value.is_empty() => Span::styled("(unset)", theme.muted()),
            _ => Span::styled(clip(&f.value, value_width), theme.text()),
        };
        let marker = if f.error.is_some() {
            Span::styled("✗ ", theme.error())
        } else if f.edited {
            Span::styled("* ", theme.accent())
        } else {
            Span::raw("  ")
        };
        let key_style = if f.error.is_some() {
            theme.error()
        } else {
            theme.text()
        };
        items.push(ListItem::new(Line::from(vec![
            marker,
            Span::styled(
                format!("{:<w$}", clip(&f.key, key_width), w = key_width),
                key_style,
            ),
            Span::raw(" "),
            value_span,
        ])));
    }
    let list = List::new(items).highlight_style(theme.selected());
    let mut state = ListState::default().with_selected(Some(selected_row));
    frame.render_stateful_widget(list, list_area, &mut state);

    let f = &ed.fields[ed.selected];
    let mut help = vec![Line::from(vec![
        Span::styled(f.path(), theme.accent()),
        Span::styled(": ", theme.muted()),
        Span::styled(f.help, theme.text()),
    ])];
    help.push(Line::from(vec![
        Span::styled("default ", theme.muted()),
        Span::styled(
            if f.default.is_empty() {
                "(unset)".to_string()
            } else {
                f.default.clone()
            },
            theme.text(),
        ),
    ]));
    if let Some(e) = &f.error {
        help.push(Line::styled(format!("✗ {e}"), theme.error()));
    }
    frame.render_widget(Paragraph::new(help).wrap(Wrap { trim: true }), help_area);
}
