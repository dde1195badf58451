//! A trained model as the other commands use it: from a run (its latest
//! checkpoint and tokenizer) or from a Hugging Face T5 folder, and its
//! export as a Hugging Face folder.

use std::path::Path;

use candle_core::Device;

use crate::config::Experiment;
use crate::data::tokenizer::{model_vocab_size, T5Tokenizer};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::T5;
use crate::runs::{Run, RunStore};

/// A model with its tokenizer, and where it came from.
pub struct TrainedModel {
    pub model: T5,
    pub tokenizer: T5Tokenizer,
    /// The run's experiment; `None` for a Hugging Face folder.
    pub experiment: Option<Experiment>,
    /// The checkpoint's step, for a run.
    pub step: Option<u64>,
    /// The run id or folder, for messages.
    pub source: String,
}

/// Whether `target` names a Hugging Face T5 folder rather than a run.
pub fn is_model_dir(target: &str) -> bool {
    Path::new(target).join("config.json").is_file()
}

impl TrainedModel {
    /// `target` is a run id (or a unique prefix of one) or a folder with
    /// `config.json`, `model.safetensors` and `tokenizer.json`.
    pub fn open(store: &RunStore, target: &str, device: &Device) -> Result<Self> {
        if is_model_dir(target) {
            return Self::open_dir(Path::new(target), device);
        }
        let run = find_run(store, target)?;
        Self::open_run(&run, device)
    }

    /// A Hugging Face T5 folder.
    pub fn open_dir(dir: &Path, device: &Device) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::Invalid(format!(
                "{} has no tokenizer.json: a model folder needs config.json, model.safetensors and tokenizer.json",
                dir.display()
            )));
        }
        let tokenizer = T5Tokenizer::load(&tok_path)?;
        let model = T5::load_hf_dir(dir, device)?;
        if model.config().vocab_size < tokenizer.vocab_size() {
            return Err(Error::Invalid(format!(
                "{}: the tokenizer has {} tokens but the model only {} embeddings",
                dir.display(),
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        Ok(Self {
            model,
            tokenizer,
            experiment: None,
            step: None,
            source: dir.display().to_string(),
        })
    }

    /// A run's latest checkpoint.
    pub fn open_run(run: &Run, device: &Device) -> Result<Self> {
        let (exp, tokenizer) = run_experiment(run)?;
        let (step, dir) = run.latest_checkpoint().ok_or_else(|| {
            Error::Invalid(format!(
                "run {} has no checkpoint yet; train it first (`t5-tui resume {}`)",
                run.id(),
                run.id()
            ))
        })?;
        let model = T5::load_safetensors(&exp.model, &dir.join("model.safetensors"), device)
            .map_err(|e| run.damaged_checkpoint(step, e))?;
        Ok(Self {
            model,
            tokenizer,
            experiment: Some(exp),
            step: Some(step),
            source: format!("run {} (step {step})", run.id()),
        })
    }

    /// Writes `config.json`, `model.safetensors`, `tokenizer.json` and
    /// `tokenizer_config.json` into `dir`: a folder `transformers` loads
    /// with `T5ForConditionalGeneration.from_pretrained` and
    /// `AutoTokenizer.from_pretrained`.
    pub fn export(&self, dir: &Path) -> Result<()> {
        self.model.save_hf_dir(dir)?;
        self.tokenizer.save(dir.join("tokenizer.json"))?;
        let config = serde_json::to_string_pretty(&self.tokenizer.hf_tokenizer_config())
            .map_err(|e| Error::Other(format!("tokenizer config: {e}")))?;
        write_atomic(&dir.join("tokenizer_config.json"), config.as_bytes())
    }
}

/// A run's experiment with the model's vocabulary made the tokenizer's
/// (as the trainer does), and its tokenizer.
pub fn run_experiment(run: &Run) -> Result<(Experiment, T5Tokenizer)> {
    let text = run.read_config()?;
    let mut exp = Experiment::from_toml_str::<&str>(&text, &run.config_path(), &[])?;
    let tok_path = run.tokenizer_path();
    if !tok_path.is_file() {
        return Err(Error::Invalid(format!(
            "run {} has no tokenizer yet: it never got as far as training",
            run.id()
        )));
    }
    let tokenizer = T5Tokenizer::load(&tok_path)?;
    exp.model.vocab_size = fitted_vocab(exp.model.vocab_size, &tokenizer);
    Ok((exp, tokenizer))
}

/// The embeddings a model with `configured` ones needs for `tokenizer`:
/// the configured number when the tokenizer fits, else the tokenizer's
/// size rounded up to a multiple of 128.
pub fn fitted_vocab(configured: usize, tokenizer: &T5Tokenizer) -> usize {
    configured.max(model_vocab_size(tokenizer.vocab_size()))
}

/// The run `id` names: exactly, or as the unique prefix of one run's id.
pub fn find_run(store: &RunStore, id: &str) -> Result<Run> {
    match store.open(id) {
        Ok(run) => Ok(run),
        Err(first) => {
            if id.is_empty() || id.contains(['/', '\\']) || id.contains("..") {
                return Err(first);
            }
            let matches: Vec<String> = store
                .list()?
                .into_iter()
                .map(|s| s.id)
                .filter(|r| r.starts_with(id))
                .collect();
            match matches.as_slice() {
                [one] => store.open(one),
                [] => Err(first),
                many => Err(Error::Invalid(format!(
                    "`{id}` matches {} runs ({}); give more of the id",
                    many.len(),
                    many.join(", ")
                ))),
            }
        }
    }
}
