//! The shape of a T5 model, field for field Hugging Face's `T5Config`, so that
//! `config.json` goes both ways between this crate and `transformers`.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

/// The feed-forward block of a T5 layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedForward {
    /// T5 v1.0: `wo(relu(wi(x)))`.
    #[serde(rename = "relu")]
    Relu,
    /// T5 v1.1: `wo(gelu_tanh(wi_0(x)) * wi_1(x))`.
    #[serde(rename = "gated-gelu")]
    GatedGelu,
}

impl FeedForward {
    pub fn is_gated(self) -> bool {
        matches!(self, FeedForward::GatedGelu)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FeedForward::Relu => "relu",
            FeedForward::GatedGelu => "gated-gelu",
        }
    }
}

fn default_eps() -> f64 {
    1e-6
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_one() -> f64 {
    1.0
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eos() -> u32 {
    1
}
fn default_true() -> bool {
    true
}

/// A model's shape and its fixed hyper-parameters, as in Hugging Face's
/// `config.json` for `T5ForConditionalGeneration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    /// Defaults to `num_layers` when absent, as in `transformers`.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_one")]
    pub initializer_factor: f64,
    #[serde(default = "default_ff", deserialize_with = "deserialize_ff")]
    pub feed_forward_proj: FeedForward,
    /// v1.0 ties the output projection to the input embedding and scales
    /// the decoder output by `d_model^-0.5`; v1.1 has its own `lm_head`.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: u32,
}

fn default_ff() -> FeedForward {
    FeedForward::Relu
}

/// `transformers` accepts `"gated-gelu"` and the older spelling
/// `"gated-gelu_new"`; take both, and name what is valid otherwise.
fn deserialize_ff<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<FeedForward, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "relu" => Ok(FeedForward::Relu),
        "gated-gelu" | "gated-gelu_new" => Ok(FeedForward::GatedGelu),
        other => Err(serde::de::Error::custom(format!(
            "unsupported feed_forward_proj `{other}`: valid values are \"relu\" (T5 v1.0) and \"gated-gelu\" (T5 v1.1)"
        ))),
    }
}

impl T5Config {
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// The width of the concatenated attention heads (`num_heads * d_kv`),
    /// which T5 allows to differ from `d_model`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Checks the shape is one a model can be built from; the message
    /// names the field and what would be valid.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` is 0: it must be at least 1"));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "`relative_attention_num_buckets` is {}: it must be at least 4",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err(format!(
                "`relative_attention_max_distance` is {}: it must be greater than relative_attention_num_buckets / 4 = {}",
                self.relative_attention_max_distance,
                self.relative_attention_num_buckets / 4
            ));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(format!(
                "`dropout_rate` is {}: it must be in [0, 1)",
                self.dropout_rate
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(format!(
                "`layer_norm_epsilon` is {}: it must be greater than 0",
                self.layer_norm_epsilon
            ));
        }
        if self.initializer_factor.is_nan() || self.initializer_factor <= 0.0 {
            return Err(format!(
                "`initializer_factor` is {}: it must be greater than 0",
                self.initializer_factor
            ));
        }
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "`{name}` is {id}: it must be below vocab_size ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let mut cfg: T5Config =
            serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        // transformers 5 always writes `tie_word_embeddings: true` and keeps
        // the v1.0/v1.1 difference in `scale_decoder_outputs`.
        if raw.get("scale_decoder_outputs") == Some(&serde_json::Value::Bool(false)) {
            cfg.tie_word_embeddings = false;
        }
        cfg.validate().map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// The `config.json` that `transformers` reads, with the fields it
    /// expects beyond the shape (model type, architecture, cache use).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert(
                "num_decoder_layers".into(),
                serde_json::json!(self.decoder_layers()),
            );
            map.insert(
                "feed_forward_proj".into(),
                serde_json::json!(self.feed_forward_proj.as_str()),
            );
            map.insert(
                "architectures".into(),
                serde_json::json!(["T5ForConditionalGeneration"]),
            );
            map.insert("model_type".into(), serde_json::json!("t5"));
            map.insert("is_encoder_decoder".into(), serde_json::json!(true));
            map.insert("use_cache".into(), serde_json::json!(true));
            map.insert("dense_act_fn".into(), serde_json::json!(self.act_name()));
            map.insert(
                "scale_decoder_outputs".into(),
                serde_json::json!(self.tie_word_embeddings),
            );
            map.insert(
                "is_gated_act".into(),
                serde_json::json!(self.feed_forward_proj.is_gated()),
            );
        }
        v
    }

    fn act_name(&self) -> &'static str {
        match self.feed_forward_proj {
            FeedForward::Relu => "relu",
            FeedForward::GatedGelu => "gelu_new",
        }
    }

    pub fn write_json_file(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_hf_json())
            .map_err(|e| Error::Other(e.to_string()))?;
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// The number of trainable parameters, counted as `transformers` does
    /// (a tied embedding counts once).
    pub fn num_parameters(&self) -> usize {
        let d = self.d_model;
        let inner = self.inner_dim();
        let attn = 4 * d * inner;
        let ff = if self.feed_forward_proj.is_gated() {
            3 * d * self.d_ff
        } else {
            2 * d * self.d_ff
        };
        let bias = self.relative_attention_num_buckets * self.num_heads;
        let enc = self.num_layers * (attn + ff + 2 * d) + bias + d;
        let dec = self.decoder_layers() * (2 * attn + ff + 3 * d) + bias + d;
        let shared = self.vocab_size * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        shared + enc + dec + head
    }
}
