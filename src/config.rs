//! The experiment config: one TOML file that says which model to train, on
//! what, and how.
//!
//! ```toml
//! name = "tiny-wiki"                 # optional; defaults to the file's stem
//! description = "span corruption on a text dump"
//!
//! [model]
//! preset = "t5-tiny"                 # a file in configs/; any field below overrides it
//! dropout_rate = 0.1
//!
//! [data]
//! sources = ["data/wiki.txt"]        # relative to this file
//!
//! [train]
//! steps = 2000
//! learning_rate = 1e-3
//! ```
//!
//! Every section, and every key in it, has a default, so a file may leave
//! out whole sections; an experiment with no `[model]` section trains
//! `t5-tiny`. Unknown keys are errors, so a typo never silently falls back to
//! a default. [`ExperimentFile`] is the file as written (what an editor
//! changes and writes back); [`Experiment`] is it resolved: the preset merged,
//! the model a checked [`T5Config`], every other section checked and relative
//! paths made absolute. A resolved experiment written out with
//! [`Experiment::to_toml`] is itself a valid experiment file.
//!
//! Presets are experiment files in a `configs/` folder named by their stem
//! (`configs/t5-small.toml` is `preset = "t5-small"`). A preset is looked up
//! in the `configs/` folder beside the config file (or the config's own
//! folder when that is a `configs/` folder), then among the presets built
//! into the program, so an installed binary works anywhere. Only a preset's
//! `[model]` section is used.
//!
//! Every error is [`Error::Config`] with one sentence that names the file,
//! the section and key, the line when known, and what would be valid, e.g.
//! `x.toml: [model] num_layers = 0 (line 4): it must be at least 1`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::data::clean::CleanOptions;
use crate::data::source::{self, Documents, Format, OnBadLine};
use crate::error::{Error, Result};
use crate::metrics::TaskKind;
use crate::model::{FeedForward, T5Config};
use crate::train::optim::{AdafactorConfig, AdamWConfig, AdamWScaleConfig, OptimizerConfig};
use crate::train::schedule::ScheduleConfig;

/// The presets built into the binary: `(name, TOML text)`, the same files
/// as the crate's `configs/` folder.
pub const BUILTIN_PRESETS: &[(&str, &str)] = &[
    ("t5-tiny", include_str!("../configs/t5-tiny.toml")),
    ("t5-small", include_str!("../configs/t5-small.toml")),
    ("t5-base", include_str!("../configs/t5-base.toml")),
    ("t5-large", include_str!("../configs/t5-large.toml")),
    (
        "t5-small-v1_0",
        include_str!("../configs/t5-small-v1_0.toml"),
    ),
];

/// The demo experiments, built in so that an installed `t5-tui` offers
/// them anywhere (they read the built-in data, so they need no files).
pub const BUILTIN_EXPERIMENTS: &[(&str, &str)] = &[
    (
        "demo-pretrain",
        include_str!("../configs/demo-pretrain.toml"),
    ),
    (
        "demo-translate",
        include_str!("../configs/demo-translate.toml"),
    ),
];

/// The TOML text of a built-in demo experiment.
pub fn builtin_experiment(name: &str) -> Option<&'static str> {
    BUILTIN_EXPERIMENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The preset an experiment without a `[model]` section uses.
pub const DEFAULT_PRESET: &str = "t5-tiny";

/// How deep presets may name presets before it is taken for a loop.
const MAX_PRESET_DEPTH: usize = 8;

/// The TOML text of a built-in preset.
pub fn builtin_preset(name: &str) -> Option<&'static str> {
    BUILTIN_PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The names of the built-in presets, smallest first.
pub fn builtin_preset_names() -> Vec<&'static str> {
    BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect()
}

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

/// An experiment file as written: every section optional, the model
/// possibly a preset plus overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: ModelSection,
    pub tokenizer: TokenizerConfig,
    pub data: DataConfig,
    pub objective: ObjectiveConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
}

/// The `[model]` section as written: a preset and/or the fields of
/// Hugging Face's T5 `config.json`. A field given here overrides the
/// preset's; a field given nowhere takes `transformers`' default, except
/// `d_kv`, which is `d_model / num_heads` when not given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_model: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_kv: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_decoder_layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_attention_num_buckets: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_attention_max_distance: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_norm_epsilon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initializer_factor: Option<f64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_feed_forward"
    )]
    pub feed_forward_proj: Option<FeedForward>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder_start_token_id: Option<u32>,
}

impl ModelSection {
    /// The section that names `preset` and nothing else.
    pub fn preset(name: &str) -> Self {
        ModelSection {
            preset: Some(name.to_string()),
            ..ModelSection::default()
        }
    }

    /// Every field of `cfg`, as a section with no preset.
    pub fn from_t5(cfg: &T5Config) -> Self {
        ModelSection {
            preset: None,
            vocab_size: Some(cfg.vocab_size),
            d_model: Some(cfg.d_model),
            d_kv: Some(cfg.d_kv),
            d_ff: Some(cfg.d_ff),
            num_layers: Some(cfg.num_layers),
            num_decoder_layers: Some(cfg.decoder_layers()),
            num_heads: Some(cfg.num_heads),
            relative_attention_num_buckets: Some(cfg.relative_attention_num_buckets),
            relative_attention_max_distance: Some(cfg.relative_attention_max_distance),
            dropout_rate: Some(cfg.dropout_rate),
            layer_norm_epsilon: Some(cfg.layer_norm_epsilon),
            initializer_factor: Some(cfg.initializer_factor),
            feed_forward_proj: Some(cfg.feed_forward_proj),
            tie_word_embeddings: Some(cfg.tie_word_embeddings),
            pad_token_id: Some(cfg.pad_token_id),
            eos_token_id: Some(cfg.eos_token_id),
            decoder_start_token_id: Some(cfg.decoder_start_token_id),
        }
    }

    fn is_empty(&self) -> bool {
        *self == ModelSection::default()
    }

    /// The fields given (not the preset), as a TOML table.
    fn fields(&self) -> toml::Table {
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        table.remove("preset");
        table
    }
}

/// `transformers` takes `"gated-gelu"` and the older `"gated-gelu_new"`.
fn deserialize_feed_forward<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<FeedForward>, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "relu" => Ok(Some(FeedForward::Relu)),
        "gated-gelu" | "gated-gelu_new" => Ok(Some(FeedForward::GatedGelu)),
        other => Err(serde::de::Error::custom(format!(
            "unknown value `{other}`; valid values are \"relu\" (T5 v1.0) and \"gated-gelu\" (T5 v1.1)"
        ))),
    }
}

/// `[tokenizer]`: the SentencePiece-style tokenizer T5 uses, with its
/// sentinel tokens (`<extra_id_0>`, …) for span corruption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// An existing `tokenizer.json` (relative to the config file); when
    /// absent, a tokenizer is trained on the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Regular tokens (with the special `<pad>`, `</s>`, `<unk>` but not
    /// the sentinels); when absent, `[model] vocab_size - extra_ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Sentinel tokens `<extra_id_0>` … appended after the regular ones.
    pub extra_ids: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            path: None,
            vocab_size: None,
            extra_ids: 100,
        }
    }
}

impl TokenizerConfig {
    /// The number of regular tokens for a model with `model_vocab`
    /// embeddings: as given, else what the sentinels leave.
    pub fn regular_vocab_size(&self, model_vocab: usize) -> usize {
        self.vocab_size
            .unwrap_or_else(|| model_vocab.saturating_sub(self.extra_ids))
    }
}

/// `[data]`: where the text comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A data set built into the program, instead of `sources`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinData>,
    /// Files or folders of text, relative to the config file.
    pub sources: Vec<PathBuf>,
    /// The sources' format; when absent, guessed from each file's
    /// extension (`.jsonl`, `.tsv`, anything else plain text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Plain text: one document a line, or documents separated by blank
    /// lines (`"blank_line"`).
    pub documents: Documents,
    /// JSONL: the field holding a document's text (default `"text"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// JSONL: the fields holding a pair's input and target (default
    /// `"input"` and `"target"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_field: Option<String>,
    /// A line that is not UTF-8 or too long: `"skip"` it and count it, or
    /// `"fail"` naming the file and line.
    pub on_bad_line: OnBadLine,
    /// The share of documents held out for evaluation, in [0, 1).
    pub validation_fraction: f64,
    /// `[data.clean]`: the cleaning rules.
    pub clean: CleanOptions,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            builtin: None,
            sources: Vec::new(),
            format: None,
            documents: Documents::Line,
            text_field: None,
            input_field: None,
            target_field: None,
            on_bad_line: OnBadLine::Skip,
            validation_fraction: 0.01,
            clean: CleanOptions::default(),
        }
    }
}

impl DataConfig {
    /// The format to read `path` in: the configured one, else a guess from
    /// its extension.
    pub fn source(&self, path: &Path) -> source::Source {
        let mut source = source::Source::from_path(path);
        let guessed = match &source.format {
            Format::Jsonl { .. } => DataFormat::Jsonl,
            Format::Tsv => DataFormat::Tsv,
            Format::Text { .. } => DataFormat::Text,
        };
        source.format = match self.format.unwrap_or(guessed) {
            DataFormat::Text => Format::Text {
                documents: self.documents,
            },
            DataFormat::Jsonl => Format::Jsonl {
                text_field: self.text_field.clone(),
                input_field: self.input_field.clone(),
                target_field: self.target_field.clone(),
            },
            DataFormat::Tsv => Format::Tsv,
        };
        source
    }
}

/// The formats `[data] format` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    Text,
    Jsonl,
    Tsv,
}

/// The data sets built into the program (the Tanaka corpus of Japanese and
/// English sentence pairs, CC BY 2.0 FR), so that it runs with no download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinData {
    /// Every English and Japanese sentence as a document (pre-training).
    TanakaText,
    /// English to Japanese pairs (translation).
    TanakaEnJa,
    /// Japanese to English pairs (translation).
    TanakaJaEn,
}

impl BuiltinData {
    /// Whether it holds (input, target) pairs rather than documents.
    pub fn is_pairs(self) -> bool {
        !matches!(self, BuiltinData::TanakaText)
    }
}

/// What the model learns to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// T5's pre-training: drop spans of the input, predict them after
    /// sentinel tokens.
    SpanCorruption,
    /// Supervised pairs: an input text and its target text.
    TextToText,
}

/// `[objective]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    pub kind: ObjectiveKind,
    /// The share of input tokens span corruption drops, in (0, 1).
    pub noise_density: f64,
    /// The mean length of a dropped span, at least 1.
    pub mean_noise_span_length: f64,
    /// Encoder input length in tokens.
    pub input_length: usize,
    /// Decoder target length in tokens; when absent, what `input_length`
    /// and the noise need (span corruption) or `input_length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_length: Option<usize>,
    /// Text put before every input, e.g. `"summarize: "`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_prefix: Option<String>,
    /// Text-to-text: the kind of task, which decides the metrics of
    /// evaluation (`translation`, `summarization`, `question_answering`,
    /// `classification`); absent, exact match, BLEU and chrF.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskKind>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            kind: ObjectiveKind::SpanCorruption,
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
            input_length: 128,
            target_length: None,
            task_prefix: None,
            task: None,
        }
    }
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// The first GPU the build supports, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Metal(0) => f.write_str("metal"),
            DeviceChoice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "unknown device `{s}`; valid devices are \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"metal\" and \"metal:N\""
            )
        };
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (kind, index) {
            ("auto", None) => Ok(DeviceChoice::Auto),
            ("cpu", None) => Ok(DeviceChoice::Cpu),
            ("cuda", i) => Ok(DeviceChoice::Cuda(i.unwrap_or(0))),
            ("metal", i) => Ok(DeviceChoice::Metal(i.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Adam with decoupled weight decay.
    Adamw,
    /// nanoT5's AdamW that scales each update by the parameter's RMS.
    AdamwScale,
    /// Factored second moments, as T5 was trained.
    Adafactor,
}

/// How the learning rate moves after warm-up (a linear ramp from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Cosine decay to 0 at the last step.
    Cosine,
    /// `lr * sqrt(warmup / step)`, T5's pre-training schedule.
    InverseSqrt,
}

/// The number format of the weights and activations while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub seed: u64,
    pub device: DeviceChoice,
    /// Sequences a micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub grad_accum_steps: usize,
    /// Optimizer steps in the run.
    pub steps: usize,
    /// The peak learning rate, reached at the end of warm-up.
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    /// Adafactor only: ignore the schedule and use its own relative step
    /// size, `min(1e-2, 1/sqrt(step))`.
    pub relative_step: bool,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Decoupled weight decay (not on layer norms).
    pub weight_decay: f64,
    /// The z-loss coefficient (PaLM's `1e-4`); 0 turns it off.
    pub z_loss: f64,
    /// Steps in a row with a non-finite loss or gradient (each skipped)
    /// before the run pauses.
    pub max_bad_steps: usize,
    /// Start from pre-trained weights: a run id (its latest checkpoint)
    /// or a Hugging Face T5 folder (`config.json`, `model.safetensors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    pub dtype: Dtype,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 42,
            device: DeviceChoice::Auto,
            batch_size: 16,
            grad_accum_steps: 1,
            steps: 10_000,
            learning_rate: 1e-3,
            optimizer: Optimizer::Adamw,
            relative_step: false,
            schedule: Schedule::Cosine,
            warmup_steps: 500,
            grad_clip: 1.0,
            weight_decay: 0.0,
            z_loss: 0.0,
            max_bad_steps: 3,
            init_from: None,
            dtype: Dtype::F32,
        }
    }
}

impl TrainConfig {
    /// The optimizer with this section's settings, the rest at their
    /// defaults.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        let weight_decay = self.weight_decay;
        match self.optimizer {
            Optimizer::Adamw => OptimizerConfig::Adamw(AdamWConfig {
                weight_decay,
                ..AdamWConfig::default()
            }),
            Optimizer::AdamwScale => OptimizerConfig::AdamwScale(AdamWScaleConfig {
                weight_decay,
                ..AdamWScaleConfig::default()
            }),
            Optimizer::Adafactor => OptimizerConfig::Adafactor(AdafactorConfig {
                weight_decay,
                relative_step: self.relative_step,
                ..AdafactorConfig::default()
            }),
        }
    }

    /// The schedule's shape with this section's warm-up.
    pub fn schedule_config(&self) -> ScheduleConfig {
        let name = match self.schedule {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
            Schedule::InverseSqrt => "inverse_sqrt",
        };
        let mut shape = ScheduleConfig::from_kind(name).unwrap_or_default();
        shape.set_warmup_steps(self.warmup_steps as u64);
        shape
    }
}

/// `[eval]`: held-out loss and sample generations while training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps; 0 turns evaluation off.
    pub every_steps: usize,
    /// Validation batches an evaluation reads.
    pub batches: usize,
    /// Generate samples every this many steps; 0 turns samples off.
    pub samples_every_steps: usize,
    /// Validation inputs generated from each time.
    pub num_samples: usize,
    /// The longest sample generated, in tokens.
    pub max_sample_tokens: usize,
    /// Text-to-text: validation inputs generated from at each evaluation
    /// to score the task's metrics; 0 turns them off.
    pub generate_examples: usize,
    /// Stem words (Porter) before ROUGE, as `rouge-score`'s `use_stemmer`.
    pub rouge_stemmer: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every_steps: 500,
            batches: 20,
            samples_every_steps: 500,
            num_samples: 4,
            max_sample_tokens: 64,
            generate_examples: 64,
            rouge_stemmer: false,
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint every this many steps (and at the end); 0 only at the end.
    pub every_steps: usize,
    /// How many checkpoints to keep, newest first.
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_steps: 1000,
            keep_last: 3,
        }
    }
}

// ---------------------------------------------------------------------------
// The resolved experiment
// ---------------------------------------------------------------------------

/// An experiment ready to run: the model a checked [`T5Config`], every
/// section checked, paths absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: T5Config,
    pub tokenizer: TokenizerConfig,
    pub data: DataConfig,
    pub objective: ObjectiveConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
}

/// One field with a bad value: where, what it is, and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `"model"`, `"train"`, …
    pub section: &'static str,
    pub key: String,
    /// The value as TOML writes it.
    pub value: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} = {}: {}",
            self.section, self.key, self.value, self.message
        )
    }
}

impl std::error::Error for FieldError {}

fn field_error(
    section: &'static str,
    key: &str,
    value: impl fmt::Display,
    message: impl Into<String>,
) -> FieldError {
    FieldError {
        section,
        key: key.to_string(),
        value: value.to_string(),
        message: message.into(),
    }
}

impl Experiment {
    /// Loads and resolves an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        load(path)
    }

    /// Parses and resolves experiment TOML held in memory (a run's saved
    /// config, an editor's buffer) with `section.key=value` overrides; see
    /// [`parse_str_with_overrides`].
    pub fn from_toml_str<S: AsRef<str>>(text: &str, path: &Path, overrides: &[S]) -> Result<Self> {
        parse_str_with_overrides(text, path, overrides)
    }

    /// A preset as a whole experiment: its model and description, every
    /// other section at
    /// its default, and `overrides` (see [`apply_override`]) applied.
    /// `search_dir` is where to look for a `configs/` folder before the
    /// built-in presets (the current folder when `None`).
    pub fn from_preset<S: AsRef<str>>(
        name: &str,
        search_dir: Option<&Path>,
        overrides: &[S],
    ) -> Result<Self> {
        let text = format!(
            "[model]\npreset = {}\n",
            toml::Value::String(name.to_string())
        );
        let mut source = Source::parse(&text, Path::new(name), overrides)?;
        source.dir = search_dir.unwrap_or(Path::new(".")).to_path_buf();
        source.lines = false;
        let file = source.deserialize()?;
        let mut exp = resolve(&file, &source, &mut Vec::new())?;
        if file.name.is_none() {
            exp.name = name.to_string();
        }
        if let Ok(preset) = find_preset(name, Path::new(name), &source.dir) {
            if let Ok(preset_file) = ExperimentFile::from_toml_str(&preset.text, &preset.path) {
                exp.description = preset_file.description;
            }
        }
        Ok(exp)
    }

    /// Every check [`load`] makes, on an experiment built or edited in
    /// code: the model shape and each section's ranges.
    pub fn validate(&self) -> std::result::Result<(), FieldError> {
        self.model
            .validate()
            .and_then(|()| check_model_limits(&self.model))
            .map_err(|m| model_field_error(&self.model, &m))?;
        validate_sections(
            &self.tokenizer,
            &self.data,
            &self.objective,
            &self.train,
            &self.eval,
            &self.checkpoint,
            self.model.vocab_size,
        )
    }

    /// The experiment as a TOML file that loads back to the same
    /// experiment (with every model field written out, no preset).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Other(format!("writing the config as TOML: {e}")))
    }

    /// The experiment as a file: every model field given, no preset.
    pub fn to_file(&self) -> ExperimentFile {
        ExperimentFile {
            name: Some(self.name.clone()),
            description: self.description.clone(),
            model: ModelSection::from_t5(&self.model),
            tokenizer: self.tokenizer.clone(),
            data: self.data.clone(),
            objective: self.objective.clone(),
            train: self.train.clone(),
            eval: self.eval.clone(),
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// Reads, parses and resolves an experiment file.
pub fn load(path: &Path) -> Result<Experiment> {
    load_with_overrides::<&str>(path, &[])
}

/// As [`load`], with `section.key=value` overrides (see [`apply_override`])
/// applied to the file before it is checked.
pub fn load_with_overrides<S: AsRef<str>>(path: &Path, overrides: &[S]) -> Result<Experiment> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_str_with_overrides(&text, path, overrides)
}

/// Parses and resolves experiment TOML held in memory; `path` names it in
/// messages and is where presets and relative paths are looked up from.
pub fn parse_str(text: &str, path: &Path) -> Result<Experiment> {
    parse_str_with_overrides::<&str>(text, path, &[])
}

/// As [`parse_str`], with overrides.
pub fn parse_str_with_overrides<S: AsRef<str>>(
    text: &str,
    path: &Path,
    overrides: &[S],
) -> Result<Experiment> {
    let source = Source::parse(text, path, overrides)?;
    let file = source.deserialize()?;
    resolve(&file, &source, &mut Vec::new())
}

impl ExperimentFile {
    /// Parses experiment TOML without resolving it.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        Source::parse::<&str>(text, path, &[])?.deserialize()
    }

    /// Reads an experiment file without resolving it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Resolves the file as if it were at `path` (for messages, presets
    /// and relative paths); messages carry no line numbers.
    pub fn resolve(&self, path: &Path) -> Result<Experiment> {
        let source = Source::parse::<&str>("", path, &[])?;
        resolve(self, &source, &mut Vec::new())
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Other(format!("writing the config as TOML: {e}")))
    }
}

// ---------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------

/// Applies one `section.key=value` override (as `--set` takes it) to a
/// parsed TOML document. The value is read as TOML (`3e-4`, `true`,
/// `"text"`, `[1, 2]`), else taken as a plain string (`cuda:0`). Tables
/// on the way are created when missing.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let usage = || {
        Error::Invalid(format!(
            "--set `{spec}`: expected SECTION.KEY=VALUE, e.g. train.learning_rate=3e-4"
        ))
    };
    let (key, raw) = spec.split_once('=').ok_or_else(usage)?;
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(usage());
    }
    let value = parse_override_value(raw.trim());
    let Some((last, parents)) = parts.split_last() else {
        return Err(usage());
    };
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(Error::Invalid(format!(
                    "--set `{spec}`: `{}` is a {}, not a section",
                    parts[..=i].join("."),
                    other.type_str()
                )))
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) if t.len() == 1 => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        _ => toml::Value::String(raw.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Parsing, with positions for messages
// ---------------------------------------------------------------------------

/// A config's text, parsed with positions, and what it needs to say where
/// an error is.
struct Source<'a> {
    path: PathBuf,
    text: &'a str,
    /// The original document, for the line a key is on.
    doc: toml::Spanned<DeTable<'a>>,
    /// The text deserialized: the original, or it with overrides applied.
    effective: Option<String>,
    /// Keys set by overrides, as `section.key`.
    overridden: Vec<String>,
    /// Where presets and relative paths are looked up from.
    dir: PathBuf,
    /// Whether `text` is a file the user wrote (so line numbers help).
    lines: bool,
}

impl<'a> Source<'a> {
    fn parse<S: AsRef<str>>(text: &'a str, path: &Path, overrides: &[S]) -> Result<Self> {
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!(" at line {line}, column {col}")
                })
                .unwrap_or_default();
            config_error(
                path,
                format!("not valid TOML{at}: {}", one_line(e.message())),
            )
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut source = Source {
            path: path.to_path_buf(),
            text,
            doc,
            effective: None,
            overridden: Vec::new(),
            dir,
            lines: true,
        };
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| {
                config_error(path, format!("not valid TOML: {}", one_line(e.message())))
            })?;
            for o in overrides {
                let o = o.as_ref();
                apply_override(&mut table, o).map_err(|e| config_error(path, e.to_string()))?;
                if let Some((key, _)) = o.split_once('=') {
                    let key: Vec<&str> = key.split('.').map(str::trim).collect();
                    source.overridden.push(key.join("."));
                }
            }
            let effective = toml::to_string(&table)
                .map_err(|e| config_error(path, format!("applying --set: {e}")))?;
            source.effective = Some(effective);
        }
        Ok(source)
    }

    fn deserialize(&self) -> Result<ExperimentFile> {
        let text = self.effective.as_deref().unwrap_or(self.text);
        toml::from_str::<ExperimentFile>(text).map_err(|e| self.de_error(text, &e))
    }

    /// Turns a serde error into one sentence naming the key.
    fn de_error(&self, text: &str, e: &toml::de::Error) -> Error {
        let message = friendly(e.message());
        let key = match (e.span(), DeTable::parse(text)) {
            (Some(span), Ok(doc)) => key_path_at(doc.get_ref(), span.start).unwrap_or_default(),
            _ => Vec::new(),
        };
        if key.is_empty() {
            let at = match (e.span(), &self.effective) {
                (Some(span), None) if self.lines => {
                    format!(" (line {})", line_col(text, span.start).0)
                }
                _ => String::new(),
            };
            return config_error(&self.path, format!("{}{at}", message.trim_start()));
        }
        let refs: Vec<&str> = key.iter().map(String::as_str).collect();
        let mut message = message;
        let location = match refs.as_slice() {
            [section] if self.is_table(&refs) => {
                message = message.replacen("unknown key", "unknown section", 1);
                format!("[{section}]")
            }
            [key] => (*key).to_string(),
            [section, rest @ ..] => format!("[{section}] {}", rest.join(".")),
            [] => String::new(),
        };
        config_error(
            &self.path,
            format!("{location}{}: {message}", self.note(&refs)),
        )
    }

    fn is_table(&self, key: &[&str]) -> bool {
        let text = self.effective.as_deref().unwrap_or(self.text);
        DeTable::parse(text)
            .ok()
            .and_then(|doc| {
                find_key(doc.get_ref(), key).map(|(_, v)| matches!(v, DeValue::Table(_)))
            })
            .unwrap_or(false)
    }

    /// ` (line N)`, ` (set by --set)` or nothing, for a key path.
    fn note(&self, key: &[&str]) -> String {
        if self.overridden.iter().any(|o| *o == key.join(".")) {
            return " (set by --set)".to_string();
        }
        match self.line_of(key) {
            Some(line) if self.lines => format!(" (line {line})"),
            _ => String::new(),
        }
    }

    fn line_of(&self, key: &[&str]) -> Option<usize> {
        let (start, _) = find_key(self.doc.get_ref(), key)?;
        Some(line_col(self.text, start).0)
    }
}

/// The span start of `key` in `table`, and its value.
fn find_key<'t, 'i>(table: &'t DeTable<'i>, key: &[&str]) -> Option<(usize, &'t DeValue<'i>)> {
    let (first, rest) = key.split_first()?;
    let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *first)?;
    if rest.is_empty() {
        return Some((k.span().start, v.get_ref()));
    }
    match v.get_ref() {
        DeValue::Table(t) => find_key(t, rest),
        _ => None,
    }
}

/// The key path of the key or value at byte `pos`.
fn key_path_at(table: &DeTable<'_>, pos: usize) -> Option<Vec<String>> {
    for (k, v) in table.iter() {
        let name = k.get_ref().to_string();
        if k.span().contains(&pos) {
            return Some(vec![name]);
        }
        if let DeValue::Table(t) = v.get_ref() {
            if let Some(mut inner) = key_path_at(t, pos) {
                inner.insert(0, name);
                return Some(inner);
            }
        }
        let span = v.span();
        if span.contains(&pos) || (span.is_empty() && span.start == pos) {
            return Some(vec![name]);
        }
    }
    None
}

/// 1-based line and column of byte `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// serde's wording, in the config's terms.
fn friendly(message: &str) -> String {
    let mut m = one_line(message);
    if m.starts_with("unknown field") {
        m = m
            .replacen("unknown field", "unknown key", 1)
            .replacen(", expected one of ", "; valid keys are ", 1)
            .replacen(", expected ", "; valid keys are ", 1)
            .replacen("there are no fields", "this takes no keys", 1);
    } else if m.starts_with("unknown variant") {
        m = m
            .replacen("unknown variant", "unknown value", 1)
            .replacen(", expected one of ", "; valid values are ", 1)
            .replacen(", expected ", "; valid values are ", 1);
    }
    for (rust, words) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected f64", "expected a number"),
    ] {
        m = m.replace(rust, words);
    }
    m
}

fn config_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Resolving
// ---------------------------------------------------------------------------

/// Where a model field's value came from.
#[derive(Debug, Clone)]
enum Origin {
    /// This file (line, or set by --set).
    File(String),
    /// A preset: its name, file and line note.
    Preset { name: String, at: String },
    /// `d_kv = d_model / num_heads`.
    Derived,
}

impl Origin {
    fn note(&self) -> String {
        match self {
            Origin::File(note) => note.clone(),
            Origin::Preset { name, at } => format!(" (from preset `{name}`, {at})"),
            Origin::Derived => " (d_model / num_heads)".to_string(),
        }
    }
}

/// The model fields merged so far, with where each came from.
#[derive(Default)]
struct MergedModel {
    fields: toml::Table,
    origins: BTreeMap<String, Origin>,
}

/// A preset's text and where it was found.
struct PresetText {
    path: PathBuf,
    text: String,
    builtin: bool,
}

/// Finds a preset by name: `configs/NAME.toml` beside `config_path` (or
/// beside it when it is in a `configs/` folder), then the built-in ones.
fn find_preset(
    name: &str,
    config_path: &Path,
    dir: &Path,
) -> std::result::Result<PresetText, String> {
    let name = name.strip_suffix(".toml").unwrap_or(name);
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(format!(
            "a preset is the name of a file in configs/ without `.toml` (letters, digits, `-`, `_`, `.`); built-in presets are {}",
            builtin_preset_names().join(", ")
        ));
    }
    let file_name = format!("{name}.toml");
    let mut candidates = vec![dir.join("configs").join(&file_name)];
    if dir.file_name().is_some_and(|n| n == "configs") {
        candidates.push(dir.join(&file_name));
    }
    let this = std::fs::canonicalize(config_path).ok();
    for candidate in candidates {
        if !candidate.is_file() {
            continue;
        }
        if this.is_some() && std::fs::canonicalize(&candidate).ok() == this {
            continue;
        }
        let text = std::fs::read_to_string(&candidate)
            .map_err(|e| format!("reading {}: {e}", candidate.display()))?;
        return Ok(PresetText {
            path: candidate,
            text,
            builtin: false,
        });
    }
    if let Some(text) = builtin_preset(name) {
        return Ok(PresetText {
            path: PathBuf::from(format!("configs/{file_name}")),
            text: text.to_string(),
            builtin: true,
        });
    }
    Err(format!(
        "no such preset; valid presets are {} (built in) or a file {file_name} in {}",
        builtin_preset_names().join(", "),
        dir.join("configs").display()
    ))
}

/// Merges the preset chain of a `[model]` section, innermost first.
fn merge_model(
    section: &ModelSection,
    source: &Source<'_>,
    chain: &mut Vec<PathBuf>,
) -> Result<MergedModel> {
    let mut merged = MergedModel::default();
    if let Some(name) = &section.preset {
        let at = |source: &Source<'_>| {
            format!(
                "[model] preset = {}{}",
                toml::Value::String(name.clone()),
                source.note(&["model", "preset"])
            )
        };
        let preset = find_preset(name, &source.path, &source.dir)
            .map_err(|m| config_error(&source.path, format!("{}: {m}", at(source))))?;
        let key = std::fs::canonicalize(&preset.path).unwrap_or_else(|_| preset.path.clone());
        if chain.contains(&key) || chain.len() >= MAX_PRESET_DEPTH {
            return Err(config_error(
                &source.path,
                format!(
                    "{}: presets name each other in a loop ({})",
                    at(source),
                    chain
                        .iter()
                        .chain(std::iter::once(&key))
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            ));
        }
        chain.push(key);
        let inner = (|| {
            let preset_source = Source::parse::<&str>(&preset.text, &preset.path, &[])?;
            let file = preset_source.deserialize()?;
            let model = if file.model.is_empty() {
                ModelSection::preset(DEFAULT_PRESET)
            } else {
                file.model
            };
            let label = if preset.builtin {
                format!("{} (built in)", preset.path.display())
            } else {
                preset.path.display().to_string()
            };
            let mut inner = merge_model(&model, &preset_source, chain)?;
            for origin in inner.origins.values_mut() {
                if let Origin::File(note) = origin {
                    *origin = Origin::Preset {
                        name: name.clone(),
                        at: format!("{label}{note}"),
                    };
                }
            }
            Ok(inner)
        })()
        .map_err(|e: Error| config_error(&source.path, format!("{}: {}", at(source), e)))?;
        chain.pop();
        merged = inner;
    }
    for (key, value) in section.fields() {
        let note = source.note(&["model", &key]);
        merged.origins.insert(key.clone(), Origin::File(note));
        merged.fields.insert(key, value);
    }
    Ok(merged)
}

/// The fields a model needs from the file or its preset.
const REQUIRED_MODEL_FIELDS: &[&str] =
    &["vocab_size", "d_model", "d_ff", "num_layers", "num_heads"];

fn resolve_model(
    section: &ModelSection,
    source: &Source<'_>,
    chain: &mut Vec<PathBuf>,
) -> Result<T5Config> {
    let section = if section.is_empty() {
        ModelSection::preset(DEFAULT_PRESET)
    } else {
        section.clone()
    };
    let mut merged = merge_model(&section, source, chain)?;
    let err_at = |merged: &MergedModel, key: &str, value: &str, message: &str| {
        let note = merged
            .origins
            .get(key)
            .map(Origin::note)
            .unwrap_or_default();
        config_error(
            &source.path,
            format!("[model] {key} = {value}{note}: {message}"),
        )
    };
    for key in REQUIRED_MODEL_FIELDS {
        if !merged.fields.contains_key(*key) {
            return Err(config_error(
                &source.path,
                format!(
                    "[model] has no `{key}`: give it, or name a preset (e.g. preset = \"{DEFAULT_PRESET}\"; built-in presets are {})",
                    builtin_preset_names().join(", ")
                ),
            ));
        }
    }
    if !merged.fields.contains_key("d_kv") {
        let get = |k: &str| merged.fields.get(k).and_then(toml::Value::as_integer);
        if let (Some(d_model), Some(heads)) = (get("d_model"), get("num_heads")) {
            if heads == 0 {
                return Err(err_at(&merged, "num_heads", "0", "it must be at least 1"));
            }
            if d_model % heads != 0 {
                let lower = d_model / heads * heads;
                let suggestion = if lower > 0 {
                    format!("{lower} or {}", lower + heads)
                } else {
                    format!("{heads}")
                };
                return Err(err_at(
                    &merged,
                    "d_model",
                    &d_model.to_string(),
                    &format!(
                        "it is not divisible by num_heads = {heads} and no d_kv is given; give d_kv, or make d_model a multiple of num_heads (e.g. {suggestion})"
                    ),
                ));
            }
            merged
                .fields
                .insert("d_kv".into(), toml::Value::Integer(d_model / heads));
            merged.origins.insert("d_kv".into(), Origin::Derived);
        }
    }
    let mut cfg: T5Config = toml::Value::Table(merged.fields.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            config_error(&source.path, format!("[model]: {}", friendly(e.message())))
        })?;
    cfg.num_decoder_layers = Some(cfg.decoder_layers());
    if let Err(message) = cfg.validate().and_then(|()| check_model_limits(&cfg)) {
        let fe = model_field_error(&cfg, &message);
        return Err(err_at(&merged, &fe.key, &fe.value, &fe.message));
    }
    Ok(cfg)
}

/// Upper bounds on the model's sizes, far above any model this program
/// can train, under which its parameter count (a product of them) cannot
/// overflow; found by fuzzing, where `vocab_size = 1e17` passed and
/// `config check` then overflowed counting parameters.
const MODEL_LIMITS: [(&str, usize); 9] = [
    ("vocab_size", 1 << 24),
    ("d_model", 1 << 20),
    ("d_kv", 1 << 16),
    ("d_ff", 1 << 20),
    ("num_heads", 1 << 10),
    ("num_layers", 1 << 12),
    ("num_decoder_layers", 1 << 12),
    ("relative_attention_num_buckets", 1 << 16),
    ("relative_attention_max_distance", 1 << 24),
];

/// Each size within [`MODEL_LIMITS`], as a message in the shape
/// [`model_field_error`] reads.
fn check_model_limits(cfg: &T5Config) -> std::result::Result<(), String> {
    let values = [
        cfg.vocab_size,
        cfg.d_model,
        cfg.d_kv,
        cfg.d_ff,
        cfg.num_heads,
        cfg.num_layers,
        cfg.decoder_layers(),
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
    ];
    for ((key, max), value) in MODEL_LIMITS.iter().zip(values) {
        if value > *max {
            return Err(format!("`{key}` is {value}: it must be at most {max}"));
        }
    }
    Ok(())
}

/// Reads `` `field` is VALUE: what is valid `` (the shape of
/// [`T5Config::validate`]'s messages) as a field error.
fn model_field_error(cfg: &T5Config, message: &str) -> FieldError {
    let mut parts = message.splitn(3, '`');
    let (_, key, rest) = (parts.next(), parts.next(), parts.next());
    match (key, rest) {
        (Some(key), Some(rest)) => {
            let value = serde_json::to_value(cfg)
                .ok()
                .and_then(|v| v.get(key).map(|v| v.to_string()))
                .unwrap_or_default();
            let what = rest
                .split_once(": ")
                .map_or(rest.trim(), |(_, what)| what.trim());
            field_error("model", key, value, what)
        }
        _ => field_error("model", "", "", message),
    }
}

/// A float as TOML writes it (`1.0`, not `1`).
fn num(x: f64) -> String {
    format!("{x:?}")
}

fn check(ok: bool, err: impl FnOnce() -> FieldError) -> std::result::Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(err())
    }
}

/// The range checks of every section but `[model]`.
fn validate_sections(
    tokenizer: &TokenizerConfig,
    data: &DataConfig,
    objective: &ObjectiveConfig,
    train: &TrainConfig,
    eval: &EvalConfig,
    checkpoint: &CheckpointConfig,
    model_vocab: usize,
) -> std::result::Result<(), FieldError> {
    let t = tokenizer;
    check(t.extra_ids < model_vocab, || {
        field_error(
            "tokenizer",
            "extra_ids",
            t.extra_ids,
            format!("it must be below [model] vocab_size ({model_vocab})"),
        )
    })?;
    if let Some(v) = t.vocab_size {
        check(v >= 3, || {
            field_error(
                "tokenizer",
                "vocab_size",
                v,
                "it must be at least 3 (<pad>, </s>, <unk>)",
            )
        })?;
        check(v + t.extra_ids <= model_vocab, || {
            field_error(
                "tokenizer",
                "vocab_size",
                v,
                format!(
                    "with extra_ids = {} it needs {} embeddings, but [model] vocab_size is {model_vocab}; it must be at most {}",
                    t.extra_ids,
                    v + t.extra_ids,
                    model_vocab - t.extra_ids
                ),
            )
        })?;
    }
    let vf = data.validation_fraction;
    check((0.0..1.0).contains(&vf), || {
        field_error(
            "data",
            "validation_fraction",
            num(vf),
            "it must be in [0, 1)",
        )
    })?;
    if let Some(b) = data.builtin {
        check(data.sources.is_empty(), || {
            field_error(
                "data",
                "builtin",
                toml_string(&b),
                "give either builtin data or sources, not both",
            )
        })?;
        check(
            b.is_pairs() || objective.kind != ObjectiveKind::TextToText,
            || {
                field_error(
                    "data",
                    "builtin",
                    toml_string(&b),
                    "the text_to_text objective needs pairs: use \"tanaka-en-ja\" or \"tanaka-ja-en\", or the span_corruption objective",
                )
            },
        )?;
    }
    let c = &data.clean;
    check(c.min_chars <= c.max_chars, || {
        field_error(
            "data",
            "clean.min_chars",
            c.min_chars,
            format!("it must be at most clean.max_chars ({})", c.max_chars),
        )
    })?;
    let o = objective;
    check(o.noise_density > 0.0 && o.noise_density < 1.0, || {
        field_error(
            "objective",
            "noise_density",
            num(o.noise_density),
            "it must be in (0, 1)",
        )
    })?;
    check(
        o.mean_noise_span_length >= 1.0 && o.mean_noise_span_length.is_finite(),
        || {
            field_error(
                "objective",
                "mean_noise_span_length",
                num(o.mean_noise_span_length),
                "it must be at least 1",
            )
        },
    )?;
    check(o.input_length >= 2, || {
        field_error(
            "objective",
            "input_length",
            o.input_length,
            "it must be at least 2",
        )
    })?;
    if let Some(tl) = o.target_length {
        check(tl >= 1, || {
            field_error("objective", "target_length", tl, "it must be at least 1")
        })?;
    }
    let tr = train;
    check(tr.batch_size >= 1, || {
        field_error(
            "train",
            "batch_size",
            tr.batch_size,
            "it must be at least 1",
        )
    })?;
    check(tr.grad_accum_steps >= 1, || {
        field_error(
            "train",
            "grad_accum_steps",
            tr.grad_accum_steps,
            "it must be at least 1",
        )
    })?;
    check(tr.z_loss >= 0.0 && tr.z_loss.is_finite(), || {
        field_error("train", "z_loss", num(tr.z_loss), "it must be 0 or more")
    })?;
    check(tr.max_bad_steps >= 1, || {
        field_error(
            "train",
            "max_bad_steps",
            tr.max_bad_steps,
            "it must be at least 1",
        )
    })?;
    check(
        !tr.relative_step || tr.optimizer == Optimizer::Adafactor,
        || {
            field_error(
                "train",
                "relative_step",
                "true",
                "only Adafactor has a relative step; set optimizer = \"adafactor\" or remove it",
            )
        },
    )?;
    check(tr.steps >= 1, || {
        field_error("train", "steps", tr.steps, "it must be at least 1")
    })?;
    check(
        tr.learning_rate > 0.0 && tr.learning_rate.is_finite(),
        || {
            field_error(
                "train",
                "learning_rate",
                num(tr.learning_rate),
                "it must be a number greater than 0",
            )
        },
    )?;
    check(tr.grad_clip >= 0.0 && tr.grad_clip.is_finite(), || {
        field_error(
            "train",
            "grad_clip",
            num(tr.grad_clip),
            "it must be 0 (no clipping) or more",
        )
    })?;
    check(
        tr.weight_decay >= 0.0 && tr.weight_decay.is_finite(),
        || {
            field_error(
                "train",
                "weight_decay",
                num(tr.weight_decay),
                "it must be 0 or more",
            )
        },
    )?;
    check(eval.batches >= 1, || {
        field_error("eval", "batches", eval.batches, "it must be at least 1")
    })?;
    check(eval.max_sample_tokens >= 1, || {
        field_error(
            "eval",
            "max_sample_tokens",
            eval.max_sample_tokens,
            "it must be at least 1",
        )
    })?;
    check(checkpoint.keep_last >= 1, || {
        field_error(
            "checkpoint",
            "keep_last",
            checkpoint.keep_last,
            "it must be at least 1",
        )
    })?;
    Ok(())
}

/// A value as TOML writes it, e.g. `"tanaka-text"`.
fn toml_string<T: Serialize>(v: &T) -> String {
    toml::Value::try_from(v)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// `path` made absolute against the config's folder.
fn absolute_in(dir: &Path, path: &Path) -> PathBuf {
    let joined = dir.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
}

fn resolve(
    file: &ExperimentFile,
    source: &Source<'_>,
    chain: &mut Vec<PathBuf>,
) -> Result<Experiment> {
    let model = resolve_model(&file.model, source, chain)?;
    validate_sections(
        &file.tokenizer,
        &file.data,
        &file.objective,
        &file.train,
        &file.eval,
        &file.checkpoint,
        model.vocab_size,
    )
    .map_err(|fe| {
        let note = source.note(&[fe.section, &fe.key]);
        config_error(
            &source.path,
            format!(
                "[{}] {} = {}{note}: {}",
                fe.section, fe.key, fe.value, fe.message
            ),
        )
    })?;
    let dir = source.dir.clone();
    let mut tokenizer = file.tokenizer.clone();
    tokenizer.path = tokenizer.path.map(|p| absolute_in(&dir, &p));
    let mut data = file.data.clone();
    data.sources = data.sources.iter().map(|p| absolute_in(&dir, p)).collect();
    let mut train = file.train.clone();
    // `init_from` is a run id or a folder; a folder is made absolute so
    // that the run's saved config still finds it.
    if let Some(from) = &train.init_from {
        let folder = absolute_in(&dir, Path::new(from));
        if folder.join("config.json").is_file() {
            train.init_from = Some(folder.to_string_lossy().into_owned());
        }
    }
    let name = file.name.clone().unwrap_or_else(|| {
        source
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".to_string())
    });
    Ok(Experiment {
        name,
        description: file.description.clone(),
        model,
        tokenizer,
        data,
        objective: file.objective.clone(),
        train,
        eval: file.eval.clone(),
        checkpoint: file.checkpoint.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Experiment> {
        parse_str(text, Path::new("x.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_t5_tiny_with_defaults() {
        let exp = parse("").unwrap();
        assert_eq!(exp.name, "x");
        assert_eq!(exp.model.d_model, 256);
        assert_eq!(exp.train, TrainConfig::default());
        assert_eq!(exp.objective.noise_density, 0.15);
    }

    #[test]
    fn preset_with_overrides() {
        let exp =
            parse("[model]\npreset = \"t5-small\"\nnum_layers = 2\ndropout_rate = 0.0\n").unwrap();
        assert_eq!(exp.model.num_layers, 2);
        assert_eq!(exp.model.decoder_layers(), 8);
        assert_eq!(exp.model.dropout_rate, 0.0);
        assert_eq!(exp.model.d_model, 512);
    }

    #[test]
    fn d_kv_is_derived_and_checked() {
        let base = "[model]\nvocab_size = 1000\nd_ff = 64\nnum_layers = 1\n";
        let exp = parse(&format!("{base}d_model = 64\nnum_heads = 4\n")).unwrap();
        assert_eq!(exp.model.d_kv, 16);
        let e = err(&format!("{base}d_model = 66\nnum_heads = 4\n"));
        assert!(e.contains("[model] d_model = 66 (line 5)"), "{e}");
        assert!(e.contains("64 or 68"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let e = err("[model]\npreset = \"t5-tiny\"\nnum_layers = 0\n");
        assert_eq!(
            e,
            "x.toml: [model] num_layers = 0 (line 3): it must be at least 1"
        );
        let e = err("[model]\nnum_layerz = 3\n");
        assert!(
            e.starts_with("x.toml: [model] num_layerz (line 2): unknown key"),
            "{e}"
        );
        let e = err("[trainer]\nsteps = 3\n");
        assert!(
            e.starts_with("x.toml: [trainer] (line 1): unknown section `trainer`"),
            "{e}"
        );
        let e = err("[train]\nsteps = \"many\"\n");
        assert!(
            e.starts_with("x.toml: [train] steps (line 2): invalid type"),
            "{e}"
        );
        let e = err("[model]\nfeed_forward_proj = \"gelu\"\n");
        assert!(e.contains("feed_forward_proj"), "{e}");
        assert!(e.contains("gated-gelu"), "{e}");
        let e = err("[model\n");
        assert!(e.starts_with("x.toml: not valid TOML at line 1"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn preset_errors_name_the_preset() {
        let e = err("[model]\npreset = \"t5-huge\"\n");
        assert!(
            e.starts_with("x.toml: [model] preset = \"t5-huge\" (line 2): no such preset"),
            "{e}"
        );
        assert!(e.contains("t5-tiny"), "{e}");
    }

    #[test]
    fn values_from_a_preset_say_so() {
        let e = err("[model]\npreset = \"t5-tiny\"\npad_token_id = 9000\n");
        assert!(e.contains("pad_token_id = 9000 (line 3)"), "{e}");
        let e = err("[model]\npreset = \"t5-tiny\"\nvocab_size = 1\n");
        assert!(e.contains("(from preset `t5-tiny`"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_named() {
        let exp = parse_str_with_overrides(
            "[model]\npreset = \"t5-tiny\"\n[train]\nsteps = 5\n",
            Path::new("x.toml"),
            &[
                "train.learning_rate=3e-4",
                "train.device=cuda:1",
                "model.num_layers=2",
            ],
        )
        .unwrap();
        assert_eq!(exp.train.learning_rate, 3e-4);
        assert_eq!(exp.train.device, DeviceChoice::Cuda(1));
        assert_eq!(exp.train.steps, 5);
        assert_eq!(exp.model.num_layers, 2);
        assert_eq!(exp.model.d_model, 256);
        let e = parse_str_with_overrides("", Path::new("x.toml"), &["train.steps=0"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.toml: [train] steps = 0 (set by --set): it must be at least 1"
        );
        let e = parse_str_with_overrides("", Path::new("x.toml"), &["train.stepz=1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[train] stepz (set by --set): unknown key"),
            "{e}"
        );
    }

    #[test]
    fn apply_override_parses_values() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "a.b = 3").unwrap();
        apply_override(&mut t, "a.c=true").unwrap();
        apply_override(&mut t, "a.d=hello world").unwrap();
        apply_override(&mut t, "e=\"quoted\"").unwrap();
        assert_eq!(t["a"]["b"].as_integer(), Some(3));
        assert_eq!(t["a"]["c"].as_bool(), Some(true));
        assert_eq!(t["a"]["d"].as_str(), Some("hello world"));
        assert_eq!(t["e"].as_str(), Some("quoted"));
        assert!(apply_override(&mut t, "no-equals").is_err());
        assert!(apply_override(&mut t, "a..b=1").is_err());
        assert!(apply_override(&mut t, "e.x=1").is_err());
    }

    #[test]
    fn resolved_experiment_round_trips() {
        let exp = parse(
            "name = \"n\"\n[model]\npreset = \"t5-small-v1_0\"\n[data]\nsources = [\"a.txt\"]\n",
        )
        .unwrap();
        let text = exp.to_toml().unwrap();
        let again = parse(&text).unwrap();
        assert_eq!(exp, again);
        assert!(exp.data.sources[0].is_absolute());
        let file_text = exp.to_file().to_toml().unwrap();
        assert_eq!(parse(&file_text).unwrap(), exp);
    }

    #[test]
    fn device_names() {
        for s in ["auto", "cpu", "cuda", "cuda:2", "metal", "metal:1"] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap().to_string(), s);
        }
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
