//! Experiment configs: every shipped preset and every file in
//! `tests/valid_configs/` loads; every file in `tests/invalid_configs/`
//! fails with one line that names the file and what its first line,
//! `# expect: …`, says. Also presets, overrides and the `t5-tui` commands
//! that read configs.

use std::path::{Path, PathBuf};
use std::process::Command;

use t5_tui::config::{self, DeviceChoice, Experiment, ObjectiveKind, Optimizer};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

#[test]
fn every_shipped_config_loads() {
    for path in toml_files(&crate_dir().join("configs")) {
        let exp = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            exp.name,
            stem,
            "{}: `name` should be the file's stem",
            path.display()
        );
        assert!(
            exp.description.is_some(),
            "{}: no description",
            path.display()
        );
        // A preset gives every model field itself; an experiment (the
        // demos) may name a preset instead.
        if config::builtin_preset(&stem).is_none() {
            continue;
        }
        let file = config::ExperimentFile::load(&path).unwrap();
        assert!(file.model.preset.is_none(), "{}", path.display());
        assert_eq!(
            file.model,
            config::ModelSection::from_t5(&exp.model),
            "{}",
            path.display()
        );
    }
}

#[test]
fn built_in_presets_are_the_files_in_configs() {
    for (name, text) in config::BUILTIN_PRESETS {
        let path = crate_dir().join("configs").join(format!("{name}.toml"));
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(*text, on_disk, "{name}");
    }
}

/// Parameter counts as `transformers` reports them (`model.num_parameters()`)
/// for the checkpoints each preset copies; t5-tiny's is counted by hand:
/// embedding 8192*256 twice (untied), encoder 4*(4*256*256 + 3*256*1024 +
/// 2*256) + 32*8 + 256, decoder 4*(8*256*256 + 3*256*1024 + 3*256) + 32*8 + 256.
#[test]
fn preset_parameter_counts_match_hugging_face() {
    let expected = [
        ("t5-tiny", 13_637_632),
        ("t5-small", 76_961_152),      // google/t5-v1_1-small
        ("t5-base", 247_577_856),      // google/t5-v1_1-base
        ("t5-large", 783_150_080),     // google/t5-v1_1-large
        ("t5-small-v1_0", 60_506_624), // t5-small
    ];
    assert_eq!(expected.len(), config::BUILTIN_PRESETS.len());
    for (name, count) in expected {
        let exp = Experiment::from_preset::<&str>(name, None, &[]).unwrap();
        assert_eq!(exp.model.num_parameters(), count, "{name}");
        let hand = 2 * 8192 * 256
            + 4 * (4 * 256 * 256 + 3 * 256 * 1024 + 2 * 256)
            + 32 * 8
            + 256
            + 4 * (8 * 256 * 256 + 3 * 256 * 1024 + 3 * 256)
            + 32 * 8
            + 256;
        if name == "t5-tiny" {
            assert_eq!(hand, count);
        }
    }
}

#[test]
fn every_valid_config_loads() {
    for path in toml_files(&crate_dir().join("tests/valid_configs")) {
        let exp = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        exp.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The `# expect: …` line that opens each invalid config.
fn expectation(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect:")
        .unwrap_or_else(|| {
            panic!(
                "{}: the first line must be `# expect: <part of the message>`",
                path.display()
            )
        })
        .trim()
        .to_string()
}

#[test]
fn every_invalid_config_fails_with_one_clear_line() {
    for path in toml_files(&crate_dir().join("tests/invalid_configs")) {
        let expect = expectation(&path);
        let message = match config::load(&path) {
            Ok(_) => panic!("{} loaded, but should fail with `{expect}`", path.display()),
            Err(e) => e.to_string(),
        };
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            message.starts_with(&format!("{}: ", path.display())),
            "{file_name}: the message should start with the path: {message}"
        );
        assert!(
            message.contains(&expect),
            "{file_name}: the message should contain `{expect}`:\n{message}"
        );
        assert!(
            !message.contains('\n'),
            "{file_name}: more than one line:\n{message}"
        );
    }
}

#[test]
fn a_preset_with_overrides() {
    let exp = config::load(&crate_dir().join("tests/valid_configs/preset_override.toml")).unwrap();
    let small = Experiment::from_preset::<&str>("t5-small", None, &[]).unwrap();
    assert_eq!(exp.name, "small-shallow");
    assert_eq!(exp.model.num_layers, 4);
    assert_eq!(exp.model.decoder_layers(), 2);
    assert_eq!(exp.model.dropout_rate, 0.0);
    assert_eq!(exp.train.learning_rate, 3e-4);
    // Everything not overridden is the preset's.
    let mut expected = small.model.clone();
    expected.num_layers = 4;
    expected.num_decoder_layers = Some(2);
    expected.dropout_rate = 0.0;
    assert_eq!(exp.model, expected);
}

#[test]
fn a_model_given_field_by_field() {
    let exp = config::load(&crate_dir().join("tests/valid_configs/direct_model.toml")).unwrap();
    assert_eq!(exp.model.d_kv, 32);
    assert_eq!(exp.model.decoder_layers(), 2);
    assert_eq!(exp.model.relative_attention_num_buckets, 32);
    assert_eq!(exp.model.layer_norm_epsilon, 1e-6);
}

#[test]
fn other_sections_are_read() {
    let exp = config::load(&crate_dir().join("tests/valid_configs/fine_tune.toml")).unwrap();
    assert_eq!(exp.objective.kind, ObjectiveKind::TextToText);
    assert_eq!(exp.objective.task_prefix.as_deref(), Some("summarize: "));
    assert_eq!(exp.train.device, DeviceChoice::Cuda(0));
    assert_eq!(exp.train.optimizer, Optimizer::Adafactor);
    assert!(exp.model.tie_word_embeddings);

    let exp = config::load(&crate_dir().join("tests/valid_configs/every_key.toml")).unwrap();
    let dir = std::path::absolute(crate_dir().join("tests/valid_configs")).unwrap();
    assert_eq!(exp.data.sources[0], dir.join("corpus.txt"));
    assert_eq!(exp.tokenizer.path, Some(dir.join("tokenizer.json")));
    assert_eq!(exp.tokenizer.regular_vocab_size(exp.model.vocab_size), 8092);
}

#[test]
fn overrides_apply_on_top_of_the_file() {
    let path = crate_dir().join("tests/valid_configs/preset_override.toml");
    let exp = config::load_with_overrides(
        &path,
        &[
            "train.learning_rate=1e-2",
            "model.d_ff=2048",
            "train.device=cpu",
            "name=\"renamed\"",
        ],
    )
    .unwrap();
    assert_eq!(exp.train.learning_rate, 1e-2);
    assert_eq!(exp.model.d_ff, 2048);
    assert_eq!(exp.model.num_layers, 4);
    assert_eq!(exp.train.device, DeviceChoice::Cpu);
    assert_eq!(exp.name, "renamed");

    let e = config::load_with_overrides(&path, &["model.num_heads=0"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[model] num_heads = 0 (set by --set): it must be at least 1"),
        "{e}"
    );
    let e = config::load_with_overrides(&path, &["learning_rate"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected SECTION.KEY=VALUE"), "{e}");
}

#[test]
fn presets_beside_the_config_come_before_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    // A user preset that shadows a built-in one, and one built on it.
    std::fs::write(
        configs.join("t5-tiny.toml"),
        "[model]\npreset = \"t5-small\"\nnum_layers = 1\n",
    )
    .unwrap();
    std::fs::write(
        configs.join("mine.toml"),
        "[model]\npreset = \"t5-tiny\"\nd_ff = 64\n",
    )
    .unwrap();
    let exp_path = dir.path().join("exp.toml");
    std::fs::write(&exp_path, "[model]\npreset = \"mine\"\n").unwrap();
    let exp = config::load(&exp_path).unwrap();
    assert_eq!(exp.model.d_model, 512);
    assert_eq!(exp.model.num_layers, 1);
    assert_eq!(exp.model.d_ff, 64);

    // A preset file in configs/ finds its neighbours in the same folder.
    let exp = config::load(&configs.join("mine.toml")).unwrap();
    assert_eq!(exp.model.num_layers, 1);

    // Errors from a preset name the preset's file.
    std::fs::write(
        configs.join("broken.toml"),
        "[model]\npreset = \"t5-tiny\"\nnum_layerz = 1\n",
    )
    .unwrap();
    std::fs::write(&exp_path, "[model]\npreset = \"broken\"\n").unwrap();
    let e = config::load(&exp_path).unwrap_err().to_string();
    assert!(e.contains("preset = \"broken\" (line 2)"), "{e}");
    assert!(
        e.contains("broken.toml: [model] num_layerz (line 3): unknown key"),
        "{e}"
    );

    // A bad value that comes from a preset says so.
    std::fs::write(
        configs.join("zero.toml"),
        "[model]\npreset = \"t5-tiny\"\nnum_heads = 0\n",
    )
    .unwrap();
    std::fs::write(&exp_path, "[model]\npreset = \"zero\"\n").unwrap();
    let e = config::load(&exp_path).unwrap_err().to_string();
    assert!(
        e.contains("[model] num_heads = 0 (from preset `zero`"),
        "{e}"
    );

    // Presets that name each other in a loop.
    std::fs::write(configs.join("a.toml"), "[model]\npreset = \"b\"\n").unwrap();
    std::fs::write(configs.join("b.toml"), "[model]\npreset = \"a\"\n").unwrap();
    std::fs::write(&exp_path, "[model]\npreset = \"a\"\n").unwrap();
    let e = config::load(&exp_path).unwrap_err().to_string();
    assert!(e.contains("in a loop"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_resolved_experiment_written_out_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for path in toml_files(&crate_dir().join("tests/valid_configs")) {
        let exp = config::load(&path).unwrap();
        let out = dir.path().join("config.toml");
        std::fs::write(&out, exp.to_toml().unwrap()).unwrap();
        let again = config::load(&out).unwrap();
        assert_eq!(again, exp, "{}", path.display());
    }
}

#[test]
fn a_missing_file_names_the_file() {
    let e = config::load(Path::new("no/such/experiment.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("no/such/experiment.toml: "), "{e}");
}

// --- the `t5-tui` commands -------------------------------------------------

fn t5_tui(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_t5-tui"))
        .args(args)
        .current_dir(crate_dir())
        .output()
        .expect("running t5-tui");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_arguments_without_a_terminal_points_to_the_headless_commands() {
    // Output captured: no terminal, so no UI drawn into a pipe.
    let (code, out, err) = t5_tui(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("needs a terminal") && err.contains("--headless"),
        "{err}"
    );
}

#[test]
fn config_check_prints_the_model() {
    let (code, out, err) = t5_tui(&[
        "config",
        "check",
        "configs/t5-small.toml",
        "tests/valid_configs/empty.toml",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok configs/t5-small.toml: t5-small: d_model 512"),
        "{out}"
    );
    assert!(out.contains("76,961,152 parameters"), "{out}");
    assert!(out.contains("13,637,632 parameters"), "{out}");
}

#[test]
fn config_check_reports_each_error_on_one_line() {
    let (code, out, err) = t5_tui(&[
        "config",
        "check",
        "tests/invalid_configs/zero_layers.toml",
        "configs/t5-tiny.toml",
        "tests/invalid_configs/not_toml.toml",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("ok configs/t5-tiny.toml"), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(
        lines[0],
        "error: tests/invalid_configs/zero_layers.toml: [model] num_layers = 0 (line 4): it must be at least 1"
    );
    assert!(
        lines[1].starts_with("error: tests/invalid_configs/not_toml.toml: not valid TOML"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn config_check_takes_overrides() {
    let (code, out, err) = t5_tui(&[
        "config",
        "check",
        "configs/t5-tiny.toml",
        "--set",
        "model.num_layers=2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2+4 layers"), "{out}");
}

#[test]
fn model_info_shows_shape_and_count() {
    let (code, out, err) = t5_tui(&["model", "info", "t5-small"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("76,961,152"), "{out}");
    assert!(out.contains("num_heads"), "{out}");
    let (code, out, err) = t5_tui(&["model", "info", "tests/valid_configs/direct_model.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("d_kv                             32"), "{out}");
    let (code, _, err) = t5_tui(&["model", "info", "t5-huge"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: ") && err.contains("no such preset") && err.contains("t5-tiny"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
