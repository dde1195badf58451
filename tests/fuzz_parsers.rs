//! Property tests over the parsers a user's files go through: experiment
//! TOML (random text, and configs built from the real sections and keys
//! with random values), TSV and JSONL corpora (random bytes, lines
//! mutated), and `events.jsonl` (random bytes, valid lines cut and
//! flipped). None may panic; a parser's error is one line. Bounded here
//! (`PROPTEST_CASES`, 64 by default) so that CI stays fast;
//! `bench/fuzz.sh` runs them with many more cases.

use std::path::Path;

mod common;

use proptest::prelude::*;
use t5_tui::config::Experiment;
use t5_tui::data::source::{Format, OnBadLine, ReadOptions, Source, SourceReader};
use t5_tui::runs::parse_events;
use t5_tui::train::TrainEvent;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // Failures are reported with their input; no files to keep.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A valid experiment for the random overrides to change.
fn base() -> String {
    common::tiny_experiment_toml("fuzz", 10, "")
}

/// Keys the experiment sections take, with a few that do not exist.
const KEYS: &[&str] = &[
    "model.vocab_size",
    "model.d_model",
    "model.d_kv",
    "model.d_ff",
    "model.num_layers",
    "model.num_decoder_layers",
    "model.num_heads",
    "model.relative_attention_num_buckets",
    "model.relative_attention_max_distance",
    "model.dropout_rate",
    "model.layer_norm_epsilon",
    "model.initializer_factor",
    "model.feed_forward_proj",
    "model.tie_word_embeddings",
    "model.pad_token_id",
    "model.eos_token_id",
    "model.decoder_start_token_id",
    "model.preset",
    "tokenizer.vocab_size",
    "tokenizer.extra_ids",
    "tokenizer.path",
    "data.validation_fraction",
    "data.format",
    "data.on_bad_line",
    "data.documents",
    "data.builtin",
    "objective.kind",
    "objective.noise_density",
    "objective.mean_noise_span_length",
    "objective.input_length",
    "objective.target_length",
    "objective.task",
    "train.seed",
    "train.device",
    "train.batch_size",
    "train.grad_accum_steps",
    "train.steps",
    "train.learning_rate",
    "train.optimizer",
    "train.schedule",
    "train.warmup_steps",
    "train.grad_clip",
    "train.weight_decay",
    "train.z_loss",
    "train.max_bad_steps",
    "train.dtype",
    "train.init_from",
    "eval.every_steps",
    "eval.batches",
    "eval.num_samples",
    "eval.max_sample_tokens",
    "eval.generate_examples",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "nosuch.key",
    "model.nosuch",
    "name",
];

/// Values of every kind and edge: zero, negative, huge, non-finite, the
/// wrong type, names valid somewhere.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0u64..5).prop_map(|v| v.to_string()),
        Just("18446744073709551615".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "[a-z0-9_./ -]{0,12}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"relu\"",
            "\"gated-gelu\"",
            "\"t5-tiny\"",
            "\"t5-small\"",
            "\"span_corruption\"",
            "\"text_to_text\"",
            "\"cuda:99\"",
            "\"adafactor\"",
            "\"adamw\"",
            "\"bf16\"",
            "\"f16\"",
            "\"tsv\"",
            "\"classification\"",
            "\"../x\"",
            "\"/abs\"",
        ])
        .prop_map(str::to_string),
    ]
}

/// Refusing is fine; panicking is not, and an error is one line.
fn check_config(text: &str, overrides: &[String]) {
    let path = Path::new("fuzz.toml");
    match Experiment::from_toml_str(text, path, overrides) {
        // What `config check` and `model info` print of an accepted one
        // (sizes multiplied out) must not overflow either.
        Ok(exp) => {
            let _ = t5_tui::cli::summary(&exp);
            let _ = t5_tui::cli::model_table(&exp);
            let _ = exp.to_toml();
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.trim().is_empty(), "an empty error for {text:?}");
            assert!(!msg.contains("panicked"), "{msg}");
        }
    }
}

/// A corpus file of `bytes` read in `format`, to the end or the first
/// error, both ways of treating bad lines.
fn read_corpus(dir: &Path, name: &str, bytes: &[u8], format: Format) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    for on_bad_line in [OnBadLine::Skip, OnBadLine::Fail] {
        let source = Source {
            path: path.clone(),
            format: format.clone(),
        };
        let mut reader = SourceReader::new(
            &[source],
            ReadOptions {
                on_bad_line,
                max_line_bytes: 64,
            },
        )
        .unwrap();
        let mut records = 0u64;
        loop {
            match reader.next_record() {
                Ok(Some(_)) => records += 1,
                Ok(None) => break,
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(name), "{msg} does not name the file");
                    assert_eq!(msg.lines().count(), 1, "{msg}");
                    break;
                }
            }
        }
        assert!(records <= reader.stats.lines.max(1));
    }
}

/// Lines that look like corpus lines: tabs, JSON, bad bytes, NULs.
fn corpus_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "[a-z ]{0,10}\t[a-z ]{0,10}".prop_map(String::into_bytes),
        "[a-z ]{0,20}".prop_map(String::into_bytes),
        Just(br#"{"input": "a", "target": "b"}"#.to_vec()),
        Just(br#"{"text": "a doc"}"#.to_vec()),
        Just(br#"{"text": 3}"#.to_vec()),
        Just(b"[1, 2]".to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join(&b'\n'))
}

fn an_event() -> impl Strategy<Value = TrainEvent> {
    prop_oneof![
        (any::<u64>(), any::<f64>(), any::<f64>()).prop_map(|(step, loss, lr)| TrainEvent::Step {
            step,
            tokens_seen: step,
            loss,
            lr: lr.abs(),
            grad_norm: loss,
            tokens_per_sec: 1.0,
            elapsed: 1.0,
            time: 1.0,
        }),
        (any::<u64>(), ".{0,20}").prop_map(|(step, message)| TrainEvent::Warning {
            step,
            message,
            time: 2.0,
        }),
        any::<u64>().prop_map(|step| TrainEvent::Checkpoint {
            step,
            path: "checkpoints/step-1".into(),
            time: 3.0,
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_as_a_config_is_refused_or_accepted_without_a_panic(text in ".{0,200}") {
        check_config(&text, &[]);
    }

    #[test]
    fn configs_of_real_keys_with_any_values_never_panic(
        sets in prop::collection::vec((prop::sample::select(KEYS), value()), 1..6),
    ) {
        // Both ways in: as overrides, and written into the file.
        let overrides: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let base = base();
        check_config(&base, &overrides);
        let mut text = base;
        for (k, v) in &sets {
            let (section, key) = k.split_once('.').unwrap_or(("", k));
            if section.is_empty() {
                text = format!("{key} = {v}\n{text}");
            } else {
                text = text.replacen(&format!("[{section}]\n"), &format!("[{section}]\n{key} = {v}\n"), 1);
                if !text.contains(&format!("[{section}]")) {
                    text.push_str(&format!("[{section}]\n{key} = {v}\n"));
                }
            }
        }
        check_config(&text, &[]);
    }

    #[test]
    fn corpora_of_any_bytes_read_to_the_end_or_one_error_naming_the_file(bytes in corpus_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        read_corpus(dir.path(), "c.tsv", &bytes, Format::Tsv);
        read_corpus(
            dir.path(),
            "c.jsonl",
            &bytes,
            Format::Jsonl { text_field: None, input_field: None, target_field: None },
        );
        read_corpus(
            dir.path(),
            "p.jsonl",
            &bytes,
            Format::Jsonl {
                text_field: None,
                input_field: Some("input".into()),
                target_field: Some("target".into()),
            },
        );
        read_corpus(
            dir.path(),
            "c.txt",
            &bytes,
            Format::Text { documents: t5_tui::data::source::Documents::BlankLine },
        );
    }

    #[test]
    fn any_bytes_as_an_event_log_parse_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let read = parse_events(&bytes);
        let lines = bytes.split(|&b| b == b'\n').count();
        prop_assert!(read.events.len() + read.bad_lines.len() <= lines);
    }

    #[test]
    fn a_log_of_events_cut_and_flipped_anywhere_keeps_every_whole_line(
        events in prop::collection::vec(an_event(), 1..8),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut text = Vec::new();
        for e in &events {
            serde_json::to_writer(&mut text, e).unwrap();
            text.push(b'\n');
        }
        // Whole, every event reads back (NaN compares unequal: by count).
        let whole = parse_events(&text);
        prop_assert_eq!(whole.events.len(), events.len());
        prop_assert!(whole.bad_lines.is_empty() && !whole.torn_last_line);
        // Cut short (a crash mid-append): the lines before the cut are all
        // there, the cut one is torn or whole, nothing else is bad.
        let at = cut.index(text.len());
        let torn = parse_events(&text[..at]);
        let whole_lines = text[..at].iter().filter(|&&b| b == b'\n').count();
        prop_assert!(torn.events.len() >= whole_lines);
        prop_assert!(torn.bad_lines.is_empty(), "{:?}", torn.bad_lines);
        // A byte changed: at most that one line is lost.
        let mut flipped = text.clone();
        let i = flip.index(flipped.len());
        flipped[i] = byte;
        let read = parse_events(&flipped);
        prop_assert!(read.events.len() + 2 >= events.len());
    }
}
