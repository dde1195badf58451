//! Colour themes: TOML files in `themes/` (built into the binary, and
//! looked up by name or path at run time), colours as names or hex.
//! `NO_COLOR` turns every colour off; the views then tell series apart by
//! their markers.

use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The themes shipped in `themes/`, by name.
pub const BUILTIN_THEMES: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("colorblind", include_str!("../../themes/colorblind.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    colors: ColorsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColorsFile {
    foreground: String,
    background: String,
    muted: String,
    accent: String,
    border: String,
    selection: String,
    good: String,
    warning: String,
    error: String,
    series: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub fg: Color,
    pub bg: Color,
    pub muted: Color,
    pub accent: Color,
    pub border: Color,
    pub selection: Color,
    pub good: Color,
    pub warning: Color,
    pub error: Color,
    pub series: Vec<Color>,
    /// False under `NO_COLOR`: every colour is the terminal's own.
    pub colored: bool,
}

impl Theme {
    /// Parses a theme file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Theme> {
        let file: ThemeFile = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("theme {origin}: {}", e.message())))?;
        let c = &file.colors;
        let color = |key: &str, v: &str| {
            Color::from_str(v).map_err(|_| {
                Error::Invalid(format!(
                    "theme {origin}: colors.{key} = {v:?} is not a colour; use a name (red, lightblue, reset …), \"#rrggbb\" or 0-255"
                ))
            })
        };
        let series = c
            .series
            .iter()
            .map(|v| color("series", v))
            .collect::<Result<Vec<_>>>()?;
        if series.is_empty() {
            return Err(Error::Invalid(format!(
                "theme {origin}: colors.series is empty; give at least one colour"
            )));
        }
        Ok(Theme {
            name: file.name,
            fg: color("foreground", &c.foreground)?,
            bg: color("background", &c.background)?,
            muted: color("muted", &c.muted)?,
            accent: color("accent", &c.accent)?,
            border: color("border", &c.border)?,
            selection: color("selection", &c.selection)?,
            good: color("good", &c.good)?,
            warning: color("warning", &c.warning)?,
            error: color("error", &c.error)?,
            series,
            colored: true,
        })
    }

    /// A built-in theme by name, or a theme file by path.
    pub fn load(name_or_path: &str) -> Result<Theme> {
        if let Some((_, text)) = BUILTIN_THEMES.iter().find(|(n, _)| *n == name_or_path) {
            return Theme::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            return Theme::parse(&text, &path.display().to_string());
        }
        Err(Error::Invalid(format!(
            "no theme {name_or_path:?}: the built-in ones are {}, or give a theme file's path",
            builtin_names().join(", ")
        )))
    }

    pub fn builtin(name: &str) -> Theme {
        Theme::load(name).unwrap_or_else(|_| Theme::monochrome())
    }

    /// Every colour the terminal's default: for `NO_COLOR`.
    pub fn monochrome() -> Theme {
        Theme {
            name: "no-color".into(),
            fg: Color::Reset,
            bg: Color::Reset,
            muted: Color::Reset,
            accent: Color::Reset,
            border: Color::Reset,
            selection: Color::Reset,
            good: Color::Reset,
            warning: Color::Reset,
            error: Color::Reset,
            series: vec![Color::Reset],
            colored: false,
        }
    }

    /// Whether the environment asks for no colour (`NO_COLOR` set and not empty).
    pub fn no_color_requested() -> bool {
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
    }

    pub fn text(&self) -> Style {
        Style::new().fg(self.fg).bg(self.bg)
    }

    pub fn muted(&self) -> Style {
        if self.colored {
            Style::new().fg(self.muted)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }

    pub fn accent(&self) -> Style {
        Style::new().fg(self.accent).add_modifier(Modifier::BOLD)
    }

    pub fn border(&self) -> Style {
        Style::new().fg(self.border)
    }

    pub fn title(&self) -> Style {
        Style::new().fg(self.accent).add_modifier(Modifier::BOLD)
    }

    /// The selected row of a list or table.
    pub fn selected(&self) -> Style {
        if self.colored {
            Style::new().bg(self.selection).add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::REVERSED)
        }
    }

    pub fn good(&self) -> Style {
        Style::new().fg(self.good)
    }

    pub fn warning(&self) -> Style {
        Style::new().fg(self.warning).add_modifier(if self.colored {
            Modifier::empty()
        } else {
            Modifier::BOLD
        })
    }

    pub fn error(&self) -> Style {
        Style::new().fg(self.error).add_modifier(Modifier::BOLD)
    }

    /// The colour of the `i`-th series.
    pub fn series(&self, i: usize) -> Color {
        self.series[i % self.series.len()]
    }
}

/// The UI's own settings file in the run store's root: the theme chosen
/// with the `t` key, kept for the next launch.
pub const SETTINGS_FILE: &str = "ui.toml";

#[derive(Debug, Default, serde::Serialize, Deserialize)]
struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    theme: Option<String>,
}

/// The theme saved in `root/ui.toml`, if any (an unreadable file is no choice).
pub fn saved_theme(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(SETTINGS_FILE)).ok()?;
    toml::from_str::<Settings>(&text).ok()?.theme
}

/// Saves the chosen theme for the next launch.
pub fn save_theme(root: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let text = toml::to_string(&Settings {
        theme: Some(name.to_string()),
    })
    .map_err(|e| Error::Other(e.to_string()))?;
    crate::fsutil::write_atomic(&root.join(SETTINGS_FILE), text.as_bytes())
}

pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN_THEMES.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_theme_parses_and_matches_its_file() {
        for (name, text) in BUILTIN_THEMES {
            let t = Theme::parse(text, name).unwrap();
            assert_eq!(t.name, *name);
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("themes")
                .join(format!("{name}.toml"));
            assert_eq!(std::fs::read_to_string(path).unwrap(), *text);
        }
    }

    #[test]
    fn names_and_hex_both_work_and_a_bad_colour_is_named() {
        let good = BUILTIN_THEMES[0].1.replace("\"#5fafff\"", "\"lightblue\"");
        let t = Theme::parse(&good, "x").unwrap();
        assert_eq!(t.accent, Color::LightBlue);
        assert_eq!(t.fg, Color::Rgb(0xd0, 0xd0, 0xd0));
        let bad = BUILTIN_THEMES[0]
            .1
            .replace("\"#4e4e4e\"", "\"not-a-colour\"");
        let e = Theme::parse(&bad, "mine.toml").unwrap_err().to_string();
        assert!(
            e.contains("mine.toml") && e.contains("colors.border"),
            "{e}"
        );
        assert!(Theme::load("no-such-theme").is_err());
    }

    #[test]
    fn the_chosen_theme_is_kept_for_the_next_launch() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_theme(dir.path()), None);
        save_theme(dir.path(), "light").unwrap();
        assert_eq!(saved_theme(dir.path()).as_deref(), Some("light"));
    }
}
