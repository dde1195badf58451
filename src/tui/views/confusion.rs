//! A classification run's confusion matrix as a small heat table: a row
//! for each target label, a column for each output label and one for
//! outputs that are no label (`inv`), and each label's F1. A cell is shaded
//! by its share of the row (where that label's examples went), so a model
//! that is right lights up the diagonal whatever the label counts.
//! Without colour (`NO_COLOR`) the shading becomes plain, dim and reversed
//! text; the counts are always written.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::{clip, panel};
use crate::metrics::ClassificationReport;
use crate::tui::theme::Theme;

/// The widest a row label is drawn.
const LABEL_WIDTH: usize = 10;
/// The F1 column: a space and `100.0`.
const F1_WIDTH: usize = 6;

/// Column widths, the row labels' and each count cell's, for a table at
/// most `room` columns wide inside its borders: cells as wide as the
/// labels when that fits (`negati…` and `neutral` tell apart where `ne…`
/// and `ne…` would not), narrower down to three characters when not.
fn columns(r: &ClassificationReport, room: usize) -> (usize, usize) {
    let longest = r
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let label = longest.clamp(3, LABEL_WIDTH);
    let digits = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |n| n.to_string().len());
    let k = r.labels.len() + 1;
    let narrowest = digits.max(3);
    let mut inside = longest.clamp(narrowest, LABEL_WIDTH);
    while inside > narrowest && label + k * (inside + 1) + F1_WIDTH > room {
        inside -= 1;
    }
    (label, inside + 1)
}

/// The width the table takes, borders included, given at most `room`
/// columns; more than `room` when even its narrowest form does not fit.
pub fn width(r: &ClassificationReport, room: u16) -> u16 {
    let (label, cell) = columns(r, (room as usize).saturating_sub(2));
    (label + (r.labels.len() + 1) * cell + F1_WIDTH + 2) as u16
}

/// A cell's style for `share` (0..=1) of its row; `bad` cells (outputs
/// that are no label) heat towards the theme's error colour.
pub fn heat(theme: &Theme, share: f64, bad: bool) -> Style {
    if share <= 0.0 {
        return theme.muted();
    }
    if !theme.colored {
        return if share >= 0.5 {
            Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
        } else {
            Style::new()
        };
    }
    let hot = if bad { theme.error } else { theme.series(0) };
    match (theme.selection, hot) {
        (Color::Rgb(r0, g0, b0), Color::Rgb(r1, g1, b1)) => {
            // A quarter of the way at the least, so that one example in a
            // thousand still shows.
            let t = 0.25 + 0.75 * share.min(1.0);
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
            let (r, g, b) = (mix(r0, r1), mix(g0, g1), mix(b0, b1));
            let luminance = (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64) / 255.0;
            let fg = if luminance > 0.5 {
                Color::Black
            } else {
                Color::White
            };
            Style::new().fg(fg).bg(Color::Rgb(r, g, b))
        }
        // Named or palette colours cannot be mixed: two steps.
        _ if share >= 0.5 => Style::new().fg(Color::Black).bg(hot),
        _ => Style::new().fg(theme.fg).bg(theme.selection),
    }
}

pub fn render(r: &ClassificationReport, step: u64, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(format!(" confusion @{step} "), theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let (lw, cw) = columns(r, inner.width as usize);
    if inner.width < width(r, area.width) - 2 || inner.height < 2 {
        // Too many labels for the room: the numbers that matter, in words.
        let text = format!(
            "{} labels, too many to draw here: accuracy {:.1}, macro F1 {:.1}, {} invalid; `t5-tui eval` prints the matrix",
            r.labels.len(),
            r.accuracy,
            r.macro_avg.f1,
            r.invalid
        );
        frame.render_widget(
            Paragraph::new(Line::styled(text, theme.muted())).wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let mut header = vec![Span::styled(
        format!("{:<lw$}", clip("tgt\\out", lw)),
        theme.muted(),
    )];
    for l in &r.labels {
        header.push(Span::styled(
            format!("{:>cw$}", clip(l, cw - 1)),
            theme.muted(),
        ));
    }
    header.push(Span::styled(format!("{:>cw$}", "inv"), theme.muted()));
    header.push(Span::styled(format!("{:>F1_WIDTH$}", "F1"), theme.muted()));
    let mut lines = vec![Line::from(header)];
    let room = inner.height as usize - 1;
    let k = r.labels.len();
    // One line says how many rows did not fit, when some do not.
    let shown = if k > room { room.saturating_sub(1) } else { k };
    for (i, row) in r.confusion.iter().enumerate().take(shown) {
        let total: u64 = row.iter().sum();
        let mut spans = vec![Span::styled(
            format!("{:<lw$}", clip(&r.labels[i], lw)),
            theme.text(),
        )];
        for (j, &n) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            let style = heat(theme, share, j == k);
            // The space before the count stays unshaded: cells read apart.
            spans.push(Span::raw(" "));
            spans.push(Span::styled(format!("{n:>w$}", w = cw - 1), style));
        }
        let f1 = r.per_label.get(i).map_or(0.0, |l| l.scores.f1);
        spans.push(Span::styled(format!("{f1:>F1_WIDTH$.1}"), theme.text()));
        lines.push(Line::from(spans));
    }
    if shown < k {
        lines.push(Line::styled(
            format!("… {} more labels", k - shown),
            theme.muted(),
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_grows_with_the_share_and_degrades_without_colour() {
        let dark = Theme::builtin("dark");
        let (low, high) = (heat(&dark, 0.1, false), heat(&dark, 0.9, false));
        assert_ne!(low.bg, high.bg);
        assert_eq!(heat(&dark, 0.0, false), dark.muted());
        assert_ne!(heat(&dark, 0.9, true).bg, high.bg, "invalid heats red");
        let mono = Theme::monochrome();
        for share in [0.0, 0.3, 1.0] {
            let s = heat(&mono, share, false);
            assert_eq!(s.fg.unwrap_or(Color::Reset), Color::Reset);
            assert_eq!(s.bg.unwrap_or(Color::Reset), Color::Reset);
        }
        assert!(heat(&mono, 1.0, false)
            .add_modifier
            .contains(Modifier::REVERSED));
    }
}
