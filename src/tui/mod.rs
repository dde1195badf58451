//! The terminal UI: runs, editor, dashboard and compare screens over the
//! same library calls the headless commands make. The main loop is
//! generic over ratatui's `Backend`, so tests drive the real app against
//! `TestBackend`; `run` puts it on the real terminal.

pub mod app;
pub mod editor;
pub mod history;
pub mod theme;
pub mod views;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event};
use ratatui::Terminal;

pub use app::{App, QuitChoice, Screen};
pub use theme::Theme;

use crate::error::{Error, Result};
use crate::runs::RunStore;
use crate::train::TrainHandle;

/// How long the loop waits for a key before it looks at the channels again.
const FRAME: Duration = Duration::from_millis(100);

/// How the UI starts.
#[derive(Debug, Default)]
pub struct UiOptions {
    /// A built-in theme's name or a theme file.
    pub theme: Option<String>,
    /// A run to show on the dashboard at once (started by `t5-tui train`).
    pub start: Option<TrainHandle>,
}

/// What is left when the UI closes: the runs still training and what the
/// user chose for them.
pub struct UiExit {
    pub choice: QuitChoice,
    /// `(handle, step, total_steps)` of each run still training.
    pub training: Vec<(TrainHandle, u64, u64)>,
    /// What broke the UI, if something did (a closed terminal).
    pub error: Option<Error>,
}

/// The theme to start with: `NO_COLOR` turns colour off; else `--theme`,
/// `T5_TUI_THEME`, the one last chosen with `t` (kept in the store's
/// `ui.toml`), or `dark`.
pub fn choose_theme(name: Option<&str>, root: &std::path::Path) -> Result<Theme> {
    if Theme::no_color_requested() {
        return Ok(Theme::monochrome());
    }
    let asked = name
        .map(str::to_string)
        .or_else(|| std::env::var("T5_TUI_THEME").ok().filter(|s| !s.is_empty()));
    match asked {
        Some(n) => Theme::load(&n),
        // A saved theme that no longer loads is no reason not to start.
        None => Ok(theme::saved_theme(root)
            .and_then(|n| Theme::load(&n).ok())
            .unwrap_or_else(|| Theme::builtin("dark"))),
    }
}

/// Runs the UI on the process's terminal until the user quits.
pub fn run(store: RunStore, options: UiOptions) -> Result<UiExit> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Error::Invalid(
            "the terminal UI needs a terminal, and stdin or stdout is not one: use the headless \
             commands instead (t5-tui train CONFIG --headless, t5-tui runs, t5-tui --help)"
                .into(),
        ));
    }
    let theme = choose_theme(options.theme.as_deref(), store.root())?;
    let workdir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut app = App::new(store, theme, workdir);
    app.stop_on_signal = true;
    if let Some(h) = options.start {
        app.watch_live(h);
    }
    // A closed terminal (SIGHUP) or SIGTERM stops the runs with a checkpoint.
    crate::signals::install();
    // `try_init` installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::try_init()
        .map_err(|e| Error::Other(format!("cannot set up the terminal: {e}")))?;
    // Keys are read on a thread of their own: crossterm spins in its read
    // once the terminal hangs up, and the loop must still see the signal.
    let (keys_tx, keys_rx) = std::sync::mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("t5-tui-input".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if keys_tx.send(ev).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = reader {
        ratatui::restore();
        return Err(Error::Other(format!("cannot start the input thread: {e}")));
    }
    // A panic in the UI (a bug) must not take the runs down with it: the
    // hook `try_init` installed restores the terminal and prints the
    // panic; catching it here lets the runs stop with a checkpoint.
    let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_loop(&mut terminal, &mut app, |timeout| {
            if terminal_hung_up() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the terminal was closed",
                ));
            }
            match keys_rx.recv_timeout(timeout) {
                Ok(ev) => Ok(Some(ev)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the terminal stopped sending input",
                )),
            }
        })
    }));
    let result = looped.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(Error::Other(format!(
            "the terminal UI crashed ({what}); its runs are stopped with a checkpoint"
        )))
    });
    ratatui::restore();
    if result.is_err() && app.quit.is_none() {
        // The terminal failed under the UI: the runs still stop cleanly.
        app.quit = Some(QuitChoice::StopRuns);
    }
    let mut exit = finish(app);
    exit.error = result.err();
    Ok(exit)
}

/// The loop: take in events, draw, wait for a key; until `app.quit`.
/// `next_event` waits up to the given time for terminal input.
pub fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    mut next_event: impl FnMut(Duration) -> std::io::Result<Option<Event>>,
) -> Result<()> {
    let panic_after = debug_panic_frames();
    let mut frames = 0u64;
    loop {
        frames += 1;
        if panic_after.is_some_and(|n| frames > n) {
            panic!("{DEBUG_PANIC_ENV}: a panic inside the UI loop, on request");
        }
        app.tick();
        if crate::signals::received() > 0 && app.quit.is_none() {
            app.quit = Some(QuitChoice::StopRuns);
        }
        terminal
            .draw(|f| app.render(f))
            .map_err(|e| Error::Other(format!("drawing the terminal UI: {e}")))?;
        if app.quit.is_some() {
            return Ok(());
        }
        let mut wait = FRAME;
        // Take every key already typed before drawing again.
        loop {
            let ev = match next_event(wait) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                // The terminal is gone (closed, hung up): stop the runs
                // with a checkpoint, as SIGHUP asks.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    app.quit = Some(QuitChoice::StopRuns);
                    return Ok(());
                }
                Err(e) => return Err(Error::Other(format!("reading the terminal: {e}"))),
            };
            if let Event::Key(key) = ev {
                app.on_key(key);
            }
            if app.quit.is_some() {
                break;
            }
            wait = Duration::ZERO;
        }
    }
}

/// Debug builds only: `T5_TUI_DEBUG_PANIC=N` panics inside the UI loop
/// after N frames, so that the fault tests can check that a bug in the UI
/// restores the terminal and stops the runs with a checkpoint.
pub const DEBUG_PANIC_ENV: &str = "T5_TUI_DEBUG_PANIC";

fn debug_panic_frames() -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var(DEBUG_PANIC_ENV).ok()?.parse().ok()
    } else {
        None
    }
}

/// Whether stdin's terminal has hung up. crossterm would spin on such a
/// terminal (its reads return 0 bytes forever), so the loop asks first.
#[cfg(unix)]
fn terminal_hung_up() -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n > 0 && fds.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(not(unix))]
fn terminal_hung_up() -> bool {
    false
}

fn finish(app: App) -> UiExit {
    let choice = app.quit.unwrap_or(QuitChoice::Plain);
    let training = app
        .live
        .into_iter()
        .filter(|l| !l.ended)
        .map(|l| {
            let (step, total) = (l.history.step, l.history.total_steps);
            (l.handle, step, total)
        })
        .collect();
    UiExit {
        choice,
        training,
        error: None,
    }
}
