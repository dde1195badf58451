//! Time per frame of the dashboard and the compare view at 200x60 with
//! 1,000,000 recorded steps across runs (one run of 1,000,000 steps on
//! the dashboard; five of 200,000 in the compare view), drawn by the real
//! app into ratatui's `TestBackend`. A report, not a test: the target is
//! under 10 ms a frame.
//!
//!     cargo bench --bench tui_render

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use ratatui::backend::TestBackend;
use ratatui::Terminal;

use t5_tui::runs::RunStore;
use t5_tui::train::{LrSource, TrainEvent, TrainHandle};
use t5_tui::tui::app::{CompareRun, CompareState, LiveRun};
use t5_tui::tui::history::{RunHistory, XAxis};
use t5_tui::tui::{App, Screen, Theme};

fn history(id: &str, steps: u64, scale: f64) -> RunHistory {
    let mut h = RunHistory::new(id);
    h.apply(&TrainEvent::Started {
        run: id.into(),
        params: 13_637_632,
        device: "cpu".into(),
        tokens_per_step: 2512,
        step: 0,
        total_steps: steps,
        resumed: false,
        time: 0.0,
    });
    for s in 1..=steps {
        let loss =
            scale * (-(s as f64) / (steps as f64 / 5.0)).exp() + 2.0 + ((s % 17) as f64) * 0.01;
        h.apply(&TrainEvent::Step {
            step: s,
            tokens_seen: s * 2512,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_sec: 1700.0 + (s % 13) as f64,
            elapsed: s as f64,
            time: s as f64,
        });
        if s % 1000 == 0 {
            let mut m = BTreeMap::new();
            m.insert("token_accuracy".to_string(), 30.0);
            h.apply(&TrainEvent::Eval {
                step: s,
                loss: loss + 0.2,
                perplexity: (loss + 0.2).exp(),
                metrics: m,
                classification: None,
                time: s as f64,
            });
        }
        if s % 100_000 == 0 {
            h.apply(&TrainEvent::LrChanged {
                step: s,
                from: 1e-3,
                to: 1e-3,
                by: LrSource::User,
                time: s as f64,
            });
        }
    }
    h
}

fn time_frames(app: &App, frames: usize) -> (f64, f64) {
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).expect("a test terminal");
    let mut times = Vec::with_capacity(frames);
    for _ in 0..frames {
        let t = Instant::now();
        terminal.draw(|f| app.render(f)).expect("a frame");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[frames / 2], times[frames * 99 / 100])
}

fn main() {
    let dir = std::env::temp_dir().join(format!("t5-tui-bench-{}", std::process::id()));
    let store = RunStore::at(&dir);
    let mut app = App::new(store, Theme::builtin("dark"), dir.clone());
    app.measure_memory = false;

    let t = Instant::now();
    let big = history("20261203-000000-million", 1_000_000, 8.0);
    let build = t.elapsed().as_secs_f64();
    println!(
        "dashboard run: {} steps recorded in {:.2} s; {} points kept of the loss curve",
        big.train_loss.raw_len(),
        build,
        big.train_loss.len()
    );
    let (_tx, rx) = mpsc::channel();
    let (ctl, _crx) = mpsc::channel();
    app.live.push(LiveRun {
        handle: TrainHandle::from_channels(&big.id, dir.join("runs"), rx, ctl),
        history: big,
        ended: false,
    });
    app.viewing = Some("20261203-000000-million".into());
    app.screen = Screen::Dashboard;
    let (median, p99) = time_frames(&app, 200);
    println!("dashboard 200x60: {median:.2} ms a frame (median of 200), p99 {p99:.2} ms");

    let runs: Vec<CompareRun> = (0..5)
        .map(|i| {
            let id = format!("20261203-00000{i}-run{i}");
            CompareRun {
                name: format!("run{i}"),
                status: "finished".into(),
                history: history(&id, 200_000, 6.0 + i as f64),
                id,
            }
        })
        .collect();
    let total: u64 = runs.iter().map(|r| r.history.train_loss.raw_len()).sum();
    app.compare = Some(CompareState {
        runs,
        axis: XAxis::Step,
        log_y: true,
        smoothing: 0.6,
        validation: false,
        differing: vec![(
            "train.learning_rate".into(),
            (0..5).map(|i| format!("{}e-3", i + 1)).collect(),
        )],
    });
    app.screen = Screen::Compare;
    let (median, p99) = time_frames(&app, 200);
    println!(
        "compare 200x60, 5 runs, {total} steps: {median:.2} ms a frame (median of 200), p99 {p99:.2} ms"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
