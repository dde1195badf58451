//! What several test files share: a tiny experiment that trains in
//! milliseconds a step, on a corpus the test writes.

use std::path::Path;

/// The tiny experiment's TOML: a one-layer T5 of width 32 reading
/// `corpus.txt`, `name` and `steps` as given, and `extra` TOML appended
/// (further sections).
pub fn tiny_experiment_toml(name: &str, steps: u64, extra: &str) -> String {
    format!(
        r#"name = "{name}"
[model]
vocab_size = 128
d_model = 32
d_ff = 64
num_layers = 1
num_heads = 2
[tokenizer]
vocab_size = 50
extra_ids = 10
[data]
sources = ["corpus.txt"]
[objective]
input_length = 24
[train]
device = "cpu"
batch_size = 4
steps = {steps}
{extra}
"#
    )
}

/// Writes `corpus.txt` (300 short sentences) and `exp.toml` (see
/// [`tiny_experiment_toml`]) into `dir`.
#[allow(dead_code)]
pub fn write_tiny_experiment(dir: &Path, name: &str, steps: u64, extra: &str) {
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "the {} cat sees the {} dog on day {i}.\n",
            i % 7,
            i % 11
        ));
    }
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    std::fs::write(
        dir.join("exp.toml"),
        tiny_experiment_toml(name, steps, extra),
    )
    .unwrap();
}
