//! Faults done for real to a headless training process: `kill -9` at
//! random moments, again and again, each time resumed. Afterwards the run
//! lists as crashed, its event log parses (a torn last line is ignored and
//! reported, nothing else is bad), every checkpoint that looks whole
//! loads, and the run finishes with every step trained. Also SIGTERM: a
//! graceful stop with a final checkpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use t5_tui::runs::{read_events, RunStatus, RunStore};
use t5_tui::train::TrainEvent;

const STEPS: u64 = 600;
/// How many times the training process is killed.
const KILLS: usize = 30;

fn write_experiment(dir: &Path) {
    common::write_tiny_experiment(
        dir,
        "faults",
        STEPS,
        "[eval]\nevery_steps = 0\nsamples_every_steps = 0\n[checkpoint]\nevery_steps = 7\nkeep_last = 2",
    );
}

fn t5_tui(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_t5-tui"))
        .args(args)
        .current_dir(dir)
        .env("T5_TUI_HOME", dir.join("home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("t5-tui starts")
}

/// Waits until the run's log has at least `n` step events.
fn wait_for_steps(events: &Path, n: usize) {
    for _ in 0..2400 {
        let steps = std::fs::read_to_string(events)
            .unwrap_or_default()
            .matches("\"event\":\"step\"")
            .count();
        if steps >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the run never reached {n} steps");
}

fn check_whole(store: &RunStore, id: &str) {
    let run = store.open(id).unwrap();
    let read = read_events(&run.events_path()).unwrap();
    assert!(read.bad_lines.is_empty(), "bad lines {:?}", read.bad_lines);
    // Every checkpoint that looks whole is whole.
    for (step, dir) in run.checkpoints().unwrap() {
        let tensors = candle_core::safetensors::load(
            dir.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("checkpoint {step}: {e}"));
        assert!(!tensors.is_empty());
        candle_core::safetensors::load(
            dir.join("optimizer.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("checkpoint {step} optimizer: {e}"));
        let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&state).is_ok(),
            "{state}"
        );
    }
    // The listing never fails on it.
    assert!(store.list().unwrap().iter().any(|r| r.id == id));
}

#[test]
fn kill_9_at_random_moments_loses_no_run() {
    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let store = RunStore::at(dir.path().join("home"));
    let mut child = t5_tui(dir.path(), &["train", "exp.toml", "--headless"]);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let id = first.trim().to_string();
    let events = store.open(&id).unwrap().events_path();
    wait_for_steps(&events, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    let mut torn = 0;
    for _ in 0..KILLS {
        // Steps take milliseconds: a random moment lands in a step, an
        // append or a checkpoint write alike.
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let run = store.open(&id).unwrap();
        let read = read_events(&run.events_path()).unwrap();
        torn += usize::from(read.torn_last_line);
        let done = matches!(read.events.last(), Some(TrainEvent::Finished { .. }));
        if done {
            break;
        }
        assert_eq!(run.status(), RunStatus::Crashed, "after kill {kills}");
        check_whole(&store, &id);
        child = t5_tui(dir.path(), &["resume", &id]);
        let before = read.events.len();
        // Let the resumed process get going before the next kill.
        for _ in 0..400 {
            let now = read_events(&events).map(|r| r.events.len()).unwrap_or(0);
            if now > before + 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Let the last process finish, or resume one that was killed last.
    if child.try_wait().unwrap().is_some() || kills == KILLS {
        let _ = child.kill();
        let _ = child.wait();
        let mut last = t5_tui(dir.path(), &["resume", &id]);
        assert!(last.wait().unwrap().success());
    } else {
        assert!(child.wait().unwrap().success());
    }
    check_whole(&store, &id);
    let run = store.open(&id).unwrap();
    assert_eq!(run.status(), RunStatus::Finished);
    let read = read_events(&run.events_path()).unwrap();
    let mut trained: Vec<u64> = read
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => {
                assert!(loss.is_finite());
                Some(*step)
            }
            _ => None,
        })
        .collect();
    trained.sort_unstable();
    trained.dedup();
    assert_eq!(
        trained,
        (1..=STEPS).collect::<Vec<_>>(),
        "a step was never trained"
    );
    eprintln!("survived {kills} kill -9s ({torn} left a torn last line in events.jsonl)");
    assert!(
        kills >= 10,
        "only {kills} kills landed before the run finished"
    );
}

#[test]
fn sigterm_stops_with_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let store = RunStore::at(dir.path().join("home"));
    let mut child = t5_tui(
        dir.path(),
        &[
            "train",
            "exp.toml",
            "--headless",
            "--set",
            "train.steps=1000000",
        ],
    );
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let id = first.trim().to_string();
    let run = store.open(&id).unwrap();
    wait_for_steps(&run.events_path(), 10);
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let read = read_events(&run.events_path()).unwrap();
    let n = read.events.len();
    let TrainEvent::Finished { step, .. } = &read.events[n - 1] else {
        panic!("{:?}", read.events.last());
    };
    assert!(matches!(&read.events[n - 2], TrainEvent::Checkpoint { step: s, .. } if s == step));
    assert_eq!(run.status(), RunStatus::Stopped);
    assert_eq!(run.latest_checkpoint().unwrap().0, *step);
}
