//! The T5 tokenizer: T5's special ids and sentinel layout, training errors,
//! Japanese, loading errors, and parity with Hugging Face `transformers` on
//! the fixture in tests/fixtures/tokenizer (made by make_fixture.py there).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use t5_tui::data::tokenizer::{model_vocab_size, sentinel_token, T5Tokenizer};
use t5_tui::Error;

const FIXTURE_VOCAB: usize = 600;
const FIXTURE_EXTRA_IDS: usize = 100;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn corpus_lines() -> Vec<String> {
    let text = std::fs::read_to_string(fixture_dir().join("corpus.txt")).expect("corpus.txt");
    text.lines().map(str::to_owned).collect()
}

/// A tokenizer trained on the fixture corpus with the fixture's settings,
/// shared by the tests that only read it.
fn trained() -> &'static T5Tokenizer {
    static TOKENIZER: OnceLock<T5Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        T5Tokenizer::train(corpus_lines(), FIXTURE_VOCAB, FIXTURE_EXTRA_IDS).expect("train")
    })
}

fn json_of(t: &T5Tokenizer) -> serde_json::Value {
    serde_json::from_str(&t.to_json().unwrap()).unwrap()
}

fn committed() -> T5Tokenizer {
    T5Tokenizer::load(fixture_dir().join("tokenizer.json")).expect("committed tokenizer.json")
}

#[derive(serde::Deserialize)]
struct HfCase {
    text: String,
    pretrained_tokenizer_fast: Vec<u32>,
    t5_tokenizer_fast: Vec<u32>,
    auto_from_pretrained: Vec<u32>,
    t5_from_pretrained: Vec<u32>,
    decoded: String,
}

#[derive(serde::Deserialize)]
struct HfIds {
    auto_tokenizer_class: String,
    vocab_size: usize,
    pad_token_id: u32,
    eos_token_id: u32,
    unk_token_id: u32,
    sentinel_ids: Vec<u32>,
    cases: Vec<HfCase>,
}

fn hf_ids() -> HfIds {
    let text = std::fs::read_to_string(fixture_dir().join("hf_ids.json")).expect("hf_ids.json");
    serde_json::from_str(&text).expect("hf_ids.json parses")
}

/// Regenerates tests/fixtures/tokenizer/tokenizer.json; then run
/// `make_fixture.py hf` to regenerate what transformers makes of it.
#[test]
#[ignore = "writes the fixture; run by hand, see make_fixture.py"]
fn write_tokenizer_fixture() {
    let tokenizer = T5Tokenizer::train(corpus_lines(), FIXTURE_VOCAB, FIXTURE_EXTRA_IDS).unwrap();
    tokenizer
        .save(fixture_dir().join("tokenizer.json"))
        .unwrap();
    let config = serde_json::to_string_pretty(&tokenizer.hf_tokenizer_config()).unwrap();
    std::fs::write(fixture_dir().join("tokenizer_config.json"), config + "\n").unwrap();
}

#[test]
fn special_ids_are_t5s() {
    let t = trained();
    assert_eq!(t.vocab_size(), FIXTURE_VOCAB);
    assert_eq!(t.pad_id(), 0);
    assert_eq!(t.eos_id(), 1);
    assert_eq!(t.unk_id(), 2);
    assert_eq!(t.token_to_id("<pad>"), Some(0));
    assert_eq!(t.token_to_id("</s>"), Some(1));
    assert_eq!(t.token_to_id("<unk>"), Some(2));
    assert_eq!(t.id_to_token(1).as_deref(), Some("</s>"));
}

#[test]
fn sentinels_are_the_highest_ids_extra_id_0_last() {
    let t = trained();
    assert_eq!(t.num_sentinels(), 100);
    assert_eq!(t.sentinel_id(0), 599);
    assert_eq!(t.sentinel_id(99), 500);
    for i in 0..100 {
        assert_eq!(t.sentinel_id(i), (FIXTURE_VOCAB - 1 - i) as u32);
        assert_eq!(t.id_to_token(t.sentinel_id(i)), Some(sentinel_token(i)));
    }
    assert_eq!(t.sentinel_ids().len(), 100);
    // The learned pieces fill the ids between <unk> and <extra_id_99>.
    for id in 3..500 {
        let piece = t.id_to_token(id).unwrap();
        assert!(!piece.starts_with("<extra_id_"), "{id}: {piece}");
    }
}

#[test]
fn other_sentinel_counts_keep_the_layout() {
    let t = T5Tokenizer::train(corpus_lines(), 300, 7).unwrap();
    assert_eq!(t.vocab_size(), 300);
    assert_eq!(t.num_sentinels(), 7);
    assert_eq!(t.sentinel_id(0), 299);
    assert_eq!(t.sentinel_id(6), 293);
    assert_eq!(t.token_to_id("<extra_id_7>"), None);
    assert_eq!((t.pad_id(), t.eos_id(), t.unk_id()), (0, 1, 2));
}

#[test]
#[should_panic(expected = "sentinel 100 asked of a tokenizer with 100 sentinels")]
fn sentinel_past_the_last_panics() {
    trained().sentinel_id(100);
}

#[test]
fn encode_appends_eos_and_decode_skips_specials() {
    let t = trained();
    let ids = t.encode("The cat reads a long book.").unwrap();
    assert_eq!(*ids.last().unwrap(), 1);
    assert_eq!(
        &ids[..ids.len() - 1],
        t.encode_no_eos("The cat reads a long book.").unwrap()
    );
    assert!(!ids[..ids.len() - 1].contains(&1));
    assert_eq!(t.decode(&ids).unwrap(), "The cat reads a long book.");

    // A sentinel written in the text is one token, and decode drops it.
    let ids = t.encode_no_eos("The cat <extra_id_0> door").unwrap();
    assert!(ids.contains(&t.sentinel_id(0)));
    assert_eq!(t.decode(&ids).unwrap(), "The cat door");
    assert!(t
        .decode_with_special(&ids)
        .unwrap()
        .contains("<extra_id_0>"));
    // Ids past the vocabulary (a model's padded rows) are skipped.
    let mut ids = t.encode_no_eos("The cat").unwrap();
    ids.push(FIXTURE_VOCAB as u32 + 5);
    assert_eq!(t.decode(&ids).unwrap(), "The cat");
}

#[test]
fn empty_text_encodes_to_eos_alone() {
    let t = trained();
    assert_eq!(t.encode("").unwrap(), vec![1]);
    assert_eq!(t.encode(" \t\n ").unwrap(), vec![1]);
}

#[test]
fn english_and_japanese_round_trip() {
    let t = trained();
    for text in [
        "My brother reads a long book every morning.",
        "  Hello   world,\tthis is\na test.  ",
        "毎朝猫は長い本を読みます。",
        "東京は日本の首都です。",
        "猫は赤いドアを開けます。 The cat opens the red door.",
        "Ｈｅｌｌｏ，　ｗｏｒｌｄ",
    ] {
        let ids = t.encode(text).unwrap();
        assert!(!ids.contains(&t.unk_id()), "{text:?} has <unk>: {ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), t.normalize(text), "{text:?}");
    }
    assert_eq!(t.normalize("  a\t\tb\nc  "), "a b c");
    assert_eq!(t.normalize("Ｈｅｌｌｏ，　１２"), "Hello, 12");
}

#[test]
fn japanese_without_spaces_is_cut_into_several_pieces() {
    let t = trained();
    let text = "毎朝猫は長い本を読みます。";
    let tokens = t.tokens(text).unwrap();
    assert!(tokens.len() >= 3, "{tokens:?}");
    assert!(tokens[0].starts_with('▁'), "{tokens:?}");
    // No piece is longer than SentencePiece's 16 characters.
    let max = (3..t.vocab_size() as u32 - 100)
        .map(|id| t.id_to_token(id).unwrap().chars().count())
        .max()
        .unwrap();
    assert!(max <= 16, "longest piece {max}");
    // A whole sentence is one "word" for the pre-tokenizer, so it is the
    // Unigram model alone that cuts it.
    assert_eq!(tokens.concat(), format!("▁{text}"));
}

#[test]
fn unknown_characters_become_unk() {
    let t = trained();
    let ids = t.encode_no_eos("鬱").unwrap();
    assert!(ids.contains(&t.unk_id()), "{ids:?}");
}

#[test]
fn vocab_smaller_than_the_special_tokens_is_one_clear_error() {
    let err = T5Tokenizer::train(["some text"], 50, 100).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(
        msg.contains("50") && msg.contains("100") && msg.contains("103"),
        "{msg}"
    );

    let err = T5Tokenizer::train(["some text"], 103, 100).unwrap_err();
    assert!(err.to_string().contains("103"), "{err}");
}

#[test]
fn vocab_smaller_than_the_alphabet_is_a_clear_error() {
    // 104 ids leave one learned piece; the text has more characters.
    let err = T5Tokenizer::train(corpus_lines(), 110, 100).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(
        msg.contains("110") && msg.contains("distinct characters"),
        "{msg}"
    );
}

#[test]
fn vocab_larger_than_the_text_allows_is_a_clear_error() {
    let err = T5Tokenizer::train(["one two three one two three"], 5000, 100).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("too small for vocab_size 5000"), "{msg}");
}

#[test]
fn empty_training_text_is_a_clear_error() {
    for texts in [vec![], vec!["", "   ", "\n\t"]] {
        let err = T5Tokenizer::train(texts, 600, 100).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("empty"), "{err}");
    }
    // Special tokens alone are no text either.
    let err = T5Tokenizer::train(["<extra_id_0> </s>"], 600, 100).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn train_files_reads_lines_and_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let lines = corpus_lines();
    let (a, b) = lines.split_at(lines.len() / 2);
    let pa = dir.path().join("a.txt");
    let pb = dir.path().join("b.txt");
    std::fs::write(&pa, a.join("\n")).unwrap();
    std::fs::write(&pb, b.join("\n")).unwrap();
    let from_files = T5Tokenizer::train_files(&[&pa, &pb], 300, 10).unwrap();
    let from_lines = T5Tokenizer::train(&lines, 300, 10).unwrap();
    assert_eq!(from_files.to_json().unwrap(), from_lines.to_json().unwrap());

    let missing = dir.path().join("missing.txt");
    let err = T5Tokenizer::train_files(&[&pa, &missing], 300, 10).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.txt"), "{err}");

    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let err = T5Tokenizer::train_files(&[&binary], 300, 10).unwrap_err();
    assert!(err.to_string().contains("binary.txt"), "{err}");

    let none: [&Path; 0] = [];
    assert!(T5Tokenizer::train_files(&none, 300, 10).is_err());
}

#[test]
fn training_is_deterministic() {
    let again = T5Tokenizer::train(corpus_lines(), FIXTURE_VOCAB, FIXTURE_EXTRA_IDS).unwrap();
    assert_eq!(again.to_json().unwrap(), trained().to_json().unwrap());
}

#[test]
fn fresh_training_equals_the_committed_tokenizer() {
    let committed = std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap();
    assert_eq!(
        trained().to_json().unwrap(),
        committed,
        "training on corpus.txt no longer gives the committed tokenizer.json \
         (regenerate with the steps in make_fixture.py if that is intended)"
    );
}

#[test]
fn save_then_load_gives_the_same_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    trained().save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.json")]);
    let loaded = T5Tokenizer::load(&path).unwrap();
    // serde_json may read a score back one ulp off; all else is the same.
    let (a, b) = (json_of(&loaded), json_of(trained()));
    assert_eq!(a["added_tokens"], b["added_tokens"]);
    assert_eq!(a["normalizer"], b["normalizer"]);
    assert_eq!(a["pre_tokenizer"], b["pre_tokenizer"]);
    assert_eq!(a["post_processor"], b["post_processor"]);
    assert_eq!(a["decoder"], b["decoder"]);
    let (va, vb) = (
        a["model"]["vocab"].as_array().unwrap(),
        b["model"]["vocab"].as_array().unwrap(),
    );
    assert_eq!(va.len(), vb.len());
    for (pa, pb) in va.iter().zip(vb) {
        assert_eq!(pa[0], pb[0]);
        let (sa, sb) = (pa[1].as_f64().unwrap(), pb[1].as_f64().unwrap());
        assert!((sa - sb).abs() <= 1e-12 * sb.abs().max(1.0), "{pa} {pb}");
    }
    assert_eq!(loaded.vocab_size(), FIXTURE_VOCAB);
    assert_eq!(loaded.sentinel_id(0), trained().sentinel_id(0));
    let text = "猫は赤いドアを開けます。 The cat opens the red door.";
    assert_eq!(
        loaded.encode(text).unwrap(),
        trained().encode(text).unwrap()
    );

    // Saving over an existing file replaces it.
    trained().save(&path).unwrap();
    assert!(T5Tokenizer::load(&path).is_ok());
}

#[test]
fn the_saved_file_has_t5s_layout() {
    let json = json_of(trained());
    let model = &json["model"];
    assert_eq!(model["type"], "Unigram");
    assert_eq!(model["unk_id"], 2);
    let vocab = model["vocab"].as_array().unwrap();
    assert_eq!(vocab.len(), FIXTURE_VOCAB);
    assert_eq!(vocab[0][0], "<pad>");
    assert_eq!(vocab[1][0], "</s>");
    assert_eq!(vocab[2][0], "<unk>");
    assert_eq!(vocab[500][0], "<extra_id_99>");
    assert_eq!(vocab[599][0], "<extra_id_0>");
    // Learned pieces by descending score.
    let scores: Vec<f64> = vocab[3..500]
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));

    let added = json["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 103);
    for token in added {
        assert_eq!(token["special"], true, "{token}");
        assert_eq!(token["normalized"], false, "{token}");
    }
    assert_eq!(json["pre_tokenizer"]["type"], "Sequence");
    assert_eq!(
        json["pre_tokenizer"]["pretokenizers"][0]["type"],
        "WhitespaceSplit"
    );
    let metaspace = &json["pre_tokenizer"]["pretokenizers"][1];
    assert_eq!(metaspace["type"], "Metaspace");
    assert_eq!(metaspace["replacement"], "▁");
    assert_eq!(metaspace["prepend_scheme"], "always");
    assert_eq!(metaspace["split"], true);
    assert_eq!(json["decoder"]["type"], "Metaspace");
    assert_eq!(json["post_processor"]["type"], "TemplateProcessing");
    assert_eq!(json["normalizer"]["normalizers"][0]["type"], "NFKC");
}

#[test]
fn model_vocab_size_rounds_up_to_128() {
    assert_eq!(model_vocab_size(32100), 32128);
    assert_eq!(model_vocab_size(600), 640);
    assert_eq!(model_vocab_size(640), 640);
    assert_eq!(model_vocab_size(1), 128);
    assert_eq!(model_vocab_size(129), 256);
    assert_eq!(model_vocab_size(0), 0);
}

// ------------------------------------------------------------ load errors

#[test]
fn a_file_that_is_not_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "this is not json").unwrap();
    let err = T5Tokenizer::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not valid JSON"),
        "{msg}"
    );

    std::fs::write(&path, r#"{"vocab": [1, 2, 3]}"#).unwrap();
    let msg = T5Tokenizer::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("is not a tokenizer.json"),
        "{msg}"
    );

    let missing = dir.path().join("nope.json");
    let err = T5Tokenizer::load(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.json"), "{err}");
}

/// The committed tokenizer.json with some tokens renamed away.
fn without_tokens(dir: &Path, remove: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rename = |s: &mut serde_json::Value| {
        if let Some(t) = s.as_str() {
            if remove.contains(&t) || (remove.contains(&"sentinels") && t.starts_with("<extra_id_"))
            {
                *s = serde_json::Value::String(format!("[removed {t}]"));
            }
        }
    };
    for piece in json["model"]["vocab"].as_array_mut().unwrap() {
        rename(&mut piece[0]);
    }
    for token in json["added_tokens"].as_array_mut().unwrap() {
        rename(&mut token["content"]);
    }
    // The template names `</s>`: point it at a token that is still there.
    if remove.contains(&"</s>") {
        json["post_processor"] = serde_json::Value::Null;
    }
    let path = dir.join(format!("without-{}.json", remove.len()));
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn a_tokenizer_without_t5s_special_tokens_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = without_tokens(dir.path(), &["</s>", "<pad>"]);
    let err = T5Tokenizer::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(msg.contains("without-2.json"), "{msg}");
    assert!(msg.contains("<pad>, </s>"), "{msg}");

    let path = without_tokens(dir.path(), &["sentinels"]);
    let msg = T5Tokenizer::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("without-1.json") && msg.contains("no sentinel"),
        "{msg}"
    );
}

// ------------------------------------------------- Hugging Face parity

#[test]
fn committed_tokenizer_matches_transformers_ids() {
    let t = committed();
    let hf = hf_ids();
    assert_eq!(hf.vocab_size, t.vocab_size());
    assert_eq!(hf.pad_token_id, t.pad_id());
    assert_eq!(hf.eos_token_id, t.eos_id());
    assert_eq!(hf.unk_token_id, t.unk_id());
    assert_eq!(hf.sentinel_ids, t.sentinel_ids());
    assert!(hf.cases.len() >= 20);
    for case in &hf.cases {
        let ids = t.encode(&case.text).unwrap();
        assert_eq!(ids, case.pretrained_tokenizer_fast, "{:?}", case.text);
        assert_eq!(ids, case.t5_tokenizer_fast, "{:?}", case.text);
        assert_eq!(ids, case.auto_from_pretrained, "{:?}", case.text);
        assert_eq!(t.decode(&ids).unwrap(), case.decoded, "{:?}", case.text);
    }
}

#[test]
fn committed_tokenizer_config_is_the_crates() {
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer_config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config, committed().hf_tokenizer_config());
    // With it, AutoTokenizer takes tokenizer.json as it is (checked above).
    assert_eq!(hf_ids().auto_tokenizer_class, "TokenizersBackend");
}

/// `T5Tokenizer.from_pretrained` (transformers 5) rebuilds the pipeline from
/// the vocab and keeps only a SentencePiece `Precompiled` normalizer: it
/// loses NFKC, and so differs from this crate exactly on the texts NFKC
/// changes (full-width forms, combining accents), and nowhere else.
#[test]
fn t5_from_pretrained_differs_only_where_nfkc_matters() {
    let t = committed();
    let mut differing = 0;
    for case in &hf_ids().cases {
        let ours = t.encode(&case.text).unwrap();
        let whitespace_only = case.text.split_whitespace().collect::<Vec<_>>().join(" ");
        if t.normalize(&case.text) == whitespace_only {
            assert_eq!(ours, case.t5_from_pretrained, "{:?}", case.text);
        } else if ours != case.t5_from_pretrained {
            differing += 1;
        }
    }
    assert!(differing > 0, "the samples no longer show the difference");
}

#[test]
fn hf_saved_t5_tokenizer_loads_and_gives_the_same_ids() {
    let t = T5Tokenizer::load(fixture_dir().join("hf_saved/tokenizer.json")).unwrap();
    let ours = committed();
    assert_eq!(t.vocab_size(), ours.vocab_size());
    assert_eq!((t.pad_id(), t.eos_id(), t.unk_id()), (0, 1, 2));
    assert_eq!(t.num_sentinels(), 100);
    assert_eq!(t.sentinel_ids(), ours.sentinel_ids());
    for case in &hf_ids().cases {
        assert_eq!(
            t.encode(&case.text).unwrap(),
            case.t5_tokenizer_fast,
            "{:?}",
            case.text
        );
    }
}
