//! Evaluation of the four kinds of task end to end: the shipped
//! classification example trains a few steps on a tiny model and its eval
//! events carry the confusion matrix; `t5-tui eval` on that run prints the
//! metrics every kind reports, the per-label table and the confusion
//! matrix, and refuses malformed eval files with one clear line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use t5_tui::config;
use t5_tui::runs::RunStore;
use t5_tui::train::{self, TrainEvent};

/// The shipped example, shrunk to a model that trains in milliseconds a step.
const TINY: &[&str] = &[
    "model.d_model=32",
    "model.d_ff=64",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.device=cpu",
    "train.steps=8",
    "train.learning_rate=1e-2",
    "train.warmup_steps=0",
    "eval.every_steps=4",
    "eval.samples_every_steps=0",
    "checkpoint.every_steps=0",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One trained classification run shared by the tests of this file: its
/// store's folder, its id and the events its worker sent.
struct Trained {
    home: PathBuf,
    id: String,
    events: Vec<TrainEvent>,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        // Kept for the whole test process: the tests read the run after this.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let home = dir.path().join("home");
        let store = RunStore::at(&home);
        let path = crate_dir().join("configs/example-classify.toml");
        let exp = config::load_with_overrides(&path, TINY).unwrap();
        let toml = exp.to_toml().unwrap();
        let h = train::start(&store, exp, &toml).unwrap();
        let id = h.run_id.clone();
        let mut events = Vec::new();
        loop {
            match h.recv_timeout(Duration::from_secs(120)) {
                Ok(e) => events.push(e),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the worker went quiet: {e:?}; events so far {events:?}"),
            }
        }
        h.join();
        Trained { home, id, events }
    })
}

fn t5_tui(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_t5-tui"))
        .args(args)
        .env("T5_TUI_HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_classification_example_trains_and_its_evals_carry_the_confusion_matrix() {
    let t = trained();
    assert!(
        t.events
            .iter()
            .any(|e| matches!(e, TrainEvent::Finished { .. })),
        "{:?}",
        t.events.last()
    );
    let evals: Vec<&TrainEvent> = t
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval { .. }))
        .collect();
    assert_eq!(evals.len(), 2, "evals at steps 4 and 8");
    for e in &evals {
        let TrainEvent::Eval {
            loss,
            perplexity,
            metrics,
            classification,
            ..
        } = e
        else {
            unreachable!()
        };
        assert!(loss.is_finite() && (perplexity - loss.exp()).abs() < 1e-6 * perplexity);
        for key in [
            "token_accuracy",
            "gen_len",
            "gen_chars",
            "accuracy",
            "macro_f1",
            "micro_f1",
            "invalid",
        ] {
            assert!(metrics.contains_key(key), "{key} missing from {metrics:?}");
        }
        let c = classification.as_ref().expect("a confusion matrix");
        assert_eq!(c.labels, ["negative", "neutral", "positive"]);
        assert_eq!(c.per_label.len(), 3);
        // One row a label, one column a label plus the invalid column.
        assert_eq!(c.confusion.len(), 3);
        assert!(c.confusion.iter().all(|row| row.len() == 4));
        let counted: u64 = c.confusion.iter().flatten().sum();
        assert_eq!(counted, c.total);
        assert_eq!(c.invalid as f64, metrics["invalid"]);
        assert_eq!(c.accuracy, metrics["accuracy"]);
    }
    // The log on disk holds the same matrix, and reads back.
    let store = RunStore::at(&t.home);
    let read = store.open(&t.id).unwrap().read_events().unwrap();
    let logged: Vec<&TrainEvent> = read
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval { .. }))
        .collect();
    assert_eq!(logged, evals);
}

/// An eval file written into a fresh folder (the predictions land beside it).
fn data_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn eval_prints_every_kinds_metrics_and_the_confusion_matrix() {
    let t = trained();
    let text = std::fs::read(crate_dir().join("assets/tasks/classification.tsv")).unwrap();
    let (_d, path) = data_file("reviews.tsv", &text);
    let p = path.to_str().unwrap();
    let (code, out, err) = t5_tui(&t.home, &["eval", &t.id, "--data", p, "--limit", "30"]);
    assert_eq!(code, 0, "{err}");
    for row in [
        "task classification",
        "loss",
        "perplexity",
        "token_accuracy",
        "gen_len",
        "accuracy",
        "macro avg",
        "micro avg",
        "confusion matrix",
        "target \\ output",
        "invalid",
    ] {
        assert!(out.contains(row), "no {row:?} in\n{out}");
    }
    // The predictions stream to a file beside the data, one a pair.
    let predictions = std::fs::read_to_string(path.with_extension("predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 30);

    let (code, out, err) = t5_tui(
        &t.home,
        &["eval", &t.id, "--data", p, "--limit", "30", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v["classification"];
    assert_eq!(
        c["labels"],
        serde_json::json!(["negative", "neutral", "positive"])
    );
    let rows = c["confusion"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let total: u64 = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 30);
    assert_eq!(c["per_label"][0]["label"], "negative");
    assert!(c["per_label"][0]["scores"]["f1"].is_f64());

    // Every kind reports loss, perplexity, token accuracy and generation
    // length beside its own metrics.
    let kinds = [
        ("translation", "classification.tsv", "bleu"),
        ("summarization", "summarization.jsonl", "rougeL"),
        ("qa", "question_answering.jsonl", "f1"),
        ("classification", "classification.tsv", "accuracy"),
    ];
    for (task, file, metric) in kinds {
        let text = std::fs::read(crate_dir().join("assets/tasks").join(file)).unwrap();
        let (_d, path) = data_file(file, &text);
        let (code, out, err) = t5_tui(
            &t.home,
            &[
                "eval",
                &t.id,
                "--data",
                path.to_str().unwrap(),
                "--task",
                task,
                "--limit",
                "6",
                "--max-tokens",
                "6",
                "--json",
            ],
        );
        assert_eq!(code, 0, "{task}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for key in [
            "loss",
            "perplexity",
            "token_accuracy",
            "gen_len",
            "gen_chars",
        ] {
            assert!(v[key].is_number(), "{task}: no {key} in {v}");
        }
        assert!(
            v["metrics"][metric].is_number(),
            "{task}: no {metric} in {v}"
        );
        assert_eq!(
            v.get("classification").is_some(),
            task == "classification",
            "{task}: {v}"
        );
    }
}

#[test]
fn malformed_eval_files_get_one_clear_error_naming_the_file() {
    let t = trained();
    let cases: &[(&str, &[u8], &str, &[&str])] = &[
        (
            "no-tab.tsv",
            b"great kettle\tpositive\nbroken lamp, no label\n",
            "classification",
            &["no-tab.tsv:2:", "input<TAB>target"],
        ),
        (
            "no-target.jsonl",
            b"{\"input\": \"great kettle\", \"target\": \"positive\"}\n{\"input\": \"broken lamp\"}\n",
            "classification",
            &["no-target.jsonl:2:", "no field `target`"],
        ),
        (
            "empty.tsv",
            b"",
            "classification",
            &["empty.tsv:", "no (input, target) pairs", "empty"],
        ),
        (
            "blank.jsonl",
            b"\n\n",
            "summarization",
            &["blank.jsonl:", "no (input, target) pairs"],
        ),
        (
            "one-class.tsv",
            b"great kettle\tpositive\nlovely lamp\tpositive\nfine tent\t positive\n",
            "classification",
            &["one-class.tsv:", "\"positive\"", "at least two labels"],
        ),
        (
            "latin1.tsv",
            b"great kettle\tpositive\ncaf\xe9 was bad\tnegative\n",
            "classification",
            &["latin1.tsv:2:", "not valid UTF-8", "save the file as UTF-8"],
        ),
        (
            "empty-label.tsv",
            b"great kettle\tpositive\nbroken lamp\t\n",
            "classification",
            &["empty-label.tsv:2:", "target is empty"],
        ),
        (
            "pairs.txt",
            b"great kettle positive\n",
            "classification",
            &["pairs.txt:", ".tsv", ".jsonl"],
        ),
    ];
    for (name, bytes, task, expect) in cases {
        let (dir, path) = data_file(name, bytes);
        let (code, out, err) = t5_tui(
            &t.home,
            &[
                "eval",
                &t.id,
                "--data",
                path.to_str().unwrap(),
                "--task",
                task,
            ],
        );
        assert_eq!(code, 1, "{name}: exit {code}, stderr {err}");
        assert!(out.is_empty(), "{name}: {out}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one line, not\n{err}");
        assert!(lines[0].starts_with("error: "), "{name}: {err}");
        for e in *expect {
            assert!(lines[0].contains(e), "{name}: no {e:?} in {err}");
        }
        // Nothing was generated: no predictions file beside the data.
        assert!(
            !path.with_extension("predictions.jsonl").exists(),
            "{name}: predictions written for a bad file"
        );
        drop(dir);
    }
}
