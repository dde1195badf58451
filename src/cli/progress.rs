//! Progress on the command line: a bar redrawn in place when stdout is a
//! terminal, plain lines (a few, not one per step) when it is not.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Whether the process's stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// A progress line for `total` units of work.
pub struct Progress {
    total: u64,
    tty: bool,
    started: Instant,
    start_at: u64,
    /// Plain mode: print every this many units.
    every: u64,
    drawn: bool,
}

impl Progress {
    pub fn new(total: u64, start_at: u64, tty: bool) -> Self {
        Self {
            total,
            tty,
            started: Instant::now(),
            start_at,
            every: (total / 20).max(1),
            drawn: false,
        }
    }

    /// Reports `done` units with a short status; in plain mode only every
    /// twentieth of the total (and the last) makes a line.
    pub fn update(&mut self, out: &mut dyn Write, done: u64, status: &str) {
        if self.tty {
            let width = 30usize;
            let filled = if self.total == 0 {
                width
            } else {
                ((done.min(self.total) as f64 / self.total as f64) * width as f64) as usize
            };
            let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
            let _ = write!(
                out,
                "\r\x1b[K[{bar}] {done}/{} {status}{}",
                self.total,
                self.eta(done)
            );
            let _ = out.flush();
            self.drawn = true;
        } else if done.is_multiple_of(self.every) || done == self.total {
            let _ = writeln!(out, "{done}/{} {status}{}", self.total, self.eta(done));
        }
    }

    /// Prints a whole line above the bar.
    pub fn line(&mut self, out: &mut dyn Write, text: &str) {
        if self.tty && self.drawn {
            let _ = write!(out, "\r\x1b[K");
            self.drawn = false;
        }
        let _ = writeln!(out, "{text}");
    }

    /// Ends the bar's line.
    pub fn finish(&mut self, out: &mut dyn Write) {
        if self.tty && self.drawn {
            let _ = writeln!(out);
            self.drawn = false;
        }
    }

    fn eta(&self, done: u64) -> String {
        let did = done.saturating_sub(self.start_at);
        if did == 0 || done >= self.total {
            return String::new();
        }
        let per = self.started.elapsed().as_secs_f64() / did as f64;
        format!(", ETA {}", duration((self.total - done) as f64 * per))
    }
}

/// `3h 05m`, `4m 10s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
