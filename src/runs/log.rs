//! `events.jsonl`: one [`TrainEvent`] a line, appended as it happens, read
//! back whatever a crash left.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::train::events::TrainEvent;

/// Where an [`EventLog`] writes: a file, or in tests anything that can fail.
pub trait EventSink: Write {
    /// Makes what was written durable (fsync for a file).
    fn sync(&mut self) -> io::Result<()>;

    /// How many bytes the sink holds now, if it can tell.
    fn size(&mut self) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Cuts the sink back to `len` bytes, to drop a partly written line. A
    /// sink that cannot returns an error, and the log starts its next line
    /// on a fresh line instead.
    fn truncate(&mut self, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl EventSink for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // The file is opened for appending: the next write goes to the new end.
        self.set_len(len)
    }
}

/// Appends events to a run's `events.jsonl`, one JSON object a line. Each
/// line is written and flushed at once; `Started`, `Checkpoint` and the
/// terminal events are also synced to disk. A failed write is returned,
/// and never glues the next line onto a partial one: the partial line is
/// cut off again where the sink allows, else the next line starts with a
/// newline of its own.
pub struct EventLog<S: EventSink = File> {
    sink: S,
    path: PathBuf,
    /// The sink may end in the middle of a line (a failed write, or a torn
    /// line a crash left): the next line must start with '\n'.
    line_open: bool,
}

impl EventLog<File> {
    /// Opens (creating) `path` for appending. When the file ends in a torn
    /// line, the next event starts on a fresh line.
    pub fn open(path: &Path) -> Result<EventLog<File>> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let line_open = ends_in_open_line(&mut file).map_err(|e| Error::io(path, e))?;
        Ok(EventLog {
            sink: file,
            path: path.to_path_buf(),
            line_open,
        })
    }
}

impl<S: EventSink> EventLog<S> {
    /// A log over any sink, starting on a fresh line; `path` names it in
    /// errors.
    pub fn with_sink(sink: S, path: impl Into<PathBuf>) -> EventLog<S> {
        EventLog {
            sink,
            path: path.into(),
            line_open: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `event` as one line and flushes it; syncs it to disk when it
    /// starts or ends the run or records a checkpoint.
    pub fn append(&mut self, event: &TrainEvent) -> Result<()> {
        let mut line = Vec::with_capacity(256);
        if self.line_open {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, event)
            .map_err(|e| Error::Other(format!("cannot write event {event:?} as JSON: {e}")))?;
        line.push(b'\n');

        let before = self.sink.size().ok();
        let written = match super::fault::disk_full() {
            // A full disk takes part of a write before it fails.
            Some(e) => self
                .sink
                .write_all(&line[..line.len() / 2])
                .and_then(|()| self.sink.flush())
                .and(Err(e)),
            None => self.sink.write_all(&line).and_then(|()| self.sink.flush()),
        };
        if let Err(e) = written {
            let rolled_back = before.is_some_and(|len| self.sink.truncate(len).is_ok());
            if !rolled_back {
                self.line_open = true;
            }
            return Err(Error::io(&self.path, e));
        }
        self.line_open = false;
        let durable = event.is_terminal()
            || matches!(
                event,
                TrainEvent::Started { .. } | TrainEvent::Checkpoint { .. }
            );
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs what was written to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.sink.sync().map_err(|e| Error::io(&self.path, e))
    }

    /// The sink, e.g. to inspect it in a test.
    pub fn into_sink(self) -> S {
        self.sink
    }
}

/// Whether a non-empty file's last byte is not a newline.
fn ends_in_open_line(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// What [`read_events`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsRead {
    /// The events that parsed, in order.
    pub events: Vec<TrainEvent>,
    /// The file ends in a line cut short (a crash in the middle of a write,
    /// or a writer in the middle of one now); it was left out.
    pub torn_last_line: bool,
    /// Lines (counted from 1) that are not events; they were left out.
    pub bad_lines: Vec<usize>,
}

impl EventsRead {
    /// One sentence about what was left out, if anything was.
    pub fn problem(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.bad_lines.is_empty() {
            let shown: Vec<String> = self
                .bad_lines
                .iter()
                .take(5)
                .map(|n| n.to_string())
                .collect();
            let more = if self.bad_lines.len() > 5 {
                ", …"
            } else {
                ""
            };
            let (noun, verb) = if self.bad_lines.len() == 1 {
                ("line", "is not an event and was")
            } else {
                ("lines", "are not events and were")
            };
            parts.push(format!(
                "events.jsonl {noun} {}{more} {verb} skipped",
                shown.join(", ")
            ));
        }
        if self.torn_last_line {
            parts.push("events.jsonl ends in a line cut short (a crash mid-write?)".to_string());
        }
        if parts.is_empty() {
            None
        } else {
            Some(parts.join("; "))
        }
    }
}

/// Reads an event log. Blank lines are skipped; a last line with no newline
/// that is not a whole event is left out and reported as torn; any other
/// line that is not an event is left out and reported by number.
pub fn read_events(path: &Path) -> Result<EventsRead> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(parse_events(&bytes))
}

pub fn parse_events(bytes: &[u8]) -> EventsRead {
    let mut out = EventsRead::default();
    let ends_with_newline = bytes.last().is_none_or(|&b| b == b'\n');
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if ends_with_newline {
        // `split` yields an empty piece after a final newline.
        lines.pop();
    }
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let is_last_unterminated = i + 1 == count && !ends_with_newline;
        let text = match std::str::from_utf8(line) {
            Ok(t) => t.trim(),
            Err(_) => "\u{fffd}",
        };
        if text.is_empty() {
            continue;
        }
        match parse_event_line(text) {
            Some(event) => out.events.push(event),
            None if is_last_unterminated => out.torn_last_line = true,
            None => out.bad_lines.push(i + 1),
        }
    }
    out
}

/// Stands in for a non-finite number while a line is parsed: JSON has no
/// NaN or infinity, and serde_json writes them as `null`.
const NON_FINITE: f64 = f64::MAX;

/// One event from one line. A line whose numbers were NaN or infinite
/// (written as `null`) reads back with NaN in their place, so a diverged
/// step is still an event.
pub fn parse_event_line(text: &str) -> Option<TrainEvent> {
    if let Ok(event) = serde_json::from_str::<TrainEvent>(text) {
        return Some(event);
    }
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    if !replace_nulls(&mut value) {
        return None;
    }
    let mut event: TrainEvent = serde_json::from_value(value).ok()?;
    restore_non_finite(&mut event);
    Some(event)
}

/// Replaces every `null` with [`NON_FINITE`]; whether there was one.
fn replace_nulls(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => {
            *value = serde_json::json!(NON_FINITE);
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, v| replace_nulls(v) | acc),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |acc, v| replace_nulls(v) | acc),
        _ => false,
    }
}

fn restore_non_finite(event: &mut TrainEvent) {
    fn fix(x: &mut f64) {
        if *x == NON_FINITE {
            *x = f64::NAN;
        }
    }
    match event {
        TrainEvent::Started { time, .. }
        | TrainEvent::Sample { time, .. }
        | TrainEvent::Checkpoint { time, .. }
        | TrainEvent::Paused { time, .. }
        | TrainEvent::Resumed { time, .. }
        | TrainEvent::Warning { time, .. }
        | TrainEvent::Info { time, .. }
        | TrainEvent::Finished { time, .. }
        | TrainEvent::Failed { time, .. } => fix(time),
        TrainEvent::Step {
            loss,
            lr,
            grad_norm,
            tokens_per_sec,
            elapsed,
            time,
            ..
        } => {
            for x in [loss, lr, grad_norm, tokens_per_sec, elapsed, time] {
                fix(x);
            }
        }
        TrainEvent::Eval {
            loss,
            perplexity,
            metrics,
            time,
            ..
        } => {
            for x in [loss, perplexity, time] {
                fix(x);
            }
            metrics.values_mut().for_each(fix);
        }
        TrainEvent::LrChanged { from, to, time, .. } => {
            for x in [from, to, time] {
                fix(x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64, loss: f64) -> TrainEvent {
        TrainEvent::Step {
            step: n,
            tokens_seen: n * 10,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_sec: 100.0,
            elapsed: n as f64,
            time: 1.0,
        }
    }

    fn line(e: &TrainEvent) -> String {
        serde_json::to_string(e).unwrap()
    }

    #[test]
    fn torn_and_bad_lines() {
        let text = format!(
            "{}\nnot json\n\n{}\n{}",
            line(&step(1, 2.0)),
            line(&step(2, 1.5)),
            &line(&step(3, 1.0))[..20]
        );
        let read = parse_events(text.as_bytes());
        assert_eq!(read.events, vec![step(1, 2.0), step(2, 1.5)]);
        assert!(read.torn_last_line);
        assert_eq!(read.bad_lines, vec![2]);
        assert!(read.problem().unwrap().contains("line 2"));
    }

    #[test]
    fn whole_last_line_without_newline_counts() {
        let text = format!("{}\n{}", line(&step(1, 2.0)), line(&step(2, 1.5)));
        let read = parse_events(text.as_bytes());
        assert_eq!(read.events.len(), 2);
        assert!(!read.torn_last_line);
        assert_eq!(read.problem(), None);
    }

    #[test]
    fn nan_loss_reads_back_as_nan() {
        let text = format!("{}\n", line(&step(1, f64::NAN)));
        assert!(text.contains("\"NaN\""), "{text}");
        let read = parse_events(text.as_bytes());
        assert!(read.bad_lines.is_empty());
        match &read.events[..] {
            [TrainEvent::Step { loss, lr, .. }] => {
                assert!(loss.is_nan());
                assert_eq!(*lr, 1e-3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nulls_where_no_number_belongs_are_bad() {
        let text = "{\"event\":\"warning\",\"step\":1,\"message\":null,\"time\":1.0}\n";
        let read = parse_events(text.as_bytes());
        assert_eq!(read.bad_lines, vec![1]);
    }
}
