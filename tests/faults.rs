//! Faults done for real to a headless training process: `kill -9` at
//! random moments, again and again, each time resumed. Afterwards the run
//! lists as crashed, its event log parses (a torn last line is ignored and
//! reported, nothing else is bad), every checkpoint that looks whole
//! loads, and the run finishes with every step trained. Also SIGTERM: a
//! graceful stop with a final checkpoint; a full disk (injected through
//! `T5_TUI_FAULT_DISK_FULL`, which debug builds honour): the run pauses,
//! leaves no half file, and resumes once space is freed; a second resume
//! of a training run, stopped by the lock; a divergence: no NaN weights, a
//! pause, the last good checkpoint kept, and `resume --lr` rolls back to it.

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

/// `t5-tui ARGS` with stderr kept and extra environment.
fn t5_tui_with(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_t5-tui"));
    cmd.args(args)
        .current_dir(dir)
        .env("T5_TUI_HOME", dir.join("home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("t5-tui starts")
}

/// Reads the run id the headless commands print first; the rest of
/// stdout stays in the child for [`finish`].
fn first_line(child: &mut Child) -> String {
    let mut byte = [0u8; 1];
    let mut line = Vec::new();
    let stdout = child.stdout.as_mut().unwrap();
    // Byte by byte, so that nothing past the line is taken from the pipe.
    while std::io::Read::read(stdout, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap().trim().to_string()
}

/// Waits for the child: its exit code and stderr, with stdout (what is
/// left of it) appended after a line `--- stdout`.
fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}--- stdout\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

fn no_temporary_checkpoints(run: &t5_tui::runs::Run) {
    let left: Vec<_> = std::fs::read_dir(run.checkpoints_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "half-written checkpoints left: {left:?}");
}

/// Every weight of every checkpoint of the run is a number.
fn no_nan_weights(run: &t5_tui::runs::Run) {
    for (step, dir) in run.checkpoints().unwrap() {
        let tensors = candle_core::safetensors::load(
            dir.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        for (name, t) in tensors {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                v.iter().all(|x| !x.is_nan()),
                "{name} took a NaN at step {step}"
            );
        }
    }
}

#[test]
fn a_full_disk_pauses_the_run_without_half_files_and_resume_works_once_freed() {
    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let store = RunStore::at(dir.path().join("home"));
    let full = dir.path().join("disk-is-full");
    let env = [("T5_TUI_FAULT_DISK_FULL", full.as_path())];
    let mut child = t5_tui_with(
        dir.path(),
        &[
            "train",
            "exp.toml",
            "--headless",
            "--set",
            "train.steps=100000",
        ],
        &env,
    );
    let id = first_line(&mut child);
    let run = store.open(&id).unwrap();
    // Past a periodic checkpoint (every 7 steps).
    wait_for_steps(&run.events_path(), 16);
    std::fs::write(&full, "").unwrap();
    let (code, stderr) = finish(child);
    // The run paused on the failed write; headless, it was then stopped.
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("paused") && stderr.contains("no space left on device"),
        "{stderr}"
    );
    // The stop tried a final checkpoint, which the full disk refused.
    assert!(stderr.contains("failed: "), "{stderr}");
    assert!(
        stderr.contains("checkpoint at step") && stderr.contains("COMPLETE"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The stop's checkpoint failed too: nothing of it is left, the log has
    // no half line, and the checkpoints there are whole.
    no_temporary_checkpoints(&run);
    let read = read_events(&run.events_path()).unwrap();
    assert!(!read.torn_last_line && read.bad_lines.is_empty());
    check_whole(&store, &id);
    let (kept, _) = run
        .latest_checkpoint()
        .expect("the checkpoint before the disk filled");
    let last_logged = read
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, .. } => Some(*step),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(kept >= 7 && kept <= last_logged, "{kept} vs {last_logged}");

    // Space freed: the run resumes from that checkpoint and finishes.
    std::fs::remove_file(&full).unwrap();
    let target = (kept + 5).to_string();
    let child = t5_tui_with(dir.path(), &["resume", &id, "--steps", &target], &env);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    let read = read_events(&run.events_path()).unwrap();
    assert!(matches!(
        read.events.iter().rev().find(|e| matches!(e, TrainEvent::Started { .. })),
        Some(TrainEvent::Started { step, resumed: true, .. }) if *step == kept
    ));
    assert_eq!(run.status(), RunStatus::Finished);
    assert_eq!(run.latest_checkpoint().unwrap().0, kept + 5);
    check_whole(&store, &id);
}

#[test]
fn a_second_resume_of_a_training_run_is_refused_by_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let store = RunStore::at(dir.path().join("home"));
    let mut first = t5_tui_with(
        dir.path(),
        &["train", "exp.toml", "--headless", "--set", "train.steps=3"],
        &[],
    );
    let id = first_line(&mut first);
    assert_eq!(finish(first).0, 0);
    let run = store.open(&id).unwrap();
    let mut training = t5_tui_with(dir.path(), &["resume", &id, "--steps", "1000000"], &[]);
    assert_eq!(first_line(&mut training), id);
    wait_for_steps(&run.events_path(), 6);
    let second = t5_tui_with(dir.path(), &["resume", &id], &[]);
    let pid = training.id();
    let (code, output) = finish(second);
    assert_eq!(code, 1, "{output}");
    let stderr = output.split("--- stdout").next().unwrap();
    assert_eq!(
        stderr.trim(),
        format!(
            "error: run {id} is in use by process {pid} (the UI or another resume); stop it first"
        )
    );
    // The first goes on training, alone in the log.
    let read = read_events(&run.events_path()).unwrap();
    let resumes = read
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Started { resumed: true, .. }))
        .count();
    assert_eq!(resumes, 1);
    assert!(training.try_wait().unwrap().is_none());
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(finish(training).0, 0);
    assert_eq!(run.status(), RunStatus::Stopped);
}

#[test]
fn a_diverged_run_pauses_keeps_its_last_good_checkpoint_and_rolls_back_with_a_lower_lr() {
    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let store = RunStore::at(dir.path().join("home"));
    let mut child = t5_tui_with(
        dir.path(),
        &["train", "exp.toml", "--headless", "--set", "train.steps=4"],
        &[],
    );
    let id = first_line(&mut child);
    assert_eq!(finish(child).0, 0);
    let run = store.open(&id).unwrap();
    assert_eq!(run.latest_checkpoint().unwrap().0, 4);

    // A rate this large sends AdamW's weights, then the loss, to infinity.
    let child = t5_tui_with(
        dir.path(),
        &[
            "resume",
            &id,
            "--steps",
            "200",
            "--lr",
            "1e30",
            "--set",
            "train.grad_clip=0.0",
            "--set",
            "train.max_bad_steps=2",
        ],
        &[],
    );
    let (code, stderr) = finish(child);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("non-finite loss"), "{stderr}");
    let read = read_events(&run.events_path()).unwrap();
    let skipped = read
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Warning { message, .. } if message.contains("skipped")))
        .count();
    assert_eq!(skipped, 2);
    assert!(read
        .events
        .iter()
        .any(|e| matches!(e, TrainEvent::Paused { .. })));
    // Stopped without a checkpoint over the last good one.
    assert_eq!(run.latest_checkpoint().unwrap().0, 4);
    no_nan_weights(&run);

    // Rolled back to step 4 at a sane rate, it trains on.
    let child = t5_tui_with(
        dir.path(),
        &["resume", &id, "--steps", "12", "--lr", "1e-3"],
        &[],
    );
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    let read = read_events(&run.events_path()).unwrap();
    let start = read
        .events
        .iter()
        .rposition(|e| matches!(e, TrainEvent::Started { .. }))
        .unwrap();
    let after = &read.events[start..];
    assert!(matches!(after[0], TrainEvent::Started { step: 4, .. }));
    assert!(matches!(after[1], TrainEvent::LrChanged { to, .. } if (to - 1e-3).abs() < 1e-12));
    let losses: Vec<(u64, f64)> = after
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => Some((*step, *loss)),
            _ => None,
        })
        .collect();
    assert_eq!(losses.first().unwrap().0, 5);
    assert_eq!(losses.last().unwrap().0, 12);
    assert!(losses.iter().all(|(_, l)| l.is_finite()), "{losses:?}");
    assert_eq!(run.status(), RunStatus::Finished);
    no_nan_weights(&run);
}
