//! The training worker end to end on a tiny model and a small corpus the
//! test writes: events, controls taking effect at the next step (and
//! landing in events.jsonl), exact resume, the divergence guard, export.

use std::path::Path;
use std::time::Duration;

use t5_tui::config::{self, Experiment};
use t5_tui::runs::{read_events, RunStore};
use t5_tui::train::{self, Control, FinishReason, LrSource, TrainEvent, TrainHandle};

/// A small English corpus: enough distinct sentences for a tokenizer of a
/// few hundred tokens and a validation split.
fn write_corpus(dir: &Path) -> std::path::PathBuf {
    let subjects = [
        "the cat",
        "a dog",
        "my friend",
        "the teacher",
        "our neighbour",
        "a child",
    ];
    let verbs = ["sees", "likes", "finds", "paints", "follows", "calls"];
    let objects = [
        "the river",
        "a red house",
        "the old tree",
        "a small boat",
        "the garden",
        "a bright star",
    ];
    let mut text = String::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            for (k, o) in objects.iter().enumerate() {
                text.push_str(&format!("{s} {v} {o} on day {}.\n", i * 36 + j * 6 + k));
            }
        }
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn experiment(dir: &Path, extra: &str, set: &[&str]) -> Experiment {
    write_corpus(dir);
    let text = format!(
        r#"
name = "tiny"
[model]
vocab_size = 128
d_model = 32
d_ff = 64
num_layers = 2
num_heads = 2
dropout_rate = 0.1
feed_forward_proj = "gated-gelu"
tie_word_embeddings = false
[tokenizer]
vocab_size = 90
extra_ids = 10
[data]
sources = ["corpus.txt"]
validation_fraction = 0.1
[objective]
input_length = 24
[train]
device = "cpu"
batch_size = 4
steps = 12
learning_rate = 1e-2
schedule = "constant"
warmup_steps = 0
[eval]
every_steps = 0
samples_every_steps = 0
[checkpoint]
every_steps = 4
keep_last = 2
{extra}
"#
    );
    config::parse_str_with_overrides(&text, &dir.join("exp.toml"), set).unwrap()
}

fn start(store: &RunStore, exp: Experiment) -> TrainHandle {
    let toml = exp.to_toml().unwrap();
    train::start(store, exp, &toml).unwrap()
}

/// Every event until the worker ends.
fn drain(h: &TrainHandle) -> Vec<TrainEvent> {
    let mut events = Vec::new();
    loop {
        match h.recv_timeout(Duration::from_secs(120)) {
            Ok(e) => events.push(e),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return events,
            Err(e) => panic!("the worker went quiet: {e:?}; events so far {events:?}"),
        }
    }
}

fn losses(events: &[TrainEvent]) -> Vec<(u64, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => Some((*step, *loss)),
            _ => None,
        })
        .collect()
}

fn without_times(events: &[TrainEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap();
            for k in ["time", "elapsed", "tokens_per_sec"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v.to_string()
        })
        .collect()
}

#[test]
fn a_run_trains_reports_and_logs_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    let exp = experiment(
        dir.path(),
        "",
        &[
            "eval.every_steps=6",
            "eval.samples_every_steps=6",
            "eval.num_samples=2",
        ],
    );
    let h = start(&store, exp);
    let run_dir = h.run_dir.clone();
    let events = drain(&h);
    h.join();
    assert!(
        matches!(&events[..], [TrainEvent::Info { .. }, ..]),
        "{events:?}"
    );
    let started = events
        .iter()
        .find_map(|e| match e {
            TrainEvent::Started {
                params,
                total_steps,
                tokens_per_step,
                ..
            } => Some((*params, *total_steps, *tokens_per_step)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no started event: {events:?}"));
    assert!(started.0 > 10_000, "{started:?}");
    assert_eq!(started.1, 12);
    let l = losses(&events);
    assert_eq!(
        l.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(l.iter().all(|(_, x)| x.is_finite()));
    let first: f64 = l[..3].iter().map(|x| x.1).sum::<f64>() / 3.0;
    let last: f64 = l[9..].iter().map(|x| x.1).sum::<f64>() / 3.0;
    assert!(last < first, "loss did not fall: {l:?}");
    let evals = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval { .. }))
        .count();
    assert_eq!(evals, 2);
    let samples = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Sample { .. }))
        .count();
    assert_eq!(samples, 4);
    let checkpoints: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Checkpoint { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints, vec![4, 8, 12]);
    assert!(matches!(
        events.last(),
        Some(TrainEvent::Finished {
            step: 12,
            reason: FinishReason::Completed,
            ..
        })
    ));
    // The log holds the same events, in the same order.
    let logged = read_events(&run_dir.join("events.jsonl")).unwrap();
    assert!(logged.problem().is_none());
    assert_eq!(without_times(&logged.events), without_times(&events));
    // keep_last = 2 pruned the oldest checkpoint.
    let run = store
        .open(run_dir.file_name().unwrap().to_str().unwrap())
        .unwrap();
    let kept: Vec<u64> = run.checkpoints().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kept, vec![8, 12]);
    assert!(run.tokenizer_path().is_file());
}

#[test]
fn controls_take_effect_at_the_next_step_and_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    let exp = experiment(
        dir.path(),
        "",
        &["train.steps=100000", "checkpoint.every_steps=0"],
    );
    let h = start(&store, exp);
    let run_dir = h.run_dir.clone();
    let mut events = Vec::new();
    let next = |events: &mut Vec<TrainEvent>| {
        let e = h.recv_timeout(Duration::from_secs(120)).expect("an event");
        events.push(e.clone());
        e
    };
    // Wait for the first step, then change the learning rate.
    while !matches!(next(&mut events), TrainEvent::Step { step: 2, .. }) {}
    h.send(Control::SetLr { lr: 2.5e-3 });
    let changed_at = loop {
        match next(&mut events) {
            TrainEvent::LrChanged {
                step, from, to, by, ..
            } => {
                assert_eq!(by, LrSource::User);
                assert!((from - 1e-2).abs() < 1e-12);
                assert!((to - 2.5e-3).abs() < 1e-12);
                break step;
            }
            TrainEvent::Step { lr, .. } => assert!((lr - 1e-2).abs() < 1e-12),
            _ => {}
        }
    };
    // The very next step trains with the new rate.
    match next(&mut events) {
        TrainEvent::Step { step, lr, .. } => {
            assert_eq!(step, changed_at + 1);
            assert!((lr - 2.5e-3).abs() < 1e-12, "{lr}");
        }
        other => panic!("expected the next step, got {other:?}"),
    }
    h.send(Control::ScaleLr { factor: 2.0 });
    loop {
        if let TrainEvent::LrChanged { to, .. } = next(&mut events) {
            assert!((to - 5e-3).abs() < 1e-12);
            break;
        }
    }
    // Pause: no step until resumed.
    h.send(Control::Pause);
    let paused_at = loop {
        if let TrainEvent::Paused { step, .. } = next(&mut events) {
            break step;
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(h.try_recv().is_err(), "a paused run kept training");
    h.send(Control::Resume);
    assert!(matches!(next(&mut events), TrainEvent::Resumed { step, .. } if step == paused_at));
    assert!(matches!(next(&mut events), TrainEvent::Step { step, .. } if step == paused_at + 1));
    // Stop: a checkpoint of the step it stopped at, then finished.
    h.send(Control::Stop);
    events.extend(drain(&h));
    h.join();
    let n = events.len();
    let (ck, fin) = (&events[n - 2], &events[n - 1]);
    let TrainEvent::Finished {
        step: stopped_at,
        reason: FinishReason::Stopped,
        ..
    } = fin
    else {
        panic!("expected finished(stopped), got {fin:?}");
    };
    assert!(matches!(ck, TrainEvent::Checkpoint { step, .. } if step == stopped_at));
    // All of it is in events.jsonl.
    let logged = read_events(&run_dir.join("events.jsonl")).unwrap();
    assert_eq!(without_times(&logged.events), without_times(&events));
    let id = run_dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        store.open(id).unwrap().status(),
        t5_tui::runs::RunStatus::Stopped
    );
}

#[test]
fn a_resumed_run_logs_the_same_losses_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    // Dropout on, so that the RNG's position matters too.
    let exp = experiment(
        dir.path(),
        "",
        &["train.schedule=\"cosine\"", "train.warmup_steps=3"],
    );
    let whole = start(&store, exp.clone());
    let whole_losses = losses(&drain(&whole));
    whole.join();
    assert_eq!(whole_losses.len(), 12);

    // The same run stopped early (after a checkpoint that is not the last
    // one), then resumed.
    let h = start(&store, exp);
    let id = h.run_id.clone();
    let mut first = Vec::new();
    loop {
        let e = h.recv_timeout(Duration::from_secs(120)).unwrap();
        let stop = matches!(e, TrainEvent::Step { step: 5, .. });
        first.push(e);
        if stop {
            h.send(Control::Stop);
            break;
        }
    }
    first.extend(drain(&h));
    h.join();
    let stopped_at = losses(&first).last().unwrap().0;
    assert!(stopped_at < 12);
    let r = train::resume(&store, &id, &[], None).unwrap();
    let second = drain(&r);
    r.join();
    assert!(matches!(
        second.iter().find(|e| matches!(e, TrainEvent::Started { .. })),
        Some(TrainEvent::Started { resumed: true, step, .. }) if *step == stopped_at
    ));
    let mut resumed = losses(&first);
    resumed.extend(losses(&second));
    assert_eq!(resumed.len(), 12, "{resumed:?}");
    // Bit-identical on CPU: same kernels, same thread count, same order.
    for ((s1, a), (s2, b)) in whole_losses.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert_eq!(a.to_bits(), b.to_bits(), "step {s1}: {a} vs {b}");
    }
}

#[test]
fn a_diverging_run_skips_bad_steps_and_pauses_with_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    // A learning rate this large sends AdamW's weights (and the loss) to
    // infinity within a few steps.
    let exp = experiment(
        dir.path(),
        "",
        &[
            "train.learning_rate=1e30",
            "train.grad_clip=0.0",
            "train.steps=200",
            "train.max_bad_steps=2",
            "checkpoint.every_steps=0",
        ],
    );
    let h = start(&store, exp);
    let mut events = Vec::new();
    loop {
        let e = h.recv_timeout(Duration::from_secs(120)).unwrap();
        let paused = matches!(e, TrainEvent::Paused { .. });
        events.push(e);
        if paused {
            break;
        }
    }
    let warnings = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Warning { message, .. } if message.contains("skipped")))
        .count();
    assert_eq!(warnings, 2, "{events:?}");
    // A checkpoint asked for is written (the weights as they are); the
    // stop then writes none over it, the weights being diverged.
    h.send(Control::CheckpointNow);
    h.send(Control::Stop);
    let rest = drain(&h);
    h.join();
    let checkpoints: Vec<_> = rest
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Checkpoint { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints.len(), 1, "{rest:?}");
    assert!(rest.iter().any(
        |e| matches!(e, TrainEvent::Warning { message, .. } if message.contains("no checkpoint written"))
    ));
    let ck = checkpoints[0].clone();
    let tensors =
        candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (name, t) in tensors {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| !x.is_nan()), "{name} took a NaN");
    }
}

#[test]
fn an_exported_run_loads_as_a_model_folder_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    let exp = experiment(dir.path(), "", &["train.steps=4"]);
    let h = start(&store, exp);
    let id = h.run_id.clone();
    drain(&h);
    h.join();
    let cpu = candle_core::Device::Cpu;
    let from_run = train::TrainedModel::open(&store, &id, &cpu).unwrap();
    let out = dir.path().join("export");
    from_run.export(&out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let from_dir = train::TrainedModel::open(&store, out.to_str().unwrap(), &cpu).unwrap();
    let prompt = vec![from_run
        .tokenizer
        .encode("the cat sees a red house")
        .unwrap()];
    let opts = t5_tui::model::generate::GenerateOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    let a = t5_tui::model::generate::generate(&from_run.model, &prompt, &opts).unwrap();
    let b = t5_tui::model::generate::generate(&from_dir.model, &prompt, &opts).unwrap();
    assert_eq!(a, b);
    // A run id prefix finds the run; a made-up one is a clear error.
    assert!(train::TrainedModel::open(&store, &id[..id.len() - 2], &cpu).is_ok());
    let e = train::TrainedModel::open(&store, "no-such-run", &cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no run no-such-run"), "{e}");
}

#[test]
fn bf16_compute_tracks_f32_and_keeps_f32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    let f32_run = start(&store, experiment(dir.path(), "", &[]));
    let f32_losses = losses(&drain(&f32_run));
    f32_run.join();
    let h = start(
        &store,
        experiment(dir.path(), "", &["train.dtype=\"bf16\""]),
    );
    let run_dir = h.run_dir.clone();
    let events = drain(&h);
    h.join();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, TrainEvent::Warning { .. })),
        "{events:?}"
    );
    let bf16_losses = losses(&events);
    assert_eq!(bf16_losses.len(), f32_losses.len());
    for ((s, a), (_, b)) in f32_losses.iter().zip(&bf16_losses) {
        assert!(b.is_finite(), "step {s}: {b}");
        // bf16 keeps about three significant digits: the two runs part
        // slowly, never by much over a dozen steps.
        assert!(
            (a - b).abs() / a.abs() < 0.05,
            "step {s}: f32 {a} vs bf16 {b}"
        );
        assert!(
            a.to_bits() != b.to_bits() || *s == 0,
            "step {s}: bf16 computed in f32"
        );
    }
    let first: f64 = bf16_losses[..3].iter().map(|x| x.1).sum();
    let last: f64 = bf16_losses[9..].iter().map(|x| x.1).sum();
    assert!(last < first, "{bf16_losses:?}");
    // The checkpoint holds the f32 master weights.
    let id = run_dir.file_name().unwrap().to_str().unwrap();
    let (_, ck) = store.open(id).unwrap().latest_checkpoint().unwrap();
    let tensors =
        candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(tensors
        .values()
        .all(|t| t.dtype() == candle_core::DType::F32));
}

#[test]
fn f16_trains_with_dynamic_loss_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::at(dir.path().join("home"));
    let h = start(&store, experiment(dir.path(), "", &["train.dtype=\"f16\""]));
    let events = drain(&h);
    h.join();
    // Overflows at a too-large scale are skipped steps, never a pause.
    for e in &events {
        match e {
            TrainEvent::Warning { message, .. } => {
                assert!(message.contains("loss scale"), "{message}")
            }
            TrainEvent::Paused { .. } | TrainEvent::Failed { .. } => panic!("{e:?}"),
            _ => {}
        }
    }
    let l = losses(&events);
    assert_eq!(l.len(), 12);
    assert!(l.iter().all(|(_, x)| x.is_finite()), "{l:?}");
    let first: f64 = l[..3].iter().map(|x| x.1).sum();
    let last: f64 = l[9..].iter().map(|x| x.1).sum();
    assert!(last < first, "f16 did not learn: {l:?}");
    assert!(matches!(
        events.last(),
        Some(TrainEvent::Finished {
            reason: FinishReason::Completed,
            ..
        })
    ));
}
