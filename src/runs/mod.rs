//! The run store: every training run as a folder on disk.
//!
//! ```text
//! <root>/runs/<run-id>/config.toml     the full, resolved config it was started with
//! <root>/runs/<run-id>/events.jsonl    one TrainEvent a line, flushed as it happens
//! <root>/runs/<run-id>/tokenizer.json
//! <root>/runs/<run-id>/checkpoints/step-<N>/   model, optimizer, state, COMPLETE
//! <root>/runs/<run-id>/export/         a Hugging Face checkpoint, on request
//! <root>/runs/<run-id>/lock            held (flock) by the process training it
//! ```
//!
//! The root is `$T5_TUI_HOME` when set (tests and scripts use it so they never
//! touch the real home), else the platform data folder (`~/.local/share/t5-tui`
//! on Linux). Run ids are `<YYYYMMDD-HHMMSS>-<slug of the name>` in UTC, with
//! `-2`, `-3` … added when taken; a name or id from a user is never a path,
//! so nothing escapes `runs/`.
//!
//! Everything about a run is derived from its folder: its status from its
//! lock and its events, its progress from `events.jsonl`, its checkpoints
//! from the complete `step-<N>` folders. A half-written folder or a torn
//! event log shows up as the summary's `problem`, never as an error of the
//! whole listing.

mod checkpoint;
pub mod fault;
mod lock;
mod log;
mod summary;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub use checkpoint::COMPLETE_MARKER;
pub use lock::RunLock;
pub use log::{parse_event_line, parse_events, read_events, EventLog, EventSink, EventsRead};
pub use summary::{RunStatus, RunSummary};

/// The environment variable that moves the store's root (tests, scripts).
pub const HOME_ENV: &str = "T5_TUI_HOME";

/// The longest slug a run id takes from a run's name.
const MAX_SLUG_LEN: usize = 48;

/// All runs under one root: `<root>/runs/<run-id>/`.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

impl RunStore {
    /// The store under `$T5_TUI_HOME` when set and not empty, else under the
    /// platform data folder.
    pub fn open_default() -> Result<RunStore> {
        if let Some(home) = std::env::var_os(HOME_ENV) {
            if !home.is_empty() {
                return Ok(RunStore::at(PathBuf::from(home)));
            }
        }
        let dirs = directories::ProjectDirs::from("", "", "t5-tui").ok_or_else(|| {
            Error::Other(format!(
                "no home folder found to keep runs in; set {HOME_ENV} to a folder"
            ))
        })?;
        Ok(RunStore::at(dirs.data_dir()))
    }

    /// The store under `root` (runs live in `root/runs/`). Nothing is
    /// created until a run is.
    pub fn at(root: impl Into<PathBuf>) -> RunStore {
        RunStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/runs`.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Creates a new run named `name` with its resolved config: the run
    /// folder, `config.toml` (written atomically), `checkpoints/` and
    /// `export/`. The id is `<YYYYMMDD-HHMMSS>-<slug>` (UTC), made unique.
    pub fn create(&self, name: &str, config_toml: &str) -> Result<Run> {
        check_name(name)?;
        let runs = self.runs_dir();
        std::fs::create_dir_all(&runs).map_err(|e| Error::io(&runs, e))?;
        let base = format!("{}-{}", utc_stamp(std::time::SystemTime::now()), slug(name));
        let mut n = 1u32;
        let (id, dir) = loop {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let dir = runs.join(&id);
            // `create_dir` (not `_all`) fails when the folder exists, so two
            // processes creating runs at the same second never share one.
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => return Err(Error::io(&dir, e)),
            }
        };
        let run = Run { id, dir };
        for sub in [run.checkpoints_dir(), run.export_dir()] {
            std::fs::create_dir(&sub).map_err(|e| Error::io(&sub, e))?;
        }
        // The config last: a folder with a config.toml is a whole run.
        write_atomic(&run.config_path(), config_toml.as_bytes())?;
        let _ = checkpoint::sync_dir(&runs);
        Ok(run)
    }

    /// The run with this id. The id must be a plain folder name (no path
    /// separators, no `..`), and the run must exist.
    pub fn open(&self, id: &str) -> Result<Run> {
        check_id(id)?;
        let dir = self.runs_dir().join(id);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Run {
                id: id.to_string(),
                dir,
            }),
            Ok(_) => Err(Error::Invalid(format!(
                "{} is not a run folder",
                dir.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Invalid(format!(
                "no run {id} in {}; `t5-tui runs` lists the runs there",
                self.runs_dir().display()
            ))),
            Err(e) => Err(Error::io(&dir, e)),
        }
    }

    /// Every run, newest first, each summarised from its folder. A broken
    /// run (no config, a torn event log, unreadable files) is listed with
    /// its `problem`; stray files and hidden folders under `runs/` are
    /// skipped. Only a `runs/` folder that cannot be read is an error; a
    /// missing one is an empty store.
    pub fn list(&self) -> Result<Vec<RunSummary>> {
        let runs = self.runs_dir();
        let entries = match std::fs::read_dir(&runs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&runs, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            if check_id(&id).is_err() {
                continue;
            }
            // Follows symlinks: a run folder linked in from elsewhere counts.
            if !entry.path().is_dir() {
                continue;
            }
            let run = Run {
                id,
                dir: entry.path(),
            };
            out.push(run.summary());
        }
        out.sort_by(|a, b| {
            let ta = a.started.unwrap_or(f64::NEG_INFINITY);
            let tb = b.started.unwrap_or(f64::NEG_INFINITY);
            tb.total_cmp(&ta).then_with(|| b.id.cmp(&a.id))
        });
        Ok(out)
    }

    /// Deletes a run and everything in it. Refused while a process holds
    /// the run's lock.
    pub fn remove(&self, id: &str) -> Result<()> {
        let run = self.open(id)?;
        let lock = run.lock()?;
        // Out of the listing at once (hidden name), then deleted.
        let trash = self
            .runs_dir()
            .join(format!(".removing-{}-{}", run.id, std::process::id()));
        let target = match std::fs::rename(&run.dir, &trash) {
            Ok(()) => trash,
            Err(_) => run.dir.clone(),
        };
        drop(lock);
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))
    }
}

/// One run's folder. Cheap to make and clone: it holds only paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    id: String,
    dir: PathBuf,
}

impl Run {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    pub fn export_dir(&self) -> PathBuf {
        self.dir.join("export")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// The run's name: `name` in its config.toml, else the slug in its id.
    pub fn name(&self) -> String {
        std::fs::read_to_string(self.config_path())
            .ok()
            .and_then(|text| config_name(&text))
            .unwrap_or_else(|| name_from_id(&self.id))
    }

    /// The run's config.toml as written.
    pub fn read_config(&self) -> Result<String> {
        let path = self.config_path();
        std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
    }

    /// Opens `events.jsonl` for appending (creating it). Hold the run's
    /// [`RunLock`] while writing.
    pub fn event_log(&self) -> Result<EventLog> {
        EventLog::open(&self.events_path())
    }

    /// The run's events so far; none when it has no `events.jsonl` yet.
    pub fn read_events(&self) -> Result<EventsRead> {
        let path = self.events_path();
        if !path.exists() {
            return Ok(EventsRead::default());
        }
        read_events(&path)
    }
}

/// Refuses a run name that looks like a path or holds control characters.
fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::Invalid(
            "a run needs a name, e.g. \"tiny-wiki\"".to_string(),
        ));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "run name {name:?} contains a path separator or a control character; \
             a run name is a plain name such as \"tiny-wiki\""
        )));
    }
    if name.chars().all(|c| c == '.') {
        return Err(Error::Invalid(format!(
            "run name {name:?} is not a name; use letters or digits, e.g. \"tiny-wiki\""
        )));
    }
    Ok(())
}

/// Refuses an id that is not a plain folder name under `runs/`.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not a run id: a run id is a folder name under runs/ such as \
             20261203-141500-tiny-wiki (letters, digits, '-', '_', '.'), never a path"
        )))
    }
}

/// Lowercase ASCII letters and digits of `name`, every other run of
/// characters one '-', trimmed; "run" when nothing is left.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if s.len() >= MAX_SLUG_LEN {
                break;
            }
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        "run".to_string()
    } else {
        s.to_string()
    }
}

/// The name part of an id made by [`RunStore::create`], or the id itself.
fn name_from_id(id: &str) -> String {
    let b = id.as_bytes();
    let stamped = b.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-';
    if stamped {
        id[16..].to_string()
    } else {
        id.to_string()
    }
}

/// `name = "…"` at the top of a config, if there is one.
fn config_name(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("name")?.as_str().map(str::to_string)
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Seconds since the epoch as `2026-12-03 21:20` (UTC), for listings.
pub fn utc_date(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let secs = secs as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(0.0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400.0), "2000-02-29 00:00");
        assert_eq!(utc_date(1_796_333_000.0), "2026-12-03 21:23");
        assert_eq!(utc_date(f64::NAN), "-");
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Tiny Wiki"), "tiny-wiki");
        assert_eq!(slug("  --a__b--  "), "a-b");
        assert_eq!(slug("日本語"), "run");
        assert_eq!(slug("t5-small v1.1"), "t5-small-v1-1");
        assert_eq!(slug(&"x".repeat(100)).len(), MAX_SLUG_LEN);
    }

    #[test]
    fn stamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(0);
        assert_eq!(utc_stamp(t), "19700101-000000");
        // 2024-02-29 13:45:07 UTC
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_214_307);
        assert_eq!(utc_stamp(t), "20240229-134507");
        // 2026-12-31 23:59:59 UTC
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_599);
        assert_eq!(utc_stamp(t), "20261231-235959");
    }

    #[test]
    fn ids_and_names() {
        assert!(check_id("20261203-141500-demo").is_ok());
        for bad in [
            "", ".", "..", "../x", "/abs", "a/b", "a\\b", "a\0b", ".hidden", "a b",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "  ", "../x", "/abs", "a/b", "a\\b", "a\0b", "..", "."] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("My run: v2").is_ok());
        assert_eq!(name_from_id("20261203-141500-demo"), "demo");
        assert_eq!(name_from_id("odd"), "odd");
    }
}
