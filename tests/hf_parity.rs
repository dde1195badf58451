//! The model against Hugging Face `transformers`, on fixtures made by
//! `tests/fixtures/hf/make_fixtures.py`: the same weights and the same
//! padded batch must give the same logits, loss, gradients and generations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use t5_tui::model::generate::{generate, EarlyStopping, GenerateOptions, Strategy};
use t5_tui::model::{cross_entropy, ForwardMode, T5Config, T5};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn load_io(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).expect("fixture io")
}

fn u32_ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

struct Outputs {
    logits: Tensor,
    loss: Tensor,
}

fn run_batch(model: &T5, io: &HashMap<String, Tensor>) -> Outputs {
    let mut mode = ForwardMode::eval();
    let logits = model
        .forward(
            &u32_ids(&io["input_ids"]),
            &io["attention_mask"],
            &u32_ids(&io["decoder_input_ids"]),
            Some(&io["decoder_attention_mask"]),
            &mut mode,
        )
        .unwrap();
    let loss = cross_entropy(&logits, &io["labels"], None, 0.0)
        .unwrap()
        .loss;
    Outputs { logits, loss }
}

fn check_forward_and_gradients(variant: &str) {
    let dir = fixture_dir(variant);
    let model = T5::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let io = load_io(&dir);
    let out = run_batch(&model, &io);

    let logit_diff = max_abs_diff(&out.logits, &io["logits"]);
    assert!(
        logit_diff < 1e-4,
        "{variant}: logits differ by {logit_diff}"
    );
    let loss = out.loss.to_scalar::<f32>().unwrap();
    let hf_loss = io["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (loss - hf_loss).abs() < 1e-5,
        "{variant}: loss {loss} vs transformers {hf_loss}"
    );

    let grads = out.loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in model.params() {
        let hf = io
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("{variant}: no reference gradient for {name}"));
        let ours = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{variant}: no gradient for {name}"));
        let diff = max_abs_diff(ours, hf);
        let scale = norm(hf).max(1e-12);
        assert!(
            diff <= 1e-4 * scale,
            "{variant}: gradient of {name} differs by {diff} (norm {scale})"
        );
        checked += 1;
    }
    let hf_grads = io.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, hf_grads, "{variant}: parameter sets differ");
}

#[test]
fn v1_0_logits_loss_and_gradients_match_transformers() {
    check_forward_and_gradients("v1_0");
}

#[test]
fn v1_1_logits_loss_and_gradients_match_transformers() {
    check_forward_and_gradients("v1_1");
}

#[derive(serde::Deserialize)]
struct BeamRun {
    settings: serde_json::Value,
    outputs: Vec<Vec<u32>>,
}

#[derive(serde::Deserialize)]
struct Generations {
    max_new_tokens: usize,
    prompts: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    greedy_batched: Vec<Vec<u32>>,
    beam: Vec<BeamRun>,
}

fn load_generations(dir: &Path) -> Generations {
    let text = std::fs::read_to_string(dir.join("generate.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn beam_strategy(settings: &serde_json::Value) -> Strategy {
    let early_stopping = match &settings["early_stopping"] {
        serde_json::Value::Bool(true) => EarlyStopping::Always,
        serde_json::Value::Bool(false) => EarlyStopping::Heuristic,
        serde_json::Value::String(s) if s == "never" => EarlyStopping::Never,
        other => panic!("unknown early_stopping {other}"),
    };
    Strategy::Beam {
        num_beams: settings["num_beams"].as_u64().unwrap() as usize,
        length_penalty: settings["length_penalty"].as_f64().unwrap(),
        early_stopping,
    }
}

fn check_generation(variant: &str) {
    let dir = fixture_dir(variant);
    let model = T5::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let gens = load_generations(&dir);
    for use_cache in [true, false] {
        let opts = GenerateOptions {
            max_new_tokens: gens.max_new_tokens,
            strategy: Strategy::Greedy,
            use_cache,
        };
        // One prompt at a time, and all together with padding.
        for (prompt, expected) in gens.prompts.iter().zip(&gens.greedy) {
            let got = generate(&model, std::slice::from_ref(prompt), &opts).unwrap();
            assert_eq!(&got[0], expected, "{variant}: greedy, cache {use_cache}");
        }
        let batched = generate(&model, &gens.prompts, &opts).unwrap();
        assert_eq!(
            batched, gens.greedy_batched,
            "{variant}: batched greedy, cache {use_cache}"
        );
        for run in &gens.beam {
            let opts = GenerateOptions {
                max_new_tokens: gens.max_new_tokens,
                strategy: beam_strategy(&run.settings),
                use_cache,
            };
            let got = generate(&model, &gens.prompts, &opts).unwrap();
            assert_eq!(
                got, run.outputs,
                "{variant}: beam {}, cache {use_cache}",
                run.settings
            );
        }
    }
}

#[test]
fn v1_0_greedy_and_beam_generation_match_transformers() {
    check_generation("v1_0");
}

#[test]
fn v1_1_greedy_and_beam_generation_match_transformers() {
    check_generation("v1_1");
}

/// The config of the model that `write_rust_export` saves: the v1.1 or
/// the v1.0 fixture's shape.
fn export_config(tie: bool) -> T5Config {
    let dir = fixture_dir(if tie { "v1_0" } else { "v1_1" });
    let cfg = T5Config::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.tie_word_embeddings, tie);
    cfg
}

const EXPORT_SEED: u64 = 42;

/// Writes a freshly initialised model as this crate saves it, for the
/// fixture script's `--check-rust` to load in `transformers`.
#[test]
#[ignore = "writes the fixture; run by hand before make_fixtures.py --check-rust"]
fn write_rust_export() {
    for (name, tie) in [("rust_export_v1_1", false), ("rust_export_v1_0", true)] {
        let cfg = export_config(tie);
        let model = T5::new_random(&cfg, EXPORT_SEED, &Device::Cpu).unwrap();
        model.save_hf_dir(&fixture_dir(name)).unwrap();
    }
}

/// A model saved here loads in `transformers` with no missing or unexpected
/// keys and gives the same logits; and the committed file is what this
/// crate's seeded initialisation and saving produce today.
fn check_rust_export(name: &str, tie: bool) {
    let dir = fixture_dir(name);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hf_check.json")).unwrap()).unwrap();
    for key in [
        "missing_keys",
        "unexpected_keys",
        "mismatched_keys",
        "error_msgs",
    ] {
        assert_eq!(
            report[key],
            serde_json::json!([]),
            "{name}: transformers reported {key}"
        );
    }
    assert_eq!(
        report["head_tied"],
        serde_json::json!(tie),
        "{name}: head tying"
    );
    assert_eq!(report["scale_decoder_outputs"], serde_json::json!(tie));

    let cfg = export_config(tie);
    let fresh = T5::new_random(&cfg, EXPORT_SEED, &Device::Cpu).unwrap();
    let saved = T5::load_hf_dir(&dir, &Device::Cpu).unwrap();
    for ((n1, a), (n2, b)) in fresh
        .named_tensors()
        .iter()
        .zip(saved.named_tensors().iter())
    {
        assert_eq!(n1, n2);
        assert_eq!(
            max_abs_diff(a, b),
            0.0,
            "{name}: {n1} is not what init + save give"
        );
    }

    let io = load_io(&fixture_dir("v1_1"));
    let hf: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("hf_check.safetensors"), &Device::Cpu).unwrap();
    let out = run_batch(&saved, &io);
    let diff = max_abs_diff(&out.logits, &hf["logits"]);
    assert!(
        diff < 1e-4,
        "{name}: logits differ from transformers' by {diff}"
    );
}

#[test]
fn untied_model_saved_here_loads_in_transformers_with_the_same_logits() {
    check_rust_export("rust_export_v1_1", false);
}

#[test]
fn tied_model_saved_here_loads_in_transformers_with_the_same_logits() {
    check_rust_export("rust_export_v1_0", true);
}
