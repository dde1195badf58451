//! The experiment editor's state: a form over the resolved config, one
//! field per key, each checked as it is typed by resolving the whole
//! experiment with the edits as `section.key=value` overrides — the same
//! checks `t5-tui config check` makes, so the form and the file agree.

use std::path::{Path, PathBuf};

use crate::config::{self, Experiment};
use crate::error::{Error, Result};

/// One line of help per key, in the order the form shows them.
const FIELDS: &[(&str, &str, &str)] = &[
    (
        "",
        "name",
        "the run's name (run ids start with the date, then this)",
    ),
    ("", "description", "a line about the experiment"),
    (
        "model",
        "vocab_size",
        "embedding rows; the tokenizer's size rounded up to 128",
    ),
    ("model", "d_model", "width of the residual stream"),
    ("model", "d_kv", "width of each attention head"),
    ("model", "num_heads", "attention heads per layer"),
    ("model", "d_ff", "width of the feed-forward layer"),
    (
        "model",
        "feed_forward_proj",
        "\"gated-gelu\" (T5 v1.1) or \"relu\" (v1.0)",
    ),
    ("model", "num_layers", "encoder layers"),
    ("model", "num_decoder_layers", "decoder layers"),
    (
        "model",
        "relative_attention_num_buckets",
        "relative position buckets",
    ),
    (
        "model",
        "relative_attention_max_distance",
        "distance beyond which positions share a bucket",
    ),
    (
        "model",
        "dropout_rate",
        "dropout in training, 0 to 1 (0 for pre-training on little data)",
    ),
    ("model", "layer_norm_epsilon", "RMS norm epsilon"),
    (
        "model",
        "initializer_factor",
        "scales T5's initial weight deviations",
    ),
    (
        "model",
        "tie_word_embeddings",
        "share the input embedding with the output (v1.0)",
    ),
    ("model", "pad_token_id", "the padding token's id"),
    ("model", "eos_token_id", "the end-of-sequence token's id"),
    (
        "model",
        "decoder_start_token_id",
        "the first decoder input (T5: the pad id)",
    ),
    (
        "tokenizer",
        "path",
        "an existing tokenizer.json; empty trains one on the data",
    ),
    (
        "tokenizer",
        "vocab_size",
        "regular tokens to learn; empty: model vocab - extra_ids",
    ),
    (
        "tokenizer",
        "extra_ids",
        "sentinel tokens <extra_id_0>… for span corruption",
    ),
    (
        "data",
        "builtin",
        "built-in data: \"tanaka-text\" or \"tanaka-en-ja\" (no download)",
    ),
    (
        "data",
        "sources",
        "files or folders, e.g. [\"notes/\", \"more.txt\"]",
    ),
    (
        "data",
        "format",
        "\"text\", \"jsonl\" or \"tsv\"; empty guesses from the extension",
    ),
    (
        "data",
        "documents",
        "text files: \"line\" (one a line) or \"blank_line\" separated",
    ),
    ("data", "text_field", "JSONL: the field holding the text"),
    ("data", "input_field", "JSONL pairs: the input field"),
    ("data", "target_field", "JSONL pairs: the target field"),
    (
        "data",
        "on_bad_line",
        "\"skip\" (and count) or \"fail\" on a bad line",
    ),
    (
        "data",
        "validation_fraction",
        "share of records held out for evaluation, 0 to <1",
    ),
    ("data.clean", "nfkc", "Unicode NFKC normalization"),
    ("data.clean", "min_chars", "drop records shorter than this"),
    ("data.clean", "max_chars", "drop records longer than this"),
    ("data.clean", "dedup", "drop exact duplicates"),
    ("data.clean", "near_dedup", "drop near-duplicates too"),
    (
        "objective",
        "kind",
        "\"span_corruption\" (pre-training) or \"text_to_text\"",
    ),
    (
        "objective",
        "noise_density",
        "share of tokens masked, 0 to 1 (T5: 0.15)",
    ),
    (
        "objective",
        "mean_noise_span_length",
        "mean masked span (T5: 3)",
    ),
    ("objective", "input_length", "encoder tokens per example"),
    (
        "objective",
        "target_length",
        "decoder tokens; empty derives it",
    ),
    (
        "objective",
        "task_prefix",
        "prepended to inputs, e.g. \"translate English to Japanese: \"",
    ),
    (
        "objective",
        "task",
        "metrics: translation, summarization, question_answering, classification",
    ),
    (
        "train",
        "device",
        "\"auto\", \"cpu\", \"cuda\", \"cuda:1\" or \"metal\"",
    ),
    ("train", "seed", "seeds init, dropout and the data order"),
    ("train", "batch_size", "examples per micro-batch"),
    (
        "train",
        "grad_accum_steps",
        "micro-batches per optimizer step",
    ),
    ("train", "steps", "optimizer steps to train"),
    ("train", "learning_rate", "peak learning rate, e.g. 3e-4"),
    (
        "train",
        "optimizer",
        "\"adamw\", \"adamw_scale\" (nanoT5) or \"adafactor\"",
    ),
    (
        "train",
        "relative_step",
        "Adafactor: its own relative step size",
    ),
    (
        "train",
        "schedule",
        "\"constant\", \"linear\", \"cosine\" or \"inverse_sqrt\"",
    ),
    ("train", "warmup_steps", "linear warm-up steps"),
    (
        "train",
        "grad_clip",
        "global gradient-norm clip; 0 turns it off",
    ),
    ("train", "weight_decay", "decoupled weight decay"),
    ("train", "z_loss", "z-loss weight (0 off)"),
    (
        "train",
        "max_bad_steps",
        "non-finite steps in a row before the run pauses",
    ),
    (
        "train",
        "init_from",
        "a run id or Hugging Face folder to fine-tune from",
    ),
    ("train", "dtype", "\"f32\", \"bf16\" or \"f16\""),
    (
        "eval",
        "every_steps",
        "evaluate every this many steps (0 off)",
    ),
    ("eval", "batches", "validation batches per evaluation"),
    (
        "eval",
        "samples_every_steps",
        "decode samples every this many steps (0 off)",
    ),
    (
        "eval",
        "num_samples",
        "validation inputs decoded as samples",
    ),
    ("eval", "max_sample_tokens", "longest sample output"),
    (
        "eval",
        "generate_examples",
        "text-to-text: inputs generated for BLEU, chrF…",
    ),
    ("eval", "rouge_stemmer", "ROUGE with the Porter stemmer"),
    (
        "checkpoint",
        "every_steps",
        "checkpoint every this many steps (0: only at the end)",
    ),
    (
        "checkpoint",
        "keep_last",
        "checkpoints kept; older ones are pruned",
    ),
];

/// One key of the form.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// `""` for the top-level keys, else `model`, `data.clean`, …
    pub section: String,
    pub key: String,
    /// The value as TOML writes it; empty when unset.
    pub value: String,
    /// The value an empty experiment gets.
    pub default: String,
    pub help: &'static str,
    /// Why the value is not valid, when it is not.
    pub error: Option<String>,
    pub edited: bool,
}

impl Field {
    /// `train.learning_rate`, as `--set` takes it.
    pub fn path(&self) -> String {
        if self.section.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }
}

/// The form: the experiment it started from, the fields, and the entry
/// being typed.
#[derive(Debug, Clone)]
pub struct EditorState {
    /// Where it came from, for the title (a preset, a file, a run).
    pub origin: String,
    /// The resolved experiment it started from, as TOML.
    base: String,
    /// Relative paths and presets resolve from here.
    pub path: PathBuf,
    pub fields: Vec<Field>,
    pub selected: usize,
    /// The text being typed into the selected field.
    pub entry: Option<String>,
    /// Shows only the fields whose path contains this.
    pub filter: String,
    pub filtering: bool,
}

impl EditorState {
    /// A form over `exp`, whose relative paths are relative to `path`.
    pub fn new(origin: impl Into<String>, exp: &Experiment, path: &Path) -> Result<Self> {
        let base = exp.to_toml()?;
        let current = flatten(&base)?;
        let defaults = flatten(&config::parse_str("", path)?.to_toml()?)?;
        let lookup = |table: &[(String, String, String)], s: &str, k: &str| {
            table
                .iter()
                .find(|(ts, tk, _)| ts == s && tk == k)
                .map(|(_, _, v)| v.clone())
        };
        let mut fields: Vec<Field> = FIELDS
            .iter()
            .map(|(s, k, help)| Field {
                section: s.to_string(),
                key: k.to_string(),
                value: lookup(&current, s, k).unwrap_or_default(),
                default: lookup(&defaults, s, k).unwrap_or_default(),
                help,
                error: None,
                edited: false,
            })
            .collect();
        // Keys the help table does not know yet still get a row.
        for (s, k, v) in &current {
            if !fields.iter().any(|f| f.section == *s && f.key == *k) {
                fields.push(Field {
                    section: s.clone(),
                    key: k.clone(),
                    value: v.clone(),
                    default: lookup(&defaults, s, k).unwrap_or_default(),
                    help: "",
                    error: None,
                    edited: false,
                });
            }
        }
        Ok(EditorState {
            origin: origin.into(),
            base,
            path: path.to_path_buf(),
            fields,
            selected: 0,
            entry: None,
            filter: String::new(),
            filtering: false,
        })
    }

    /// The indices of the fields the filter shows.
    pub fn visible(&self) -> Vec<usize> {
        let f = self.filter.to_lowercase();
        (0..self.fields.len())
            .filter(|&i| f.is_empty() || self.fields[i].path().to_lowercase().contains(&f))
            .collect()
    }

    pub fn move_by(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let pos = visible
            .iter()
            .position(|&i| i == self.selected)
            .unwrap_or(0) as isize;
        let next = (pos + delta).clamp(0, visible.len() as isize - 1) as usize;
        self.selected = visible[next];
    }

    /// Keeps the selection on a field the filter shows.
    pub fn fix_selection(&mut self) {
        let visible = self.visible();
        // A key named exactly as typed wins (`steps` is train.steps).
        let f = self.filter.to_lowercase();
        if let Some(&exact) = visible.iter().find(|&&i| self.fields[i].key == f) {
            self.selected = exact;
        } else if !visible.contains(&self.selected) {
            if let Some(&first) = visible.first() {
                self.selected = first;
            }
        }
    }

    /// Starts typing into the selected field, from its value.
    pub fn begin_entry(&mut self) {
        let v = &self.fields[self.selected].value;
        // Strings are typed bare; quotes come back when needed.
        let shown = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
            Ok(t) => match t.get("v") {
                Some(toml::Value::String(s)) => s.clone(),
                _ => v.clone(),
            },
            Err(_) => v.clone(),
        };
        self.entry = Some(shown);
    }

    /// Checks the entry as it stands (every keystroke): the field shows
    /// the problem at once.
    pub fn check_entry(&mut self) {
        if let Some(text) = self.entry.clone() {
            let i = self.selected;
            self.fields[i].error = self.check_with(i, &text).err();
        }
    }

    /// Takes the entry as the field's value (kept even when invalid, so
    /// it can be fixed; the run cannot start until it is).
    pub fn commit_entry(&mut self) {
        let Some(text) = self.entry.take() else {
            return;
        };
        let i = self.selected;
        let value = to_toml_value(&text);
        if value != self.fields[i].value {
            self.fields[i].value = value;
            self.fields[i].edited = true;
        }
        self.revalidate();
    }

    pub fn cancel_entry(&mut self) {
        self.entry = None;
        self.revalidate();
    }

    /// Resets the selected field to its default.
    pub fn reset_selected(&mut self) {
        let i = self.selected;
        self.fields[i].value = self.fields[i].default.clone();
        self.fields[i].edited = true;
        self.revalidate();
    }

    /// Re-checks the whole form: an error that names a field lands on it.
    fn revalidate(&mut self) {
        for f in &mut self.fields {
            f.error = None;
        }
        if let Err(e) = self.build() {
            let msg = e.to_string();
            let at = self
                .fields
                .iter()
                .position(|f| names_field(&msg, f))
                .unwrap_or(self.selected);
            self.fields[at].error = Some(short_message(&msg));
        }
    }

    fn overrides(&self, replace: Option<(usize, &str)>) -> Vec<String> {
        self.fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let value = match replace {
                    Some((j, text)) if j == i => to_toml_value(text),
                    _ if f.edited => f.value.clone(),
                    _ => return None,
                };
                // An emptied optional key goes back to unset.
                if value.is_empty() {
                    return None;
                }
                Some(format!("{}={}", f.path(), value))
            })
            .collect()
    }

    fn check_with(&self, i: usize, text: &str) -> std::result::Result<(), String> {
        self.resolve(&self.overrides(Some((i, text))))
            .map(|_| ())
            .map_err(|e| short_message(&e.to_string()))
    }

    fn resolve(&self, overrides: &[String]) -> Result<Experiment> {
        // Keys emptied in the form are removed from the base first.
        let mut table: toml::Table = toml::from_str(&self.base)
            .map_err(|e| Error::Other(format!("the editor's config: {e}")))?;
        for f in self
            .fields
            .iter()
            .filter(|f| f.edited && f.value.is_empty())
        {
            remove_key(&mut table, &f.section, &f.key);
        }
        let text = toml::to_string(&table).map_err(|e| Error::Other(e.to_string()))?;
        config::parse_str_with_overrides(&text, &self.path, overrides)
    }

    /// The experiment as the form has it, or the first problem.
    pub fn build(&self) -> Result<Experiment> {
        self.resolve(&self.overrides(None))
    }

    pub fn has_errors(&self) -> bool {
        self.fields.iter().any(|f| f.error.is_some())
    }

    /// Saves the form as an experiment file (resolved: every key written).
    pub fn save(&self, path: &Path) -> Result<()> {
        let exp = self.build()?;
        let text = exp.to_toml()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::fsutil::write_atomic(path, text.as_bytes())
    }
}

/// The resolved TOML as `(section, key, value)` rows; nested tables
/// (`[data.clean]`) become sections of their own.
fn flatten(text: &str) -> Result<Vec<(String, String, String)>> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| Error::Other(format!("the editor's config: {e}")))?;
    let mut rows = Vec::new();
    walk(&table, "", &mut rows);
    Ok(rows)
}

fn walk(table: &toml::Table, section: &str, rows: &mut Vec<(String, String, String)>) {
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => {
                let s = if section.is_empty() {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                walk(t, &s, rows);
            }
            other => rows.push((section.to_string(), k.clone(), other.to_string())),
        }
    }
}

fn remove_key(table: &mut toml::Table, section: &str, key: &str) {
    let mut t = table;
    if !section.is_empty() {
        for part in section.split('.') {
            match t.get_mut(part) {
                Some(toml::Value::Table(inner)) => t = inner,
                _ => return,
            }
        }
    }
    t.remove(key);
}

/// What the user typed as a TOML value: numbers, booleans, arrays and
/// quoted strings as they are; anything else a string.
fn to_toml_value(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return String::new();
    }
    match toml::from_str::<toml::Table>(&format!("v = {t}")) {
        Ok(table) => table.get("v").map(|v| v.to_string()).unwrap_or_default(),
        Err(_) => toml::Value::String(t.to_string()).to_string(),
    }
}

/// Whether an error message is about this field: `[train] learning_rate`
/// or `learning_rate` in a message that names its section.
fn names_field(msg: &str, f: &Field) -> bool {
    if f.section.is_empty() {
        return msg.contains(&format!(" {} ", f.key));
    }
    let section = f.section.rsplit('.').next().unwrap_or(&f.section);
    (msg.contains(&format!("[{}] {}", f.section, f.key))
        || msg.contains(&format!("[{section}] {}", f.key)))
        || msg.contains(&format!("{}.{}", f.section, f.key))
}

/// A config error without the file name in front (the form has no file).
fn short_message(msg: &str) -> String {
    let msg = msg.replace(" (set by --set)", "");
    match msg.find(": [") {
        Some(i) => msg[i + 2..].to_string(),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> EditorState {
        let exp = Experiment::from_preset::<&str>("t5-tiny", None, &[]).unwrap();
        EditorState::new("t5-tiny", &exp, Path::new("editor.toml")).unwrap()
    }

    fn select(e: &mut EditorState, path: &str) {
        e.selected = e.fields.iter().position(|f| f.path() == path).unwrap();
    }

    #[test]
    fn every_key_of_the_resolved_config_has_a_field_with_help() {
        let e = form();
        for f in &e.fields {
            assert!(!f.help.is_empty(), "{} has no help line", f.path());
        }
        let lr = e
            .fields
            .iter()
            .find(|f| f.path() == "train.learning_rate")
            .unwrap();
        assert_eq!(lr.value, lr.default);
    }

    #[test]
    fn a_typed_learning_rate_in_e_notation_is_taken() {
        let mut e = form();
        select(&mut e, "train.learning_rate");
        e.entry = Some("3e-4".into());
        e.check_entry();
        assert_eq!(e.fields[e.selected].error, None);
        e.commit_entry();
        assert_eq!(e.build().unwrap().train.learning_rate, 3e-4);
    }

    #[test]
    fn invalid_values_are_marked_as_typed_and_block_the_run() {
        let mut e = form();
        select(&mut e, "model.num_layers");
        e.begin_entry();
        e.entry = Some("0".into());
        e.check_entry();
        let err = e.fields[e.selected]
            .error
            .clone()
            .expect("0 layers is invalid");
        assert!(err.contains("num_layers"), "{err}");
        e.commit_entry();
        assert!(e.has_errors());
        assert!(e.build().is_err());
        // A word where a number belongs.
        select(&mut e, "train.batch_size");
        e.entry = Some("sixteen".into());
        e.check_entry();
        assert!(e.fields[e.selected].error.is_some());
        e.cancel_entry();
        // Fixing the layers clears the form.
        select(&mut e, "model.num_layers");
        e.entry = Some("2".into());
        e.commit_entry();
        assert!(
            !e.has_errors(),
            "{:?}",
            e.fields.iter().find(|f| f.error.is_some())
        );
        assert_eq!(e.build().unwrap().model.num_layers, 2);
    }

    #[test]
    fn strings_are_typed_bare_and_saved_forms_load_back() {
        let mut e = form();
        select(&mut e, "train.schedule");
        e.begin_entry();
        assert_eq!(e.entry.as_deref(), Some("cosine"));
        e.entry = Some("linear".into());
        e.commit_entry();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("configs/mine.toml");
        e.save(&path).unwrap();
        let back = config::load(&path).unwrap();
        assert_eq!(back, e.build().unwrap());
    }

    #[test]
    fn the_filter_narrows_the_fields() {
        let mut e = form();
        e.filter = "steps".into();
        let shown: Vec<String> = e.visible().iter().map(|&i| e.fields[i].path()).collect();
        assert!(shown.contains(&"train.steps".to_string()));
        assert!(shown.iter().all(|p| p.contains("steps")));
        e.fix_selection();
        assert!(e.fields[e.selected].path().contains("steps"));
    }
}
