//! The metrics against their reference implementations: every number in
//! `tests/fixtures/metrics/fixture.json` was computed by sacrebleu,
//! rouge-score (with NLTK's Porter stemmer), SQuAD v1.1's evaluation
//! functions or scikit-learn (`make_fixture.py` beside it), and each Rust
//! metric must agree within 0.01 points on the 0–100 scale. Run with
//! `--nocapture` to see the largest difference per metric.

use std::sync::OnceLock;

use serde_json::Value;
use t5_tui::metrics::*;

/// Agreement required, in points on the 0–100 scale.
const TOLERANCE: f64 = 0.01;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/metrics/fixture.json"
        );
        let text = std::fs::read_to_string(path).expect("read the metrics fixture");
        serde_json::from_str(&text).expect("parse the metrics fixture")
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array of strings")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn string_lists(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(strings)
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(f).collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_u64().expect("a count"))
        .collect()
}

/// One input set of the fixture: predictions and a list of references each.
fn inputs(name: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let set = &fixture()["inputs"][name];
    (
        strings(&set["predictions"]),
        string_lists(&set["references"]),
    )
}

/// The largest difference seen for one metric; asserts each comparison.
struct Agreement {
    metric: &'static str,
    max_diff: f64,
    compared: usize,
}

impl Agreement {
    fn new(metric: &'static str) -> Self {
        Agreement {
            metric,
            max_diff: 0.0,
            compared: 0,
        }
    }

    /// Compares two numbers on the 0–100 scale.
    fn check(&mut self, what: &str, ours: f64, reference: f64) {
        let diff = (ours - reference).abs();
        assert!(
            diff <= TOLERANCE,
            "{} {what}: ours {ours}, reference {reference} (diff {diff})",
            self.metric
        );
        self.max_diff = self.max_diff.max(diff);
        self.compared += 1;
    }
}

impl Drop for Agreement {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            println!(
                "{:<28} {:>5} values, max abs diff {:.3e}",
                self.metric, self.compared, self.max_diff
            );
        }
    }
}

fn bleu_options(o: &Value) -> BleuOptions {
    let tokenize = match o["tokenize"].as_str() {
        Some("13a") => BleuTokenizer::V13a,
        Some("char") => BleuTokenizer::Char,
        Some("none") => BleuTokenizer::None,
        other => panic!("tokenizer {other:?}"),
    };
    let value = o["smooth_value"].as_f64();
    let smoothing = match o["smooth_method"].as_str() {
        Some("exp") => Smoothing::Exp,
        Some("floor") => Smoothing::Floor(value.unwrap_or(0.1)),
        Some("add-k") => Smoothing::AddK(value.unwrap_or(1.0)),
        Some("none") => Smoothing::None,
        other => panic!("smoothing {other:?}"),
    };
    BleuOptions {
        tokenize,
        lowercase: o["lowercase"].as_bool().unwrap_or(false),
        smoothing,
        max_ngram_order: 4,
        effective_order: o["effective_order"].as_bool().unwrap_or(false),
    }
}

#[test]
fn bleu_tokenizers_match_sacrebleu() {
    let lines = fixture()["bleu"]["tokenize"].as_array().unwrap();
    assert!(lines.len() >= 200);
    for entry in lines {
        let line = entry["line"].as_str().unwrap();
        for (name, tokenize) in [("13a", BleuTokenizer::V13a), ("none", BleuTokenizer::None)] {
            let ours = tokenize_bleu(line, &BleuOptions::with_tokenizer(tokenize));
            assert_eq!(ours, strings(&entry[name]), "{name} tokens of {line:?}");
        }
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let mut agree = Agreement::new("BLEU (corpora)");
    for corpus in fixture()["bleu"]["corpora"].as_array().unwrap() {
        let name = corpus["name"].as_str().unwrap();
        let (preds, refs) = inputs(corpus["inputs"].as_str().unwrap());
        let opts = bleu_options(&corpus["options"]);
        let s = corpus_bleu_multi(&preds, &refs, &opts).unwrap();
        agree.check(name, s.score, f(&corpus["score"]));
        let (mut counts, mut totals) = (u64s(&corpus["counts"]), u64s(&corpus["totals"]));
        if let Smoothing::AddK(k) = opts.smoothing {
            // sacrebleu reports add-k's smoothed counts of orders 2 and up;
            // ours are the raw counts.
            for c in counts[1..].iter_mut().chain(totals[1..].iter_mut()) {
                *c -= k as u64;
            }
        }
        assert_eq!(s.counts, counts, "{name} counts");
        assert_eq!(s.totals, totals, "{name} totals");
        assert_eq!(
            s.sys_len,
            corpus["sys_len"].as_u64().unwrap(),
            "{name} sys_len"
        );
        assert_eq!(
            s.ref_len,
            corpus["ref_len"].as_u64().unwrap(),
            "{name} ref_len"
        );
        assert!((s.bp - f(&corpus["bp"])).abs() < 1e-9, "{name} bp");
        for (p, q) in s.precisions.iter().zip(floats(&corpus["precisions"])) {
            agree.check(name, *p, q);
        }
        if refs.iter().all(|r| r.len() == 1) {
            let single: Vec<&String> = refs.iter().map(|r| &r[0]).collect();
            let s1 = corpus_bleu(&preds, &single, &opts).unwrap();
            assert_eq!(
                s1, s,
                "{name}: single- and multi-reference entry points agree"
            );
        }
    }
}

#[test]
fn segment_bleu_matches_sacrebleu() {
    let (preds, refs) = inputs("main");
    assert!(preds.len() >= 200);
    let seg = &fixture()["bleu"]["segments"];
    for (key, metric, tokenize, smoothing, effective) in [
        (
            "13a",
            "BLEU 13a (per segment)",
            BleuTokenizer::V13a,
            Smoothing::Exp,
            false,
        ),
        (
            "char",
            "BLEU char (per segment)",
            BleuTokenizer::Char,
            Smoothing::Exp,
            false,
        ),
        (
            "none",
            "BLEU none (per segment)",
            BleuTokenizer::None,
            Smoothing::Exp,
            false,
        ),
        (
            "sentence_bleu",
            "sentence_bleu (per segment)",
            BleuTokenizer::V13a,
            Smoothing::Exp,
            true,
        ),
        (
            "13a floor",
            "BLEU floor (per segment)",
            BleuTokenizer::V13a,
            Smoothing::Floor(0.1),
            false,
        ),
        (
            "13a add-k",
            "BLEU add-k (per segment)",
            BleuTokenizer::V13a,
            Smoothing::AddK(1.0),
            false,
        ),
        (
            "13a none",
            "BLEU no smoothing (per seg.)",
            BleuTokenizer::V13a,
            Smoothing::None,
            false,
        ),
    ] {
        let mut agree = Agreement::new(metric);
        let opts = BleuOptions {
            tokenize,
            smoothing,
            effective_order: effective,
            ..BleuOptions::default()
        };
        for (i, expected) in floats(&seg[key]).into_iter().enumerate() {
            let s = corpus_bleu(&preds[i..=i], &[&refs[i][0]], &opts).unwrap();
            agree.check(&format!("{key} segment {i}"), s.score, expected);
        }
    }
}

fn chrf_options(o: &Value) -> ChrfOptions {
    ChrfOptions {
        char_order: o["char_order"].as_u64().unwrap() as usize,
        word_order: o["word_order"].as_u64().unwrap() as usize,
        beta: o["beta"].as_u64().unwrap() as u32,
        lowercase: o["lowercase"].as_bool().unwrap(),
        whitespace: o["whitespace"].as_bool().unwrap(),
        eps_smoothing: o["eps_smoothing"].as_bool().unwrap(),
    }
}

#[test]
fn chrf_matches_sacrebleu() {
    let mut agree = Agreement::new("chrF/chrF++ (corpora)");
    for corpus in fixture()["chrf"]["corpora"].as_array().unwrap() {
        let name = corpus["name"].as_str().unwrap();
        let (preds, refs) = inputs(corpus["inputs"].as_str().unwrap());
        let s = corpus_chrf_multi(&preds, &refs, &chrf_options(&corpus["options"])).unwrap();
        agree.check(name, s.score, f(&corpus["score"]));
    }
    let (preds, refs) = inputs("main");
    let seg = &fixture()["chrf"]["segments"];
    for (key, opts) in [
        ("chrF", ChrfOptions::default()),
        ("chrF++", ChrfOptions::chrf_plus_plus()),
    ] {
        let mut agree = Agreement::new(if key == "chrF" {
            "chrF (per segment)"
        } else {
            "chrF++ (per segment)"
        });
        for (i, expected) in floats(&seg[key]).into_iter().enumerate() {
            let s = corpus_chrf(&preds[i..=i], &[&refs[i][0]], &opts).unwrap();
            agree.check(&format!("{key} segment {i}"), s.score, expected);
        }
    }
}

#[test]
fn porter_stemmer_matches_nltk() {
    let stems = fixture()["rouge"]["stems"].as_object().unwrap();
    assert!(stems.len() > 1000);
    let wrong: Vec<String> = stems
        .iter()
        .filter_map(|(word, stem)| {
            let ours = porter_stem(word);
            (ours != stem.as_str().unwrap()).then(|| format!("{word}: ours {ours}, nltk {stem}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} stems differ: {wrong:#?}",
        wrong.len(),
        stems.len()
    );
}

#[test]
fn rouge_tokenizer_matches_rouge_score() {
    for entry in fixture()["rouge"]["tokens"].as_array().unwrap() {
        let text = entry["text"].as_str().unwrap();
        for (key, use_stemmer) in [("plain", false), ("stem", true)] {
            let ours = rouge_tokenize(text, &RougeOptions { use_stemmer });
            assert_eq!(ours, strings(&entry[key]), "{key} tokens of {text:?}");
        }
    }
}

#[test]
fn rouge_matches_rouge_score() {
    let (preds, refs) = inputs("main");
    let single: Vec<&String> = refs.iter().map(|r| &r[0]).collect();
    let rouge_fx = &fixture()["rouge"];
    let pairs = rouge_fx["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), preds.len());
    for (key, use_stemmer) in [("plain", false), ("stem", true)] {
        let opts = RougeOptions { use_stemmer };
        let mut agree = Agreement::new(if use_stemmer {
            "ROUGE, stemmed (pairs+means)"
        } else {
            "ROUGE (pairs+means)"
        });
        for (i, expected) in pairs.iter().enumerate() {
            let ours = rouge_pair(&preds[i], single[i], &opts);
            for (kind, prf) in [
                ("rouge1", ours.rouge1),
                ("rouge2", ours.rouge2),
                ("rougeL", ours.rouge_l),
                ("rougeLsum", ours.rouge_lsum),
            ] {
                let e = floats(&expected[key][kind]);
                let what = format!("pair {i} {kind}");
                agree.check(&what, prf.precision, 100.0 * e[0]);
                agree.check(&what, prf.recall, 100.0 * e[1]);
                agree.check(&what, prf.f1, 100.0 * e[2]);
            }
        }
        let means = rouge(&preds, &single, &opts).unwrap();
        let e = &rouge_fx["means"][key];
        agree.check("mean rouge1", means.rouge1, 100.0 * f(&e["rouge1"]));
        agree.check("mean rouge2", means.rouge2, 100.0 * f(&e["rouge2"]));
        agree.check("mean rougeL", means.rouge_l, 100.0 * f(&e["rougeL"]));
        agree.check(
            "mean rougeLsum",
            means.rouge_lsum,
            100.0 * f(&e["rougeLsum"]),
        );

        let multi = &rouge_fx["multi"];
        let m = rouge_multi(
            &strings(&multi["predictions"]),
            &string_lists(&multi["references"]),
            &opts,
        )
        .unwrap();
        let e = &multi[key];
        agree.check("multi rouge1", m.rouge1, 100.0 * f(&e["rouge1"]));
        agree.check("multi rouge2", m.rouge2, 100.0 * f(&e["rouge2"]));
        agree.check("multi rougeL", m.rouge_l, 100.0 * f(&e["rougeL"]));
        agree.check("multi rougeLsum", m.rouge_lsum, 100.0 * f(&e["rougeLsum"]));
    }
}

#[test]
fn squad_matches_evaluate_v1_1() {
    let sq = &fixture()["squad"];
    for (text, normalized) in sq["normalized"].as_object().unwrap() {
        assert_eq!(
            normalize_answer(text),
            normalized.as_str().unwrap(),
            "normalize {text:?}"
        );
    }
    let preds = strings(&sq["predictions"]);
    let refs = string_lists(&sq["references"]);
    assert!(preds.len() >= 200);
    let mut agree = Agreement::new("SQuAD EM/F1");
    for (i, (em, f1)) in floats(&sq["em"])
        .into_iter()
        .zip(floats(&sq["f1"]))
        .enumerate()
    {
        let ours_em = refs[i].iter().any(|r| squad_exact_match(&preds[i], r));
        assert_eq!(f64::from(u8::from(ours_em)), em, "exact match of pair {i}");
        let ours_f1 = refs[i]
            .iter()
            .map(|r| squad_f1(&preds[i], r))
            .fold(0.0, f64::max);
        agree.check(&format!("f1 of pair {i}"), 100.0 * ours_f1, 100.0 * f1);
    }
    let multi = squad_multi(&preds, &refs).unwrap();
    agree.check("mean EM", multi.exact_match, f(&sq["multi"]["exact_match"]));
    agree.check("mean F1", multi.f1, f(&sq["multi"]["f1"]));
    let first: Vec<&String> = refs.iter().map(|r| &r[0]).collect();
    let single = squad(&preds, &first).unwrap();
    agree.check(
        "mean EM, first reference",
        single.exact_match,
        f(&sq["first"]["exact_match"]),
    );
    agree.check("mean F1, first reference", single.f1, f(&sq["first"]["f1"]));
}

#[test]
fn classification_matches_scikit_learn() {
    let mut agree = Agreement::new("classification");
    for case in fixture()["classification"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let labels = strings(&case["labels"]);
        let r = classification_report(
            &strings(&case["predictions"]),
            &strings(&case["references"]),
            &labels,
        )
        .unwrap();
        agree.check(
            &format!("{name} accuracy"),
            r.accuracy,
            100.0 * f(&case["accuracy"]),
        );
        let (p, rc, f1) = (
            floats(&case["precision"]),
            floats(&case["recall"]),
            floats(&case["f1"]),
        );
        let support = u64s(&case["support"]);
        for (i, l) in r.per_label.iter().enumerate() {
            assert_eq!(l.label, labels[i]);
            agree.check(
                &format!("{name} {} precision", l.label),
                l.scores.precision,
                100.0 * p[i],
            );
            agree.check(
                &format!("{name} {} recall", l.label),
                l.scores.recall,
                100.0 * rc[i],
            );
            agree.check(
                &format!("{name} {} f1", l.label),
                l.scores.f1,
                100.0 * f1[i],
            );
            assert_eq!(l.support, support[i], "{name} {} support", l.label);
        }
        for (avg, ours) in [("macro", r.macro_avg), ("micro", r.micro_avg)] {
            let e = floats(&case[avg]);
            agree.check(
                &format!("{name} {avg} precision"),
                ours.precision,
                100.0 * e[0],
            );
            agree.check(&format!("{name} {avg} recall"), ours.recall, 100.0 * e[1]);
            agree.check(&format!("{name} {avg} f1"), ours.f1, 100.0 * e[2]);
        }
        let invalid = u64s(&case["invalid_per_label"]);
        for (i, row) in case["confusion"].as_array().unwrap().iter().enumerate() {
            let mut expected = u64s(row);
            expected.push(invalid[i]);
            assert_eq!(r.confusion[i], expected, "{name} confusion row {i}");
        }
        assert_eq!(
            r.invalid,
            case["invalid"].as_u64().unwrap(),
            "{name} invalid"
        );
    }
}

#[test]
fn token_accuracy_matches_numpy() {
    for case in fixture()["token_accuracy"].as_array().unwrap() {
        let predicted: Vec<u32> = u64s(&case["predicted"])
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let labels: Vec<i64> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let acc = token_accuracy(&predicted, &labels).unwrap();
        assert_eq!(acc.correct, case["correct"].as_u64().unwrap());
        assert_eq!(acc.total, case["total"].as_u64().unwrap());
    }
}

#[test]
fn mismatched_lengths_are_clear_errors() {
    let preds = ["a", "b"];
    let refs = ["a"];
    let multi = [vec!["a"]];
    let errors = [
        corpus_bleu(&preds, &refs, &BleuOptions::default()).unwrap_err(),
        corpus_bleu_multi(&preds, &multi, &BleuOptions::default()).unwrap_err(),
        corpus_chrf(&preds, &refs, &ChrfOptions::default()).unwrap_err(),
        rouge(&preds, &refs, &RougeOptions::default()).unwrap_err(),
        squad(&preds, &refs).unwrap_err(),
        classification_report(&preds, &refs, &["a", "b"]).unwrap_err(),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(msg.contains("2 predictions but 1 references"), "{msg}");
    }
    let msg = token_accuracy(&[1, 2], &[1]).unwrap_err().to_string();
    assert!(msg.contains("2 predicted ids but 1 labels"), "{msg}");
}

#[test]
fn empty_and_malformed_inputs_are_errors() {
    let none: [&str; 0] = [];
    assert!(corpus_bleu(&none, &none, &BleuOptions::default())
        .unwrap_err()
        .to_string()
        .contains("no predictions"));
    assert!(rouge(&none, &none, &RougeOptions::default()).is_err());
    assert!(squad(&none, &none).is_err());
    let no_refs: [Vec<&str>; 1] = [vec![]];
    assert!(squad_multi(&["x"], &no_refs)
        .unwrap_err()
        .to_string()
        .contains("prediction 0 has no reference"));
    assert!(rouge_multi(&["x"], &no_refs, &RougeOptions::default()).is_err());
    assert!(corpus_chrf_multi(&["x"], &no_refs, &ChrfOptions::default()).is_err());
    let msg = classification_report(&["yes"], &["perhaps"], &["yes", "no"])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("reference 0 is \"perhaps\""), "{msg}");
    let opts = BleuOptions {
        max_ngram_order: 0,
        ..BleuOptions::default()
    };
    assert!(corpus_bleu(&["a"], &["a"], &opts).is_err());
}
