//! The run store on disk: creating and listing runs, status from events and
//! locks, the event log under crashes and write failures, checkpoints that
//! are whole or absent, and names that never escape the store.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use t5_tui::runs::{read_events, EventLog, EventSink, Run, RunStatus, RunStore, COMPLETE_MARKER};
use t5_tui::train::events::{FinishReason, TrainEvent};
use t5_tui::Error;

const CONFIG: &str = "name = \"tiny wiki\"\n\n[train]\nsteps = 10\n";

fn store() -> (tempfile::TempDir, RunStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    (dir, store)
}

fn started(step: u64, time: f64) -> TrainEvent {
    TrainEvent::Started {
        run: "r".into(),
        params: 1000,
        device: "cpu".into(),
        tokens_per_step: 64,
        step,
        total_steps: 100,
        resumed: step > 0,
        time,
    }
}

fn step(n: u64, loss: f64, tokens_per_sec: f64) -> TrainEvent {
    TrainEvent::Step {
        step: n,
        tokens_seen: n * 64,
        loss,
        lr: 1e-3,
        grad_norm: 0.5,
        tokens_per_sec,
        elapsed: n as f64,
        time: 100.0 + n as f64,
    }
}

fn eval(n: u64, loss: f64) -> TrainEvent {
    TrainEvent::Eval {
        step: n,
        loss,
        perplexity: loss.exp(),
        metrics: BTreeMap::from([("accuracy".to_string(), 0.5)]),
        classification: None,
        time: 100.0 + n as f64,
    }
}

fn finished(n: u64, reason: FinishReason) -> TrainEvent {
    TrainEvent::Finished {
        step: n,
        reason,
        time: 200.0,
    }
}

fn append_all(run: &Run, events: &[TrainEvent]) {
    let mut log = run.event_log().unwrap();
    for e in events {
        log.append(e).unwrap();
    }
}

fn is_invalid(r: t5_tui::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(Error::Invalid(_)))
}

#[test]
fn create_makes_the_folder_and_list_shows_it() {
    let (_tmp, store) = store();
    assert!(store.list().unwrap().is_empty(), "a missing runs/ is empty");

    let run = store.create("Tiny Wiki", CONFIG).unwrap();
    let id = run.id();
    // <YYYYMMDD-HHMMSS>-<slug>
    assert_eq!(id.len(), "20261203-141500-tiny-wiki".len(), "{id}");
    assert!(id[..8].bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(&id[8..9], "-");
    assert!(id[9..15].bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert!(id.ends_with("-tiny-wiki"), "{id}");
    assert_eq!(run.dir(), store.runs_dir().join(id));

    assert_eq!(std::fs::read_to_string(run.config_path()).unwrap(), CONFIG);
    assert!(run.checkpoints_dir().is_dir());
    assert!(run.export_dir().is_dir());
    assert_eq!(run.events_path(), run.dir().join("events.jsonl"));
    assert_eq!(run.tokenizer_path(), run.dir().join("tokenizer.json"));
    assert_eq!(run.name(), "tiny wiki");

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.id, id);
    assert_eq!(s.name, "tiny wiki");
    assert_eq!(s.status, RunStatus::New);
    assert_eq!(s.steps, 0);
    assert_eq!(s.best_val_loss, None);
    assert_eq!(s.last_checkpoint, None);
    assert!(s.started.is_some(), "folder time stands in for a start");
    assert_eq!(s.problem, None);

    // Opened again by id, it is the same run.
    assert_eq!(store.open(id).unwrap(), run);
}

#[test]
fn ids_are_unique() {
    let (_tmp, store) = store();
    let a = store.create("demo", CONFIG).unwrap();
    let b = store.create("demo", CONFIG).unwrap();
    let c = store.create("demo", CONFIG).unwrap();
    assert_ne!(a.id(), b.id());
    assert_ne!(b.id(), c.id());
    // Within one second they share a stamp and get suffixes; across a
    // second boundary they differ anyway.
    if a.id()[..15] == b.id()[..15] {
        assert_eq!(b.id(), format!("{}-2", a.id()));
    }
    let odd = store.create("日本語 only", CONFIG).unwrap();
    assert!(odd.id().ends_with("-only"), "{}", odd.id());
    let none = store.create("日本語", CONFIG).unwrap();
    assert!(none.id().ends_with("-run"), "{}", none.id());
    assert_eq!(store.list().unwrap().len(), 5);
}

#[test]
fn names_and_ids_never_escape_the_store() {
    let (tmp, store) = store();
    for name in ["../x", "/abs", "a/b", "a\\b", "a\0b", "..", "", "  "] {
        assert!(is_invalid(store.create(name, CONFIG)), "create {name:?}");
    }
    store.create("real", CONFIG).unwrap();
    for id in [
        "../x",
        "/abs",
        "..",
        ".",
        "a/../..",
        "a\0b",
        "",
        "runs/../..",
        "C:\\x",
    ] {
        assert!(is_invalid(store.open(id)), "open {id:?}");
        assert!(is_invalid(store.remove(id)), "remove {id:?}");
    }
    // A folder beside the store is not reachable by name.
    std::fs::create_dir_all(tmp.path().join("home/outside")).unwrap();
    assert!(store.open("../outside").is_err());
    // Nothing was made outside runs/.
    let mut beside: Vec<_> = std::fs::read_dir(tmp.path().join("home"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    assert_eq!(beside, ["outside", "runs"]);
    assert!(!tmp.path().join("x").exists());
    assert!(!Path::new("/abs").exists());

    let msg = store.open("../x").unwrap_err().to_string();
    assert!(msg.contains("is not a run id"), "{msg}");
    let missing = store.open("20260101-000000-nope").unwrap_err().to_string();
    assert!(missing.contains("no run 20260101-000000-nope"), "{missing}");
}

#[test]
fn status_follows_the_events() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    assert_eq!(run.status(), RunStatus::New);

    {
        let _lock = run.lock().unwrap();
        assert_eq!(run.status(), RunStatus::Running, "a held lock is running");
        append_all(&run, &[started(0, 50.0)]);
        assert_eq!(run.status(), RunStatus::Running);
    }
    // The process "died" without a terminal event and holds no lock.
    assert_eq!(run.status(), RunStatus::Crashed);

    append_all(
        &run,
        &[
            step(1, 3.0, 1000.0),
            step(2, 2.5, 1100.0),
            eval(2, 2.7),
            step(3, 2.0, 900.0),
            eval(3, 2.2),
            eval(3, f64::NAN),
            finished(3, FinishReason::Stopped),
        ],
    );
    assert_eq!(run.status(), RunStatus::Stopped);
    let s = run.summary();
    assert_eq!(s.status, RunStatus::Stopped);
    assert_eq!(s.steps, 3);
    assert_eq!(s.best_val_loss, Some(2.2));
    assert_eq!(s.tokens_per_sec, Some(1000.0), "median of 900, 1000, 1100");
    assert_eq!(s.started, Some(50.0));
    assert_eq!(s.problem, None);

    // Resumed: started again, and until it ends it is crashed when nobody
    // holds it.
    append_all(&run, &[started(3, 300.0), step(4, 1.9, 1000.0)]);
    assert_eq!(run.status(), RunStatus::Crashed);
    append_all(&run, &[finished(5, FinishReason::Completed)]);
    assert_eq!(run.status(), RunStatus::Finished);
    let s = run.summary();
    assert_eq!(s.steps, 5);
    assert_eq!(s.started, Some(50.0), "the first start");

    let failing = store.create("boom", CONFIG).unwrap();
    append_all(
        &failing,
        &[
            started(0, 60.0),
            TrainEvent::Failed {
                step: 0,
                error: "out of memory".into(),
                time: 61.0,
            },
        ],
    );
    assert_eq!(failing.status(), RunStatus::Failed);

    // Newest first, by first start: 60 after 50.
    let list = store.list().unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [failing.id(), run.id()]);
}

#[test]
fn a_torn_last_line_is_left_out_and_the_next_event_starts_fresh() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    append_all(&run, &[started(0, 1.0), step(1, 2.0, 10.0)]);
    // A crash in the middle of writing a line.
    let whole = serde_json::to_string(&step(2, 1.0, 10.0)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.events_path())
        .unwrap();
    f.write_all(&whole.as_bytes()[..25]).unwrap();
    drop(f);

    let read = read_events(&run.events_path()).unwrap();
    assert_eq!(read.events, vec![started(0, 1.0), step(1, 2.0, 10.0)]);
    assert!(read.torn_last_line);
    assert!(read.bad_lines.is_empty());
    let s = &store.list().unwrap()[0];
    assert_eq!(s.status, RunStatus::Crashed);
    assert_eq!(s.steps, 1);
    assert!(s.problem.as_deref().unwrap().contains("cut short"), "{s:?}");

    // Resumed: the new events are not glued onto the torn line.
    append_all(
        &run,
        &[started(1, 5.0), finished(2, FinishReason::Completed)],
    );
    let read = read_events(&run.events_path()).unwrap();
    assert_eq!(
        read.events,
        vec![
            started(0, 1.0),
            step(1, 2.0, 10.0),
            started(1, 5.0),
            finished(2, FinishReason::Completed)
        ]
    );
    assert!(!read.torn_last_line);
    assert_eq!(read.bad_lines, vec![3], "the torn line is now a bad line");
    assert_eq!(run.status(), RunStatus::Finished);
}

#[test]
fn a_bad_middle_line_is_reported_by_number() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    let lines = [
        serde_json::to_string(&started(0, 1.0)).unwrap(),
        "{\"event\":\"no_such_event\",\"step\":1}".to_string(),
        "\u{1}garbage".to_string(),
        serde_json::to_string(&step(1, 2.0, 10.0)).unwrap(),
        String::new(),
        serde_json::to_string(&finished(1, FinishReason::Completed)).unwrap(),
    ];
    std::fs::write(run.events_path(), lines.join("\n") + "\n").unwrap();
    // Bytes that are not UTF-8 are one more bad line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.events_path())
        .unwrap();
    f.write_all(b"\xff\xfe\n").unwrap();
    drop(f);

    let read = read_events(&run.events_path()).unwrap();
    assert_eq!(read.events.len(), 3);
    assert_eq!(read.bad_lines, vec![2, 3, 7]);
    assert!(!read.torn_last_line);
    let s = run.summary();
    assert_eq!(s.status, RunStatus::Finished);
    let problem = s.problem.unwrap();
    assert!(problem.contains("lines 2, 3, 7"), "{problem}");
}

#[test]
fn list_survives_broken_folders_and_stray_files() {
    let (_tmp, store) = store();
    let good = store.create("good", CONFIG).unwrap();
    let runs = store.runs_dir();
    std::fs::write(runs.join("notes.txt"), "not a run").unwrap();
    std::fs::write(runs.join(".DS_Store"), [0u8, 1, 2]).unwrap();
    std::fs::create_dir(runs.join(".hidden")).unwrap();
    // Half made: no config.toml.
    std::fs::create_dir(runs.join("20260101-000000-half")).unwrap();
    // A config that is not TOML, and an event log of binary noise.
    let noisy = runs.join("20260101-000001-noisy");
    std::fs::create_dir(&noisy).unwrap();
    std::fs::write(noisy.join("config.toml"), "[[[").unwrap();
    std::fs::write(noisy.join("events.jsonl"), [0xffu8, 0, 0x80, b'\n', 7]).unwrap();
    std::fs::create_dir_all(noisy.join("checkpoints/step-x")).unwrap();
    // events.jsonl that is a folder.
    let odd = runs.join("20260101-000002-odd");
    std::fs::create_dir_all(odd.join("events.jsonl")).unwrap();
    std::fs::write(odd.join("config.toml"), CONFIG).unwrap();

    let list = store.list().unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(list.len(), 4, "{ids:?}");
    let get = |id: &str| list.iter().find(|s| s.id == id).unwrap();
    assert_eq!(get(good.id()).problem, None);
    let half = get("20260101-000000-half");
    assert_eq!(half.name, "half");
    assert_eq!(half.status, RunStatus::New);
    assert!(half.problem.as_deref().unwrap().contains("no config.toml"));
    let noisy = get("20260101-000001-noisy");
    let p = noisy.problem.as_deref().unwrap();
    assert!(p.contains("not valid TOML"), "{p}");
    assert!(p.contains("line 1 is not an event"), "{p}");
    assert!(p.contains("cut short"), "{p}");
    let odd = get("20260101-000002-odd");
    assert!(odd
        .problem
        .as_deref()
        .unwrap()
        .contains("events.jsonl cannot be read"));
}

#[test]
fn a_failed_checkpoint_leaves_nothing() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    let err = run
        .write_checkpoint(10, 0, |dir| {
            std::fs::write(dir.join("model.safetensors"), b"half a model").unwrap();
            Err(Error::Other("disk full".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("disk full"));
    let left: Vec<_> = std::fs::read_dir(run.checkpoints_dir()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(run.latest_checkpoint(), None);

    let path = run
        .write_checkpoint(10, 0, |dir| {
            std::fs::write(dir.join("model.safetensors"), b"model").unwrap();
            std::fs::create_dir(dir.join("extra")).unwrap();
            std::fs::write(dir.join("extra/state.json"), b"{}").unwrap();
            Ok(())
        })
        .unwrap();
    assert_eq!(path, run.checkpoints_dir().join("step-10"));
    assert_eq!(
        std::fs::read(path.join("model.safetensors")).unwrap(),
        b"model"
    );
    assert!(path.join("extra/state.json").is_file());
    assert!(path.join(COMPLETE_MARKER).is_file());
    assert_eq!(run.latest_checkpoint(), Some((10, path.clone())));

    // The same step again replaces it whole.
    run.write_checkpoint(10, 0, |dir| {
        std::fs::write(dir.join("model.safetensors"), b"model v2").unwrap();
        Ok(())
    })
    .unwrap();
    assert_eq!(
        std::fs::read(path.join("model.safetensors")).unwrap(),
        b"model v2"
    );
    assert!(!path.join("extra").exists());
    let names: Vec<_> = std::fs::read_dir(run.checkpoints_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["step-10"]);
}

#[test]
fn latest_checkpoint_ignores_temporary_and_incomplete_folders() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    run.write_checkpoint(5, 0, |_| Ok(())).unwrap();
    let ck = run.checkpoints_dir();
    // A crash mid-write: a temporary folder with a marker, and a folder
    // under a final name without one.
    std::fs::create_dir(ck.join(".tmp-step-99-12345")).unwrap();
    std::fs::write(ck.join(".tmp-step-99-12345").join(COMPLETE_MARKER), "").unwrap();
    std::fs::create_dir(ck.join("step-50")).unwrap();
    std::fs::write(ck.join("step-50/model.safetensors"), "half").unwrap();
    std::fs::write(ck.join("step-70"), "a file, not a folder").unwrap();
    std::fs::create_dir(ck.join("step-abc")).unwrap();

    assert_eq!(run.latest_checkpoint(), Some((5, ck.join("step-5"))));
    assert_eq!(run.checkpoints().unwrap().len(), 1);
    assert_eq!(run.summary().last_checkpoint, Some(5));

    // Opening the run for writing clears the stale temporary folder.
    let _lock = run.lock().unwrap();
    assert!(!ck.join(".tmp-step-99-12345").exists());
    assert!(
        ck.join("step-50").exists(),
        "only .tmp-* folders are cleared"
    );
}

#[test]
fn pruning_keeps_the_newest() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    for s in 1..=5u64 {
        run.write_checkpoint(s * 100, 2, |dir| {
            std::fs::write(dir.join("model.safetensors"), s.to_string()).unwrap();
            Ok(())
        })
        .unwrap();
    }
    let steps: Vec<u64> = run.checkpoints().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, [400, 500]);
    let names = std::fs::read_dir(run.checkpoints_dir()).unwrap().count();
    assert_eq!(names, 2, "no leftovers from pruning");

    // An older step written after newer ones is still kept itself.
    run.write_checkpoint(50, 2, |_| Ok(())).unwrap();
    let steps: Vec<u64> = run.checkpoints().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, [50, 500]);

    // keep_last 0 keeps all.
    let all = store.create("all", CONFIG).unwrap();
    for s in 1..=4u64 {
        all.write_checkpoint(s, 0, |_| Ok(())).unwrap();
    }
    assert_eq!(all.checkpoints().unwrap().len(), 4);
}

#[test]
fn a_second_lock_fails_until_the_first_is_dropped() {
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    assert!(!run.is_locked());
    let lock = run.lock().unwrap();
    assert_eq!(lock.run_id(), run.id());
    assert!(run.is_locked());
    assert_eq!(run.lock_holder(), Some(Some(std::process::id())));

    let err = run.lock().unwrap_err();
    match &err {
        Error::RunInUse { id, pid } => {
            assert_eq!(id, run.id());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "run {} is in use by process {}",
            run.id(),
            std::process::id()
        )),
        "{msg}"
    );
    assert!(msg.contains("stop it first"), "{msg}");
    // Another handle to the same run sees it too.
    let again = store.open(run.id()).unwrap();
    assert!(again.lock().is_err());

    // Removing is refused while it is held.
    assert!(matches!(
        store.remove(run.id()),
        Err(Error::RunInUse { .. })
    ));
    assert!(run.dir().exists());

    drop(lock);
    assert!(!run.is_locked());
    assert_eq!(run.lock_holder(), None);
    let relocked = run.lock().unwrap();
    drop(relocked);

    store.remove(run.id()).unwrap();
    assert!(!run.dir().exists());
    assert!(store.list().unwrap().is_empty());
    assert!(store.open(run.id()).is_err());
}

/// The lock held by another process: this test binary run again, as a child
/// that takes the lock and waits. Killing it (SIGKILL on Unix) frees the
/// lock: a dead process never leaves a stale one.
#[test]
fn a_lock_held_by_another_process() {
    if let Ok(dir) = std::env::var("T5_TUI_TEST_LOCK_CHILD") {
        let store = RunStore::at(dir);
        let id = std::env::var("T5_TUI_TEST_LOCK_RUN").unwrap();
        let run = store.open(&id).unwrap();
        let _lock = run.lock().unwrap();
        println!("LOCKED {}", std::process::id());
        io::stdout().flush().unwrap();
        // Hold it until the parent kills us (or gives up).
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }

    let (_tmp, store) = store();
    let run = store.create("shared", CONFIG).unwrap();
    append_all(&run, &[started(0, 1.0)]);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_lock_held_by_another_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("T5_TUI_TEST_LOCK_CHILD", store.root())
        .env("T5_TUI_TEST_LOCK_RUN", run.id())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pid = None;
    for line in io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest may print "test … ... " before it on the same line.
        if let Some((_, p)) = line.split_once("LOCKED ") {
            pid = Some(p.trim().parse::<u32>().unwrap());
            break;
        }
    }
    let pid = pid.expect("the child took the lock");
    assert_eq!(pid, child.id());

    let result = run.lock();
    let status = run.status();
    child.kill().unwrap();
    child.wait().unwrap();

    let err = result.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("in use by process {pid}")),
        "{err}"
    );
    assert_eq!(status, RunStatus::Running);
    // Killed: no stale lock, and the run reads as crashed.
    assert_eq!(run.status(), RunStatus::Crashed);
    run.lock().unwrap();
}

/// A sink that takes `budget` bytes, then fails in the middle of a write.
#[derive(Clone)]
struct FlakySink {
    bytes: Arc<Mutex<Vec<u8>>>,
    budget: Arc<Mutex<usize>>,
    can_truncate: bool,
}

impl Write for FlakySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut budget = self.budget.lock().unwrap();
        if *budget == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(*budget);
        *budget -= n;
        self.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl EventSink for FlakySink {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        if !self.can_truncate {
            return Err(io::ErrorKind::Unsupported.into());
        }
        self.bytes.lock().unwrap().truncate(len as usize);
        Ok(())
    }
}

fn flaky_log_roundtrip(can_truncate: bool) -> t5_tui::runs::EventsRead {
    let sink = FlakySink {
        bytes: Arc::default(),
        budget: Arc::new(Mutex::new(usize::MAX)),
        can_truncate,
    };
    let mut log = EventLog::with_sink(sink.clone(), "events.jsonl");
    log.append(&started(0, 1.0)).unwrap();
    log.append(&step(1, 2.0, 10.0)).unwrap();
    // The disk fills up part way through the next line.
    *sink.budget.lock().unwrap() = 20;
    let err = log.append(&step(2, 1.5, 10.0)).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    let err = log.append(&step(3, 1.4, 10.0)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Space again.
    *sink.budget.lock().unwrap() = usize::MAX;
    log.append(&step(4, 1.0, 10.0)).unwrap();
    log.append(&finished(4, FinishReason::Completed)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, &*sink.bytes.lock().unwrap()).unwrap();
    let read = read_events(&path).unwrap();
    assert_eq!(
        read.events,
        vec![
            started(0, 1.0),
            step(1, 2.0, 10.0),
            step(4, 1.0, 10.0),
            finished(4, FinishReason::Completed)
        ]
    );
    assert!(!read.torn_last_line);
    read
}

#[test]
fn a_failed_append_is_an_error_and_never_glues_lines() {
    // A sink that can cut the partial line off again leaves no trace.
    let read = flaky_log_roundtrip(true);
    assert!(read.bad_lines.is_empty(), "{read:?}");
    // One that cannot: the fragment stays as one bad line of its own.
    let read = flaky_log_roundtrip(false);
    assert_eq!(read.bad_lines, vec![3], "{read:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn writing_to_a_full_device_is_an_error() {
    let mut log = EventLog::open(Path::new("/dev/full")).unwrap();
    let err = log.append(&started(0, 1.0)).unwrap_err();
    assert!(err.to_string().contains("/dev/full"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_read_only_event_log_cannot_be_opened_and_keeps_its_lines() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, store) = store();
    let run = store.create("demo", CONFIG).unwrap();
    append_all(&run, &[started(0, 1.0)]);
    let path = run.events_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let opened = EventLog::open(&path);
    // Root ignores file modes; then there is nothing to check.
    if let Err(err) = opened {
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert_eq!(read_events(&path).unwrap().events, vec![started(0, 1.0)]);
    }
}

#[test]
fn the_home_variable_moves_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("T5_TUI_HOME", tmp.path());
    let store = RunStore::open_default().unwrap();
    std::env::remove_var("T5_TUI_HOME");
    assert_eq!(store.root(), tmp.path());
    assert_eq!(store.runs_dir(), tmp.path().join("runs"));
}
