//! The terminal UI in a real terminal: tmux runs `t5-tui` against a
//! temporary run store; the test starts the demo experiment (made small)
//! from the UI, raises the learning rate with `+`, and reads the screen
//! with `capture-pane`: steps advance, the change shows, and
//! `events.jsonl` records it. Also a closed terminal, and a panic inside
//! the UI (`T5_TUI_DEBUG_PANIC`): the terminal is restored and the run
//! stops with a checkpoint. CI installs tmux; elsewhere the test says it
//! was skipped when tmux is missing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(home: &Path, cwd: &Path) -> Tmux {
        Tmux::start_with(home, cwd, "", "main")
    }

    /// `t5-tui ARGS` in a new 100x30 session named after the test.
    fn start_with(home: &Path, cwd: &Path, args: &str, name: &str) -> Tmux {
        Tmux::start_env(home, cwd, "", args, name)
    }

    /// `env VARS t5-tui ARGS`; afterwards the shell prints the exit code
    /// and echoes one line typed at it (`got …`), which only works once
    /// the terminal is back in its normal mode.
    fn start_env(home: &Path, cwd: &Path, vars: &str, args: &str, name: &str) -> Tmux {
        let session = format!("t5tui-test-{}-{name}", std::process::id());
        let bin = env!("CARGO_BIN_EXE_t5-tui");
        let cmd = format!(
            "cd '{}' && env T5_TUI_HOME='{}' {vars} '{}' {args} 2>>stderr.log; echo t5-tui exited $?; read line; echo got $line; sleep 30",
            cwd.display(),
            home.display(),
            bin
        );
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "100",
                "-y",
                "30",
                &cmd,
            ])
            .status()
            .expect("tmux runs")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { session }
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let ok = Command::new("tmux")
                .args(["send-keys", "-t", &self.session, k])
                .status()
                .unwrap()
                .success();
            assert!(ok, "send-keys {k}");
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    /// Types text literally (no key names).
    fn text(&self, text: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::thread::sleep(Duration::from_millis(60));
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; panics with the screen after `secs`.
    fn wait_for(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > until {
                panic!("waited {secs}s for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// The step the dashboard's gauge shows (`step 7/30`).
fn gauge_step(screen: &str, total: u64) -> Option<u64> {
    let tail = format!("/{total} ·");
    screen.lines().find_map(|l| {
        let end = l.find(&tail)?;
        let start = l[..end].rfind("step ")? + 5;
        l[start..end].trim().parse().ok()
    })
}

/// Whether the test can run: tmux is here, or (not on CI) it says it skipped.
fn tmux_or_skip() -> bool {
    if have_tmux() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tmux is missing on CI: .ci/run installs it"
    );
    eprintln!("skipped: tmux is not installed (apt-get install tmux)");
    false
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_demo_starts_from_the_ui_and_the_learning_rate_key_changes_it() {
    if !tmux_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let t = Tmux::start(&home, dir.path());
    t.wait_for("the first-launch offer", 30, |s| s.contains("No runs yet"));
    t.keys(&["Enter"]);
    t.wait_for("the editor", 20, |s| s.contains("editor · demo-pretrain"));
    // The demo, made small enough to train in seconds here.
    let total = 30u64;
    for (key, value) in [
        ("steps", total.to_string()),
        ("vocab_size", "3072".into()),
        ("num_layers", "2".into()),
        ("num_decoder_layers", "2".into()),
        ("batch_size", "4".into()),
        ("input_length", "64".into()),
        ("warmup_steps", "0".into()),
        ("schedule", "constant".into()),
    ] {
        t.keys(&["/"]);
        t.text(key);
        t.keys(&["Enter", "Enter", "C-u"]);
        t.text(&value);
        t.keys(&["Enter"]);
    }
    let s = t.wait_for("a valid form", 10, |s| s.contains("ready to start"));
    assert!(!s.contains("invalid"), "{s}");
    t.keys(&["s"]);
    let s = t.wait_for("two steps on the dashboard", 240, |s| {
        gauge_step(s, total).is_some_and(|n| n >= 2)
    });
    let before = gauge_step(&s, total).unwrap();
    assert!(s.contains("[training]"), "{s}");
    t.keys(&["+"]);
    // The worker's echo: the log line, and the new rate in the stats.
    t.keys(&["Tab"]);
    let s = t.wait_for("the learning-rate change in the log", 60, |s| {
        s.contains("(by the user)")
    });
    assert!(s.contains("learning rate 3.000e-3 -> 3.750e-3"), "{s}");
    let s = t.wait_for("steps advancing after the change", 120, |s| {
        gauge_step(s, total).is_some_and(|n| n > before + 1) && s.contains("lr         3.750e-3")
    });
    assert!(gauge_step(&s, total).unwrap() > before);
    // Stop (with its confirmation), then quit.
    t.keys(&["x", "y"]);
    t.wait_for("the run to stop", 120, |s| {
        s.contains("[stopped]") || s.contains("[finished]")
    });
    t.keys(&["q"]);
    t.wait_for("the process to exit cleanly", 20, |s| {
        s.contains("t5-tui exited 0")
    });

    // events.jsonl has the change, made by the user, and the end.
    let runs: Vec<_> = std::fs::read_dir(home.join("runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(runs.len(), 1);
    let log = std::fs::read_to_string(runs[0].path().join("events.jsonl")).unwrap();
    let change = log
        .lines()
        .find(|l| l.contains("\"event\":\"lr_changed\""))
        .expect("an lr_changed event in events.jsonl");
    assert!(change.contains("\"by\":\"user\""), "{change}");
    assert!(change.contains("\"to\":0.00375"), "{change}");
    assert!(log
        .lines()
        .last()
        .unwrap()
        .contains("\"event\":\"finished\""));
}

#[test]
fn closing_the_terminal_stops_the_run_with_a_checkpoint_and_ends_the_process() {
    if !tmux_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    common::write_tiny_experiment(
        dir.path(),
        "hangup",
        1_000_000,
        "[checkpoint]\nevery_steps = 0",
    );
    // `t5-tui train CONFIG` in a terminal opens the run's dashboard.
    let t = Tmux::start_with(&home, dir.path(), "train exp.toml", "hangup");
    t.wait_for("steps on the dashboard", 120, |s| {
        s.contains("[training]") && gauge_step(s, 1_000_000).is_some_and(|n| n >= 3)
    });
    let runs = home.join("runs");
    let id = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name();
    let events = runs.join(&id).join("events.jsonl");
    // Close the terminal: tmux hangs up on the process (SIGHUP).
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &t.session])
        .status();
    let until = Instant::now() + Duration::from_secs(60);
    let store = t5_tui::runs::RunStore::at(&home);
    let run = store.open(id.to_str().unwrap()).unwrap();
    loop {
        let log = std::fs::read_to_string(&events).unwrap();
        let last = log.lines().last().unwrap_or_default().to_string();
        // Stopped, with a checkpoint, and no process holds the run.
        if last.contains("\"reason\":\"stopped\"") && !run.is_locked() {
            assert!(log.contains("\"event\":\"checkpoint\""), "{log}");
            assert_eq!(run.status(), t5_tui::runs::RunStatus::Stopped);
            assert!(run.latest_checkpoint().is_some());
            break;
        }
        assert!(
            Instant::now() < until,
            "the run did not stop after the terminal closed; last event: {last}; stderr: {}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_panic_in_the_ui_restores_the_terminal_and_stops_the_run_with_a_checkpoint() {
    if !tmux_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    common::write_tiny_experiment(
        dir.path(),
        "panic",
        1_000_000,
        "[checkpoint]\nevery_steps = 0",
    );
    // Debug builds panic inside the UI loop after this many frames
    // (100 ms each at most), with the run training by then.
    let t = Tmux::start_env(
        &home,
        dir.path(),
        "T5_TUI_DEBUG_PANIC=40",
        "train exp.toml",
        "panic",
    );
    t.wait_for("steps on the dashboard", 120, |s| s.contains("[training]"));
    let s = t.wait_for("the process to exit", 120, |s| s.contains("t5-tui exited"));
    assert!(s.contains("t5-tui exited 2"), "{s}");
    // Out of the alternate screen, and the line discipline is back: a
    // typed line reaches the shell and echoes.
    let alt = Command::new("tmux")
        .args(["display-message", "-p", "-t", &t.session, "#{alternate_on}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&alt.stdout).trim(), "0");
    t.text("hello");
    t.keys(&["Enter"]);
    t.wait_for("the shell to read a line", 20, |s| s.contains("got hello"));
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(stderr.contains("the terminal UI crashed"), "{stderr}");
    // The run was stopped the clean way: a checkpoint, then finished.
    let store = t5_tui::runs::RunStore::at(&home);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    let run = store.open(&list[0].id).unwrap();
    assert_eq!(run.status(), t5_tui::runs::RunStatus::Stopped, "{stderr}");
    assert!(run.latest_checkpoint().is_some());
}
