//! The terminal UI driven the way a person drives it, against ratatui's
//! `TestBackend`: snapshots of every screen at 80x24 and at a large size,
//! fed with scripted training events; the keys that steer a run send the
//! right control; the editor refuses invalid values; no size panics.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

use t5_tui::config::{self, Experiment};
use t5_tui::runs::{EventLog, RunStore};
use t5_tui::train::{Control, FinishReason, LrSource, TrainEvent, TrainHandle};
use t5_tui::tui::{App, QuitChoice, Screen, Theme};

const T0: f64 = 1_796_300_000.0;

/// A run of `steps` steps as the worker would report it: the loss falls,
/// the user raises the learning rate at step 30, evals every 20 steps.
fn script(run: &str, steps: u64, start_loss: f64, finished: bool) -> Vec<TrainEvent> {
    let mut ev = vec![
        TrainEvent::Info {
            step: 0,
            message: "prepared 2000 records (2000 read)".into(),
            time: T0,
        },
        TrainEvent::Started {
            run: run.into(),
            params: 13_637_632,
            device: "cpu (2 threads)".into(),
            tokens_per_step: 2512,
            step: 0,
            total_steps: 100,
            resumed: false,
            time: T0 + 1.0,
        },
    ];
    let mut lr = 1e-3;
    for s in 1..=steps {
        let t = T0 + 1.0 + s as f64 * 1.5;
        if s == 30 {
            ev.push(TrainEvent::LrChanged {
                step: s - 1,
                from: lr,
                to: lr * 1.25,
                by: LrSource::User,
                time: t - 0.1,
            });
            lr *= 1.25;
        }
        let loss = start_loss * (-(s as f64) / 40.0).exp() + 2.0 + 0.1 * ((s * 7) % 5) as f64;
        ev.push(TrainEvent::Step {
            step: s,
            tokens_seen: s * 2512,
            loss,
            lr,
            grad_norm: 1.0 + 1.0 / s as f64,
            tokens_per_sec: 1650.0 + ((s * 13) % 7) as f64 * 10.0,
            elapsed: s as f64 * 1.5,
            time: t,
        });
        if s % 20 == 0 {
            let mut metrics = std::collections::BTreeMap::new();
            metrics.insert("token_accuracy".to_string(), 20.0 + s as f64 / 5.0);
            ev.push(TrainEvent::Eval {
                step: s,
                loss: loss + 0.3,
                perplexity: (loss + 0.3).exp(),
                metrics,
                classification: None,
                time: t + 0.2,
            });
        }
        if s % 40 == 0 {
            for (i, input) in ["The cat sat on the mat.", "He is a man of few words."]
                .iter()
                .enumerate()
            {
                ev.push(TrainEvent::Sample {
                    step: s,
                    input: format!("{input} <extra_id_0>"),
                    target: format!("<extra_id_0> sample {i}</s>"),
                    output: format!("<extra_id_0> step {s} guess {i}</s>"),
                    time: t + 0.3,
                });
            }
        }
        if s % 50 == 0 {
            ev.push(TrainEvent::Checkpoint {
                step: s,
                path: format!("runs/{run}/checkpoints/step-{s}").into(),
                time: t + 0.4,
            });
        }
    }
    if finished {
        ev.push(TrainEvent::Finished {
            step: steps,
            reason: FinishReason::Completed,
            time: T0 + 2.0 + steps as f64 * 1.5,
        });
    }
    ev
}

const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// A classification eval over 90 validation examples (30 of each label):
/// the model is right for a share that grows with `skill`; its mistakes
/// are the next label, and every fifth one no label at all.
fn classification_eval(step: u64, loss: f64, time: f64, skill: f64, labels: &[&str]) -> TrainEvent {
    let (mut outputs, mut targets) = (Vec::new(), Vec::new());
    let mut wrong = 0;
    for i in 0..90 {
        let t = i % labels.len();
        let right = ((i / labels.len()) as f64) < skill * 30.0;
        let out = if right {
            labels[t].to_string()
        } else {
            wrong += 1;
            if wrong % 5 == 0 {
                "maybe".to_string()
            } else {
                labels[(t + 1) % labels.len()].to_string()
            }
        };
        outputs.push(out);
        targets.push(labels[t].to_string());
    }
    let scores = t5_tui::metrics::task_scores(
        Some(t5_tui::metrics::TaskKind::Classification),
        &outputs,
        &targets,
        false,
        labels,
    )
    .unwrap();
    let mut metrics = scores.metrics;
    metrics.insert("token_accuracy".into(), 50.0 + skill * 40.0);
    metrics.insert("gen_len".into(), 3.0);
    TrainEvent::Eval {
        step,
        loss,
        perplexity: loss.exp(),
        metrics,
        classification: scores.classification,
        time,
    }
}

/// [`script`] for a classification run: its evals carry the matrix.
fn classification_script(run: &str, steps: u64, skill: f64) -> Vec<TrainEvent> {
    script(run, steps, 5.0, true)
        .into_iter()
        .map(|e| match e {
            TrainEvent::Eval {
                step, loss, time, ..
            } => classification_eval(
                step,
                loss,
                time,
                skill * step as f64 / steps as f64,
                &LABELS,
            ),
            other => other,
        })
        .collect()
}

/// Where `text` starts on the screen, as (x, y).
fn find(buf: &ratatui::buffer::Buffer, text: &str) -> Option<(u16, u16)> {
    let area = buf.area;
    for y in 0..area.height {
        let line: Vec<&str> = (0..area.width).map(|x| buf[(x, y)].symbol()).collect();
        let joined: String = line.concat();
        if let Some(byte) = joined.find(text) {
            // Symbols are one cell each here; count the chars before it.
            let x = joined[..byte].chars().count() as u16;
            return Some((x, y));
        }
    }
    None
}

/// The cell of the first non-space character of `pattern` in row `y`,
/// searching from column `x0`.
fn cell_in_row(
    buf: &ratatui::buffer::Buffer,
    x0: u16,
    y: u16,
    pattern: &str,
) -> ratatui::buffer::Cell {
    let xs: Vec<u16> = (x0..buf.area.width).collect();
    let line: String = xs.iter().map(|&x| buf[(x, y)].symbol()).collect();
    let byte = line
        .find(pattern)
        .unwrap_or_else(|| panic!("no {pattern:?} in {line:?}"));
    let skip = pattern.len() - pattern.trim_start().len();
    let x = xs[line[..byte].chars().count() + skip];
    buf[(x, y)].clone()
}

/// Writes a run folder as the worker leaves it: config and event log.
fn write_run(store: &RunStore, id: &str, set: &[&str], events: &[TrainEvent]) {
    let dir = store.runs_dir().join(id);
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    let exp = Experiment::from_preset("t5-tiny", None, set).unwrap();
    std::fs::write(dir.join("config.toml"), exp.to_toml().unwrap()).unwrap();
    let mut log = EventLog::open(&dir.join("events.jsonl")).unwrap();
    for e in events {
        log.append(e).unwrap();
    }
}

fn app(store: &RunStore) -> App {
    let mut app = App::new(
        store.clone(),
        Theme::builtin("dark"),
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
    );
    app.measure_memory = false;
    app
}

/// The screen as text, the temporary store's path replaced.
fn screen(app: &App, store: &RunStore, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| app.render(f)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.replace(&store.root().display().to_string(), "$T5_TUI_HOME")
}

fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn keys(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

/// A live run fed by the test instead of a worker thread.
fn live_run(app: &mut App, store: &RunStore, id: &str) -> (Sender<TrainEvent>, Receiver<Control>) {
    let (ev_tx, ev_rx) = mpsc::channel();
    let (ctl_tx, ctl_rx) = mpsc::channel();
    let dir = store.runs_dir().join(id);
    app.watch_live(TrainHandle::from_channels(id, dir, ev_rx, ctl_tx));
    (ev_tx, ctl_rx)
}

fn store() -> (tempfile::TempDir, RunStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    (dir, store)
}

fn three_runs(store: &RunStore) {
    let a = "20261201-090000-tiny-lr1e-3";
    let b = "20261202-090000-tiny-lr3e-3";
    let c = "20261203-090000-tiny-crashed";
    write_run(
        store,
        a,
        &["train.learning_rate=1e-3"],
        &script(a, 100, 8.0, true),
    );
    write_run(
        store,
        b,
        &["train.learning_rate=3e-3", "train.warmup_steps=100"],
        &{
            let mut ev = script(b, 100, 6.0, true);
            for e in &mut ev {
                if let TrainEvent::Started { time, .. } = e {
                    *time += 86_400.0;
                }
            }
            ev
        },
    );
    let mut crashed = script(c, 45, 7.0, false);
    for e in &mut crashed {
        if let TrainEvent::Started { time, .. } = e {
            *time += 2.0 * 86_400.0;
        }
    }
    write_run(store, c, &[], &crashed);
}

#[test]
fn runs_screen_snapshots() {
    let (_d, store) = store();
    let empty = app(&store);
    insta::assert_snapshot!("runs_empty_80x24", screen(&empty, &store, 80, 24));
    three_runs(&store);
    let mut a = app(&store);
    insta::assert_snapshot!("runs_80x24", screen(&a, &store, 80, 24));
    key(&mut a, KeyCode::Char(' '));
    insta::assert_snapshot!("runs_marked_160x48", screen(&a, &store, 160, 48));
    // Filtering by typing.
    key(&mut a, KeyCode::Char('/'));
    keys(&mut a, "crash");
    assert_eq!(a.runs.visible().len(), 1);
    insta::assert_snapshot!("runs_filtered_80x24", screen(&a, &store, 80, 24));
}

#[test]
fn dashboard_snapshots_of_a_live_run() {
    let (_d, store) = store();
    let mut a = app(&store);
    let id = "20261203-100000-demo";
    let (tx, _ctl) = live_run(&mut a, &store, id);
    for e in script(id, 60, 8.0, false) {
        tx.send(e).unwrap();
    }
    a.tick();
    a.memory = Some(1_288_490_189);
    assert_eq!(a.screen, Screen::Dashboard);
    insta::assert_snapshot!("dashboard_80x24", screen(&a, &store, 80, 24));
    insta::assert_snapshot!("dashboard_200x60", screen(&a, &store, 200, 60));
    key(&mut a, KeyCode::Tab);
    insta::assert_snapshot!("dashboard_log_80x24", screen(&a, &store, 80, 24));
}

#[test]
fn a_finished_runs_dashboard_is_rebuilt_from_its_log() {
    let (_d, store) = store();
    three_runs(&store);
    let mut a = app(&store);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Dashboard);
    let h = a.dashboard_history().unwrap();
    assert_eq!(h.id, "20261203-090000-tiny-crashed");
    assert_eq!(h.step, 45);
    assert_eq!(h.lr_marks.len(), 1);
    insta::assert_snapshot!("dashboard_from_log_120x40", screen(&a, &store, 120, 40));
}

#[test]
fn compare_snapshots() {
    let (_d, store) = store();
    three_runs(&store);
    let mut a = app(&store);
    // The newest is the crashed one; mark the two finished ones.
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Char(' '));
    key(&mut a, KeyCode::Char(' '));
    assert_eq!(a.runs.marked.len(), 2);
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.screen, Screen::Compare);
    let c = a.compare.as_ref().unwrap();
    let keys_differing: Vec<&str> = c.differing.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys_differing,
        vec!["train.learning_rate", "train.warmup_steps"]
    );
    insta::assert_snapshot!("compare_80x24", screen(&a, &store, 80, 24));
    insta::assert_snapshot!("compare_200x60", screen(&a, &store, 200, 60));
    // Tokens on x, log y, smoothing: the title says so.
    keys(&mut a, "xl]]]");
    let c = a.compare.as_ref().unwrap();
    assert!(c.log_y);
    assert!((c.smoothing - 0.3).abs() < 1e-9);
    key(&mut a, KeyCode::Tab);
    insta::assert_snapshot!(
        "compare_tokens_log_smooth_80x24",
        screen(&a, &store, 80, 24)
    );
}

#[test]
fn editor_snapshot_and_invalid_values_block_the_run() {
    let (_d, store) = store();
    let mut a = app(&store);
    // A first launch offers the demo with Enter.
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Editor);
    insta::assert_snapshot!("editor_demo_80x24", screen(&a, &store, 80, 24));
    // Find the layers, type 0: marked at once, and the run cannot start.
    key(&mut a, KeyCode::Char('/'));
    keys(&mut a, "num_layers");
    key(&mut a, KeyCode::Enter);
    key(&mut a, KeyCode::Enter);
    a.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    keys(&mut a, "0");
    let ed = a.editor.as_ref().unwrap();
    assert_eq!(ed.fields[ed.selected].path(), "model.num_layers");
    assert!(ed.fields[ed.selected].error.is_some());
    insta::assert_snapshot!("editor_invalid_80x24", screen(&a, &store, 80, 24));
    key(&mut a, KeyCode::Enter);
    key(&mut a, KeyCode::Char('s'));
    assert_eq!(a.screen, Screen::Editor, "an invalid form started a run");
    assert!(a.live.is_empty());
    assert!(store.list().unwrap().is_empty());
    let (text, is_error) = a.status.clone().unwrap();
    assert!(is_error && text.contains("invalid"), "{text}");
    // The learning rate takes e-notation.
    key(&mut a, KeyCode::Esc);
    key(&mut a, KeyCode::Char('/'));
    keys(&mut a, "learning_rate");
    key(&mut a, KeyCode::Enter);
    key(&mut a, KeyCode::Enter);
    a.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    keys(&mut a, "3e-4");
    key(&mut a, KeyCode::Enter);
    let exp_err = a.editor.as_ref().unwrap().build();
    assert!(exp_err.is_err(), "num_layers = 0 is still there");
    // Saving writes a config that loads.
    key(&mut a, KeyCode::Char('/'));
    keys(&mut a, "num_layers");
    key(&mut a, KeyCode::Enter);
    key(&mut a, KeyCode::Char('u'));
    let exp = a.editor.as_ref().unwrap().build().unwrap();
    assert_eq!(exp.train.learning_rate, 3e-4);
    assert_eq!(exp.model.num_layers, 4);
    let out = tempfile::tempdir().unwrap();
    a.workdir = out.path().to_path_buf();
    key(&mut a, KeyCode::Char('w'));
    key(&mut a, KeyCode::Enter);
    let saved = config::load(&out.path().join("configs/demo-pretrain.toml")).unwrap();
    assert_eq!(saved, exp);
}

#[test]
fn learning_rate_keys_send_the_controls() {
    let (_d, store) = store();
    let mut a = app(&store);
    let id = "20261203-100000-demo";
    let (tx, ctl) = live_run(&mut a, &store, id);
    for e in script(id, 5, 8.0, false) {
        tx.send(e).unwrap();
    }
    a.tick();
    key(&mut a, KeyCode::Char('+'));
    assert_eq!(ctl.try_recv(), Ok(Control::ScaleLr { factor: 1.25 }));
    key(&mut a, KeyCode::Char('-'));
    assert_eq!(ctl.try_recv(), Ok(Control::ScaleLr { factor: 0.8 }));
    // The exact entry: a bad value is refused in place, a good one sent.
    key(&mut a, KeyCode::Char('L'));
    a.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    keys(&mut a, "fast");
    key(&mut a, KeyCode::Enter);
    assert!(ctl.try_recv().is_err());
    assert!(a.modal.is_some(), "the entry stays open with its error");
    insta::assert_snapshot!("dashboard_lr_entry_error_80x24", screen(&a, &store, 80, 24));
    a.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    keys(&mut a, "3e-4");
    key(&mut a, KeyCode::Enter);
    assert_eq!(ctl.try_recv(), Ok(Control::SetLr { lr: 3e-4 }));
    // Pause, sample, checkpoint; stop asks first.
    keys(&mut a, "psc");
    assert_eq!(ctl.try_recv(), Ok(Control::Pause));
    assert_eq!(ctl.try_recv(), Ok(Control::SampleNow));
    assert_eq!(ctl.try_recv(), Ok(Control::CheckpointNow));
    key(&mut a, KeyCode::Char('x'));
    assert!(
        ctl.try_recv().is_err(),
        "stop went out without a confirmation"
    );
    key(&mut a, KeyCode::Char('y'));
    assert_eq!(ctl.try_recv(), Ok(Control::Stop));
    // The worker's echo lands on the chart as a mark.
    tx.send(TrainEvent::Paused {
        step: 5,
        reason: "paused by the user".into(),
        time: T0 + 20.0,
    })
    .unwrap();
    tx.send(TrainEvent::LrChanged {
        step: 5,
        from: 1e-3,
        to: 3e-4,
        by: LrSource::User,
        time: T0 + 21.0,
    })
    .unwrap();
    a.tick();
    let h = a.dashboard_history().unwrap();
    assert_eq!(h.lr_marks.last().unwrap().to, 3e-4);
    assert_eq!(h.lr, Some(3e-4));
    // With the run paused, p resumes.
    key(&mut a, KeyCode::Char('p'));
    assert_eq!(ctl.try_recv(), Ok(Control::Resume));
}

#[test]
fn quitting_while_a_run_trains_asks_first() {
    let (_d, store) = store();
    let mut a = app(&store);
    let (tx, _ctl) = live_run(&mut a, &store, "20261203-100000-demo");
    for e in script("20261203-100000-demo", 3, 8.0, false) {
        tx.send(e).unwrap();
    }
    a.tick();
    key(&mut a, KeyCode::Char('q'));
    assert_eq!(a.quit, None);
    insta::assert_snapshot!("quit_while_training_80x24", screen(&a, &store, 80, 24));
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.quit, None);
    assert!(a.modal.is_none());
    key(&mut a, KeyCode::Char('q'));
    key(&mut a, KeyCode::Char('s'));
    assert_eq!(a.quit, Some(QuitChoice::StopRuns));
    // Once the worker has ended, q quits at once.
    let mut b = app(&store);
    let (tx, _ctl) = live_run(&mut b, &store, "20261203-100001-demo");
    drop(tx);
    b.tick();
    key(&mut b, KeyCode::Char('q'));
    assert_eq!(b.quit, Some(QuitChoice::Plain));
}

#[test]
fn every_screen_draws_at_every_size_without_panicking() {
    let (_d, store) = store();
    three_runs(&store);
    let mut a = app(&store);
    let (tx, _ctl) = live_run(&mut a, &store, "20261203-100000-demo");
    for e in script("20261203-100000-demo", 60, 8.0, false) {
        tx.send(e).unwrap();
    }
    a.tick();
    let small = screen(&a, &store, 79, 24);
    assert!(small.contains("at least 80x24"), "{small}");
    for screen_to in [
        Screen::Runs,
        Screen::Dashboard,
        Screen::Editor,
        Screen::Compare,
    ] {
        match screen_to {
            Screen::Editor => {
                a.open_demo();
            }
            Screen::Compare => {
                a.screen = Screen::Runs;
                a.refresh_runs();
                a.runs.marked = a.runs.all.iter().map(|r| r.id.clone()).collect();
                key(&mut a, KeyCode::Char('c'));
            }
            other => a.screen = other,
        }
        assert_eq!(a.screen, screen_to);
        for (w, h) in [
            (1, 1),
            (20, 5),
            (80, 24),
            (81, 25),
            (100, 30),
            (133, 41),
            (240, 70),
        ] {
            screen(&a, &store, w, h);
        }
        key(&mut a, KeyCode::Char('?'));
        screen(&a, &store, 80, 24);
        key(&mut a, KeyCode::Esc);
    }
}

#[test]
fn no_color_draws_without_colours() {
    let (_d, store) = store();
    let mut a = app(&store);
    a.theme = Theme::monochrome();
    let (tx, _ctl) = live_run(&mut a, &store, "20261203-100000-demo");
    for e in script("20261203-100000-demo", 30, 8.0, false) {
        tx.send(e).unwrap();
    }
    a.tick();
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| a.render(f)).unwrap();
    let buf = terminal.backend().buffer();
    for cell in buf.content() {
        assert_eq!(cell.fg, ratatui::style::Color::Reset);
        assert_eq!(cell.bg, ratatui::style::Color::Reset);
    }
    // The theme key says why it does nothing.
    key(&mut a, KeyCode::Char('t'));
    assert!(a.status.as_ref().unwrap().0.contains("NO_COLOR"));
}

#[test]
fn a_classification_runs_dashboard_draws_its_confusion_matrix_as_a_heat_table() {
    let (_d, store) = store();
    let mut a = app(&store);
    let id = "20261205-100000-classify";
    let (tx, _ctl) = live_run(&mut a, &store, id);
    for e in classification_script(id, 60, 0.9) {
        tx.send(e).unwrap();
    }
    a.tick();
    a.memory = Some(1_288_490_189);
    let h = a.dashboard_history().unwrap();
    let (step, report) = h.last_classification.as_ref().unwrap();
    assert_eq!(*step, 60);
    assert_eq!(report.labels, LABELS);
    insta::assert_snapshot!("dashboard_classification_80x24", screen(&a, &store, 80, 24));
    insta::assert_snapshot!(
        "dashboard_classification_160x48",
        screen(&a, &store, 160, 48)
    );

    // The cells are shaded by their share of the row: the diagonal (most
    // of the row) is hotter than a mistake, and a zero has no shade.
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| a.render(f)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let (x0, y0) = find(&buf, "tgt").expect("the matrix header");
    // The neutral row: 0 negative, 27 neutral, 2 positive, 1 invalid.
    let neutral = y0 + 2;
    let reset = ratatui::style::Color::Reset;
    let at = |pattern: &str| cell_in_row(&buf, x0, neutral, pattern);
    assert_ne!(at("27").bg, reset);
    assert_ne!(
        at("27").bg,
        at(" 2 ").bg,
        "the diagonal and a mistake shade alike"
    );
    assert_ne!(at(" 1 ").bg, reset, "one invalid output is shaded");
    assert_eq!(at(" 0 ").bg, reset);

    // Without colour the matrix still reads: counts, and the big share reversed.
    a.theme = Theme::monochrome();
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| a.render(f)).unwrap();
    let buf = terminal.backend().buffer().clone();
    for cell in buf.content() {
        assert_eq!((cell.fg, cell.bg), (reset, reset));
    }
    let diagonal = cell_in_row(&buf, x0, neutral, "27");
    assert!(diagonal
        .modifier
        .contains(ratatui::style::Modifier::REVERSED));
    assert!(!cell_in_row(&buf, x0, neutral, " 2 ")
        .modifier
        .contains(ratatui::style::Modifier::REVERSED));
    a.theme = Theme::builtin("dark");

    // Too many labels for 80 columns: the panel says so instead.
    let many: Vec<String> = (0..14).map(|i| format!("label{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    tx.send(classification_eval(61, 2.0, T0 + 200.0, 0.5, &many))
        .unwrap();
    a.tick();
    let small = screen(&a, &store, 80, 24);
    assert!(small.contains("14 labels, too"), "{small}");
    let big = screen(&a, &store, 240, 70);
    assert!(big.contains("label13"), "{big}");
}

#[test]
fn compare_lines_up_the_task_metrics_of_classification_runs() {
    let (_d, store) = store();
    let a_id = "20261206-090000-classify-lr1e-3";
    let b_id = "20261206-100000-classify-lr3e-3";
    write_run(
        &store,
        a_id,
        &["train.learning_rate=1e-3"],
        &classification_script(a_id, 100, 0.6),
    );
    write_run(
        &store,
        b_id,
        &["train.learning_rate=3e-3"],
        &classification_script(b_id, 100, 0.9),
    );
    let mut a = app(&store);
    key(&mut a, KeyCode::Char(' '));
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Char(' '));
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.screen, Screen::Compare);
    key(&mut a, KeyCode::Tab);
    let text = screen(&a, &store, 80, 24);
    insta::assert_snapshot!("compare_classification_metrics_80x24", text);
    // The task's scores come first, under each run's name.
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("final and best"))
        .collect();
    for name in ["accuracy", "macro F1", "micro F1", "invalid"] {
        let row = rows
            .iter()
            .map(|l| l.trim_start_matches('│'))
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{text}"));
        let values = row[name.len()..]
            .split_whitespace()
            .filter(|v| v.parse::<f64>().is_ok())
            .count();
        assert_eq!(values, 2, "{name}: one value a run in {row:?}");
    }
}
