//! Bad input, fed to the real binary: tokenizer files that are not JSON or
//! have no sentinels, checkpoints that are truncated, of another shape or
//! not safetensors, data files with invalid UTF-8, NUL bytes, a 50 MB line
//! or no tabs, run folders edited by hand, and run names that are paths.
//! Each must end with one `error:` line that names the file and the
//! problem, a non-zero exit code, no panic, and every other file of the run
//! store as it was (sizes and modification times compared before and
//! after). The committed inputs are in `tests/bad_inputs/`; the ones that
//! are awkward to commit are made here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use t5_tui::runs::{read_events, RunStore};
use t5_tui::train::TrainEvent;

const BYSTANDER_STEPS: u64 = 4;

fn committed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_inputs")
        .join(name)
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn t5_tui(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_t5-tui"))
        .args(args)
        .current_dir(dir)
        .env("T5_TUI_HOME", dir.join("home"))
        .stdin(Stdio::null())
        .output()
        .expect("t5-tui runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file under `root` (relative path → size, modification time).
/// Lock files are taken and released by every resume, so only their size
/// counts.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = e.metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (0, None));
                stack.push(p);
            } else {
                let lock = p.file_name().is_some_and(|n| n == "lock");
                let mtime = if lock { None } else { meta.modified().ok() };
                out.insert(rel, (meta.len(), mtime));
            }
        }
    }
    out
}

/// The files of `after` that differ from `before`, leaving out the run
/// folders in `new_runs` (made by the command itself).
fn changes(
    before: &BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    after: &BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    new_runs: &[String],
) -> Vec<String> {
    let is_new_run = |p: &Path| {
        new_runs
            .iter()
            .any(|id| p.starts_with(Path::new("runs").join(id)))
    };
    let mut diff = Vec::new();
    for (p, v) in before {
        match after.get(p) {
            None => diff.push(format!("removed {}", p.display())),
            Some(w) if w != v => diff.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) && !is_new_run(p) {
            diff.push(format!("added {}", p.display()));
        }
    }
    diff
}

fn run_ids(home: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(home.join("runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The bar every bad input must meet.
fn assert_refused(what: &str, out: &Output, file: &str, problem: &str) {
    assert_ne!(out.code, 0, "{what}: exit code 0; stdout {}", out.stdout);
    assert!(
        !out.stderr.contains("panicked"),
        "{what}: a panic:\n{}",
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.trim().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: not one line on stderr:\n{}",
        out.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{what}: {line}");
    assert!(line.contains(file), "{what}: does not name {file}: {line}");
    assert!(
        line.contains(problem),
        "{what}: does not say {problem:?}: {line}"
    );
}

/// Runs `args`, which must be refused naming `file` and `problem`, and
/// checks that nothing in the store changed but a new run of its own
/// (allowed only when `may_create_run`).
fn refused(dir: &Path, args: &[&str], file: &str, problem: &str, may_create_run: bool) {
    let home = dir.join("home");
    let runs_before = run_ids(&home);
    let before = snapshot(&home);
    let out = t5_tui(dir, args);
    let what = args.join(" ");
    assert_refused(&what, &out, file, problem);
    let new_runs: Vec<String> = run_ids(&home)
        .into_iter()
        .filter(|id| !runs_before.contains(id))
        .collect();
    assert!(
        may_create_run || new_runs.is_empty(),
        "{what}: made runs {new_runs:?}"
    );
    let diff = changes(&before, &snapshot(&home), &new_runs);
    assert!(diff.is_empty(), "{what}: touched the store: {diff:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Trains the tiny experiment for a few steps (checkpoints at 2 and 4);
/// returns the run id.
fn bystander(dir: &Path) -> String {
    common::write_tiny_experiment(
        dir,
        "bystander",
        BYSTANDER_STEPS,
        "[eval]\nevery_steps = 0\nsamples_every_steps = 0\n[checkpoint]\nevery_steps = 2",
    );
    let out = t5_tui(dir, &["train", "exp.toml", "--headless"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.lines().next().unwrap().trim().to_string()
}

/// A copy of run `id` under a new id, for a case to damage.
fn copy_run(home: &Path, id: &str, case: &str) -> (String, PathBuf) {
    let new_id = format!("20260101-000000-{case}");
    let dir = home.join("runs").join(&new_id);
    copy_dir(&home.join("runs").join(id), &dir);
    (new_id, dir)
}

/// An experiment like the tiny one with `[data]` and `[tokenizer]` as
/// given, written to `name`.
fn variant(dir: &Path, name: &str, data: &str, tokenizer: &str) {
    let text = std::fs::read_to_string(dir.join("exp.toml")).unwrap();
    let text = text
        .replace(
            "[data]\nsources = [\"corpus.txt\"]",
            &format!("[data]\n{data}"),
        )
        .replace("[tokenizer]\n", &format!("[tokenizer]\n{tokenizer}\n"));
    std::fs::write(dir.join(name), text).unwrap();
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[test]
fn every_bad_input_is_refused_with_one_clear_line_and_touches_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = dir.join("home");
    let good = bystander(dir);
    let mut tried = 0;

    // Tokenizer files named by `[tokenizer] path`.
    for (file, problem) in [
        ("tokenizer_not_json.json", "not valid JSON"),
        ("tokenizer_no_sentinels.json", "no sentinel tokens"),
    ] {
        let tok = format!("path = {}", toml_path(&committed(file)));
        variant(dir, "tok.toml", "sources = [\"corpus.txt\"]", &tok);
        refused(
            dir,
            &["train", "tok.toml", "--headless"],
            file,
            problem,
            true,
        );
        tried += 1;
    }

    // Corpora. Good lines around the bad one, so that only the bad one is
    // to blame; "fail" makes a bad line an error (the default skips and
    // counts it).
    let good_lines: String = (0..200).map(|i| format!("line {i} of text.\n")).collect();
    let mut bad_utf8 = good_lines.clone().into_bytes();
    bad_utf8.extend_from_slice(b"caf\xe9 in Latin-1\n");
    std::fs::write(dir.join("bad_utf8.txt"), &bad_utf8).unwrap();
    let mut nul = good_lines.clone().into_bytes();
    nul.extend_from_slice(b"a NUL\0byte\n");
    std::fs::write(dir.join("nul.txt"), &nul).unwrap();
    // One 50 MB line: skipped (it is over the 1 MiB limit) without being
    // read whole, which leaves nothing to train on.
    let mut huge = vec![b'x'; 50 << 20];
    huge.push(b'\n');
    std::fs::write(dir.join("huge.txt"), &huge).unwrap();
    for (data, file, problem) in [
        (
            "sources = [\"bad_utf8.txt\"]\non_bad_line = \"fail\"",
            "bad_utf8.txt:201",
            "not valid UTF-8",
        ),
        (
            "sources = [\"nul.txt\"]\non_bad_line = \"fail\"",
            "nul.txt:201",
            "NUL byte",
        ),
        ("sources = [\"huge.txt\"]", "huge.txt:1", "line longer than"),
        (
            &format!("sources = [{}]", toml_path(&committed("pairs_no_tabs.tsv"))),
            "pairs_no_tabs.tsv:1",
            "no tab",
        ),
        (
            &format!(
                "sources = [{}]",
                toml_path(&committed("pairs_bad_json.jsonl"))
            ),
            "pairs_bad_json.jsonl:2",
            "not valid JSON",
        ),
    ] {
        variant(dir, "data.toml", data, "");
        refused(
            dir,
            &["train", "data.toml", "--headless"],
            file,
            problem,
            true,
        );
        tried += 1;
    }

    // Eval files of pairs, against the good run.
    let evals = dir.join("evaldata");
    std::fs::create_dir(&evals).unwrap();
    std::fs::write(evals.join("bad_utf8.tsv"), b"in\tout\ncaf\xe9\tx\n").unwrap();
    std::fs::write(evals.join("nul.tsv"), b"in\tout\nin\0put\tx\n").unwrap();
    let mut huge_pair = vec![b'x'; 50 << 20];
    huge_pair.extend_from_slice(b"\ty\n");
    std::fs::write(evals.join("huge.tsv"), &huge_pair).unwrap();
    std::fs::write(evals.join("text.txt"), "just text\n").unwrap();
    for f in [
        "pairs_no_tabs.tsv",
        "pairs_bad_json.jsonl",
        "pairs_target_not_string.jsonl",
    ] {
        std::fs::copy(committed(f), evals.join(f)).unwrap();
    }
    let eval_files = snapshot(&evals);
    for (file, problem) in [
        ("bad_utf8.tsv:2", "not valid UTF-8"),
        ("nul.tsv:2", "NUL byte"),
        ("huge.tsv:1", "line longer than"),
        ("text.txt", "not a file of pairs"),
        ("pairs_no_tabs.tsv:1", "no tab"),
        ("pairs_bad_json.jsonl:2", "not valid JSON"),
        ("pairs_target_not_string.jsonl:1", "is not a string"),
    ] {
        let name = file.split(':').next().unwrap();
        let path = evals.join(name).display().to_string();
        refused(dir, &["eval", &good, "--data", &path], file, problem, false);
        tried += 1;
    }
    // No predictions file was started beside any of them.
    assert_eq!(snapshot(&evals), eval_files);

    // Run folders damaged or edited by hand: resume, generate and export
    // each refuse, and the damaged run itself is left as it was.
    let latest = format!("checkpoints/step-{BYSTANDER_STEPS}");
    let truncate = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 3]).unwrap();
    };
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage, &str, &str, &[&str])> = vec![
        (
            "truncated-model",
            Box::new(|d: &Path| truncate(&d.join(&latest).join("model.safetensors"))),
            "model.safetensors",
            "damaged: delete",
            &["resume", "generate", "export"],
        ),
        (
            "model-not-safetensors",
            Box::new(|d: &Path| {
                std::fs::copy(
                    committed("not_safetensors.safetensors"),
                    d.join(&latest).join("model.safetensors"),
                )
                .unwrap();
            }),
            "model.safetensors",
            "not a readable safetensors file",
            &["resume", "generate", "export"],
        ),
        (
            "truncated-optimizer",
            Box::new(|d: &Path| truncate(&d.join(&latest).join("optimizer.safetensors"))),
            "optimizer.safetensors",
            "go back to the checkpoint of step 2",
            &["resume"],
        ),
        (
            "other-shape",
            Box::new(|d: &Path| {
                let p = d.join("config.toml");
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(text.contains("d_model = 32"));
                std::fs::write(&p, text.replace("d_model = 32", "d_model = 48")).unwrap();
            }),
            "model.safetensors",
            "another model shape",
            &["resume", "generate", "export"],
        ),
        (
            "no-state",
            Box::new(|d: &Path| std::fs::remove_file(d.join(&latest).join("state.json")).unwrap()),
            "state.json",
            "missing",
            &["resume"],
        ),
        (
            "bad-state",
            Box::new(|d: &Path| {
                std::fs::write(d.join(&latest).join("state.json"), "{\"step\": \"x\"").unwrap()
            }),
            "state.json",
            "not a valid training state",
            &["resume"],
        ),
        (
            "config-not-toml",
            Box::new(|d: &Path| {
                let mut text = std::fs::read_to_string(d.join("config.toml")).unwrap();
                text.push_str(&std::fs::read_to_string(committed("config_not_toml.toml")).unwrap());
                std::fs::write(d.join("config.toml"), text).unwrap();
            }),
            "config.toml",
            "not valid TOML",
            &["resume", "generate", "export"],
        ),
        (
            "tokenizer-not-json",
            Box::new(|d: &Path| {
                std::fs::copy(
                    committed("tokenizer_not_json.json"),
                    d.join("tokenizer.json"),
                )
                .unwrap();
            }),
            "tokenizer.json",
            "not valid JSON",
            &["resume", "generate", "export"],
        ),
    ];
    for (case, damage, file, problem, commands) in &cases {
        let (id, run_dir) = copy_run(&home, &good, case);
        damage(&run_dir);
        for command in *commands {
            let args: Vec<&str> = match *command {
                "resume" => vec!["resume", &id, "--steps", "6"],
                "generate" => vec!["generate", &id, "the cat"],
                _ => vec!["export", &id],
            };
            refused(dir, &args, file, problem, false);
            tried += 1;
        }
    }

    // Garbage lines in events.jsonl are not an error: the run lists with
    // the problem (naming the lines), resumes, and keeps its history.
    let (id, run_dir) = copy_run(&home, &good, "events-garbage");
    let garbage = std::fs::read_to_string(committed("events_garbage.jsonl")).unwrap();
    let events = run_dir.join("events.jsonl");
    let mut text = std::fs::read_to_string(&events).unwrap();
    let first_bad = text.lines().count() + 1;
    text.push_str(&garbage);
    std::fs::write(&events, text).unwrap();
    let show = t5_tui(dir, &["runs", "show", &id]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(
        show.stdout
            .contains(&format!("events.jsonl lines {first_bad}, ")),
        "{}",
        show.stdout
    );
    let resumed = t5_tui(dir, &["resume", &id, "--steps", "6"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let read = read_events(&events).unwrap();
    assert_eq!(read.bad_lines.len(), 3, "{:?}", read.bad_lines);
    assert!(matches!(
        read.events.last(),
        Some(TrainEvent::Finished { step: 6, .. })
    ));
    tried += 2;

    // The good run is as it was, and the listing shows every run.
    let list = t5_tui(dir, &["runs"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for id in run_ids(&home) {
        assert!(
            list.stdout.contains(&id),
            "{id} missing from\n{}",
            list.stdout
        );
    }
    let store = RunStore::at(&home);
    let run = store.open(&good).unwrap();
    assert_eq!(run.latest_checkpoint().unwrap().0, BYSTANDER_STEPS);
    eprintln!("{tried} bad inputs refused cleanly");
}

#[test]
fn run_names_and_ids_from_the_user_never_escape_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = dir.join("home");
    let good = bystander(dir);
    let beside_before = {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        v.sort();
        v
    };
    let abs = dir.join("elsewhere").display().to_string();
    for name in ["../x", "/abs", "a/b", "..", "a\\b"] {
        let set = format!("name={name}");
        refused(
            dir,
            &["train", "exp.toml", "--headless", "--set", &set],
            &format!("run name {name:?}"),
            "\"tiny-wiki\"",
            false,
        );
    }
    for id in ["../x", "/abs", abs.as_str(), "a/b", "..", "../home/runs"] {
        let quoted = format!("{id:?}");
        for args in [
            vec!["resume", id],
            vec!["runs", "show", id],
            vec!["runs", "rm", id, "--yes"],
            vec!["export", id],
            vec!["eval", id],
            vec!["generate", id, "hello"],
        ] {
            refused(dir, &args, &quoted, "is not a run id", false);
        }
    }
    // A run to fine-tune from is a run id too (or a model folder).
    variant(dir, "init.toml", "sources = [\"corpus.txt\"]", "");
    let text = std::fs::read_to_string(dir.join("init.toml")).unwrap();
    std::fs::write(
        dir.join("init.toml"),
        text.replace("[train]\n", "[train]\ninit_from = \"../x\"\n"),
    )
    .unwrap();
    let out = t5_tui(dir, &["train", "init.toml", "--headless"]);
    assert_refused("init_from ../x", &out, "\"../x\"", "is not a run id");
    let mut beside: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    beside.sort();
    beside.retain(|n| n != "init.toml");
    assert_eq!(beside, beside_before, "a file was made outside the store");
    assert!(!home.join("x").exists() && !dir.join("x").exists());
    assert!(RunStore::at(&home).open(&good).is_ok());
}
