//! `t5-tui generate` and `t5-tui eval`: a trained model at work, from a run
//! or a Hugging Face T5 folder.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::progress::Progress;
use super::{store, write_out};
use crate::config::ObjectiveKind;
use crate::data::source::{Format, OnBadLine, ReadOptions, Record, Source, SourceReader};
use crate::data::stream::{RecordStream, Split, StreamOptions};
use crate::error::{Error, Result};
use crate::metrics::{ClassificationReport, Prf, TaskKind};
use crate::model::generate::{generate as run_generate, EarlyStopping, GenerateOptions, Strategy};
use crate::train::evaluate::{evaluate_pairs, EvalOptions, EvalReport};
use crate::train::export::TrainedModel;

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The most tokens to generate for each input.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_tokens: usize,
    /// Beam search with this many beams (1 is greedy).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub beams: usize,
    /// Beam search: the exponent of the length in the score (HF's
    /// `length_penalty`).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub length_penalty: f64,
    /// Beam search: stop as soon as `beams` hypotheses have ended.
    #[arg(long)]
    pub early_stopping: bool,
    /// Sample instead of taking the most likely token.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    pub temperature: f64,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample among the most likely tokens that make up p of the mass.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f64,
    /// The sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    fn options(&self) -> Result<GenerateOptions> {
        let strategy = if self.sample {
            if self.beams > 1 {
                return Err(Error::Invalid(
                    "--sample and --beams cannot be combined: choose sampling or beam search"
                        .into(),
                ));
            }
            Strategy::Sample {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            }
        } else if self.beams > 1 {
            Strategy::Beam {
                num_beams: self.beams,
                length_penalty: self.length_penalty,
                early_stopping: if self.early_stopping {
                    EarlyStopping::Always
                } else {
                    EarlyStopping::Heuristic
                },
            }
        } else {
            Strategy::Greedy
        };
        Ok(GenerateOptions {
            max_new_tokens: self.max_tokens,
            strategy,
            use_cache: true,
        })
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A run id (or a unique prefix of it), or a Hugging Face T5 folder
    /// (config.json, model.safetensors, tokenizer.json).
    #[arg(value_name = "RUN|MODEL_DIR")]
    pub model: String,
    /// Inputs, one output line each; none reads one input a line from stdin.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Do not put the run's task prefix before the inputs.
    #[arg(long)]
    pub no_prefix: bool,
    /// Keep special tokens (sentinels, `</s>`) in the output, as a
    /// span-corruption model writes them.
    #[arg(long)]
    pub special: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run id (or a unique prefix of it), or a Hugging Face T5 folder.
    #[arg(value_name = "RUN|MODEL_DIR")]
    pub model: String,
    /// A file of (input, target) pairs: TSV, or JSONL with `input` and
    /// `target` fields. Absent: the run's held-out validation split.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// The task kind, which decides the metrics (default: the run's).
    #[arg(long, value_enum, value_name = "KIND")]
    pub task: Option<TaskArg>,
    /// Pairs a batch.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch_size: usize,
    /// Score at most this many pairs.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Where to write the predictions (JSONL of input, target, output);
    /// default `predictions.jsonl` beside the data file, or in the run.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Print the scores as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// `--task` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskArg {
    Translation,
    Summarization,
    #[value(name = "qa", alias = "question_answering")]
    QuestionAnswering,
    Classification,
}

impl From<TaskArg> for TaskKind {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::Translation => TaskKind::Translation,
            TaskArg::Summarization => TaskKind::Summarization,
            TaskArg::QuestionAnswering => TaskKind::QuestionAnswering,
            TaskArg::Classification => TaskKind::Classification,
        }
    }
}

pub fn generate(args: GenerateArgs, out: &mut dyn Write) -> Result<()> {
    let opts = args.decode.options()?;
    let store = store()?;
    let tm = TrainedModel::open(&store, &args.model, &candle_core::Device::Cpu)?;
    let mut texts = args.texts;
    if texts.is_empty() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(Error::Invalid(
                "no input text: give it as arguments, or one input a line on stdin".into(),
            ));
        }
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| Error::Other(format!("reading stdin: {e}")))?;
            texts.push(line);
        }
    }
    let prefix = match (&tm.experiment, args.no_prefix) {
        (Some(exp), false) => exp.objective.task_prefix.clone().unwrap_or_default(),
        _ => String::new(),
    };
    for chunk in texts.chunks(16) {
        let prompts = chunk
            .iter()
            .map(|t| {
                let text = if t.starts_with(&prefix) {
                    t.clone()
                } else {
                    format!("{prefix}{t}")
                };
                tm.tokenizer.encode(&text)
            })
            .collect::<Result<Vec<_>>>()?;
        for ids in run_generate(&tm.model, &prompts, &opts)? {
            let text = if args.special {
                tm.tokenizer.decode_with_special(&ids)?
            } else {
                tm.tokenizer.decode(&ids)?
            };
            write_out(out, &format!("{text}\n"))?;
        }
    }
    Ok(())
}

/// (input, target) pairs read one at a time, from a file or a run's split.
type PairIter = Box<dyn Iterator<Item = Result<(String, String)>>>;

pub fn eval(args: EvalArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let store = store()?;
    let tm = TrainedModel::open(&store, &args.model, &candle_core::Device::Cpu)?;
    let exp = tm.experiment.as_ref();
    let task = args
        .task
        .map(TaskKind::from)
        .or_else(|| exp.and_then(|e| e.objective.task));
    let mut generate = args.decode.options()?;
    let (input_length, target_length) = match exp {
        Some(e) => (
            e.objective.input_length,
            e.objective
                .target_length
                .unwrap_or(e.objective.input_length),
        ),
        None => (512, 512),
    };
    if args.decode.max_tokens == 64 {
        generate.max_new_tokens = target_length;
    }
    let opts = EvalOptions {
        task,
        prefix: exp
            .and_then(|e| e.objective.task_prefix.clone())
            .unwrap_or_default(),
        input_length,
        target_length,
        batch_size: args.batch_size,
        generate,
        rouge_stemmer: exp.is_some_and(|e| e.eval.rouge_stemmer),
        labels: Vec::new(),
    };
    let mut opts = opts;
    let limit = args.limit.unwrap_or(usize::MAX);
    let (pairs, total, predictions_path): (PairIter, Option<u64>, PathBuf) = match &args.data {
        Some(path) => {
            // The whole file is checked before any generation, so that a
            // bad line fails in a second, not after an hour of decoding.
            let scan = scan_pairs(path, task)?;
            opts.labels = scan.labels;
            let n = scan.pairs;
            let pairs = file_pairs(path)?;
            let default = path.with_extension("predictions.jsonl");
            (
                Box::new(pairs.take(limit)),
                Some(n.min(limit as u64)),
                args.predictions.clone().unwrap_or(default),
            )
        }
        None => {
            let Some(exp) = exp else {
                return Err(Error::Invalid(
                    "a model folder has no validation split: give --data FILE".into(),
                ));
            };
            if exp.objective.kind != ObjectiveKind::TextToText {
                return Err(Error::Invalid(
                        "this run pre-trains with span corruption, which has no (input, target) pairs to score: give --data FILE with pairs".into(),
                    ));
            }
            let records = crate::train::data::ensure_prepared(store.root(), exp, |_| {})?;
            let stream = RecordStream::open(
                &records,
                StreamOptions {
                    seed: exp.train.seed,
                    validation_fraction: exp.data.validation_fraction,
                    split: Split::Validation,
                    block_size: 1,
                    repeat: false,
                    shuffle: false,
                },
                Default::default(),
            )?;
            let run = crate::train::export::find_run(&store, &args.model)?;
            let default = run
                .dir()
                .join(format!("predictions-step{}.jsonl", tm.step.unwrap_or(0)));
            (
                Box::new(RecordPairs(stream).take(limit)),
                None,
                args.predictions.clone().unwrap_or(default),
            )
        }
    };
    let file =
        std::fs::File::create(&predictions_path).map_err(|e| Error::io(&predictions_path, e))?;
    let mut writer = std::io::BufWriter::new(file);
    let tty = std::io::stderr().is_terminal();
    let mut progress = Progress::new(total.unwrap_or(0), 0, tty);
    let mut done = 0u64;
    let report = evaluate_pairs(&tm.model, &tm.tokenizer, pairs, &opts, |p| {
        let line = serde_json::to_string(p).map_err(|e| Error::Other(e.to_string()))?;
        writeln!(writer, "{line}").map_err(|e| Error::io(&predictions_path, e))?;
        done += 1;
        if tty {
            progress.update(err, done, "pairs");
        }
        Ok(())
    })?;
    if tty {
        progress.finish(err);
    }
    writer
        .flush()
        .map_err(|e| Error::io(&predictions_path, e))?;
    if report.examples == 0 {
        return Err(Error::Invalid(match &args.data {
            Some(p) => format!("{}: no (input, target) pairs to evaluate", p.display()),
            None => "the run's validation split is empty: give --data FILE".into(),
        }));
    }
    if args.json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Other(e.to_string()))?;
        v["predictions"] = serde_json::Value::String(predictions_path.display().to_string());
        v["model"] = serde_json::Value::String(tm.source.clone());
        return write_out(out, &format!("{}\n", v));
    }
    write_out(out, &report_table(&report, &tm.source, task))?;
    write_out(
        out,
        &format!("predictions in {}\n", predictions_path.display()),
    )
}

/// The most distinct targets a classification file may have: more, and it
/// is more likely a file of another task than a label set.
const MAX_LABELS: usize = 1000;

/// What a first pass over an eval file found.
#[derive(Debug)]
struct PairScan {
    pairs: u64,
    /// Classification: the distinct (trimmed) targets, sorted.
    labels: Vec<String>,
}

/// A reader of an eval file's pairs that stops at the first bad line
/// (skipping it would score a different file than the one named).
fn pair_reader(path: &Path) -> Result<SourceReader> {
    let mut source = Source::from_path(path);
    source.format = match source.format {
        Format::Tsv => Format::Tsv,
        // Named fields, so that a line without one says which is missing.
        Format::Jsonl { .. } => Format::Jsonl {
            text_field: None,
            input_field: Some("input".into()),
            target_field: Some("target".into()),
        },
        Format::Text { .. } => {
            return Err(Error::data(
                path,
                None,
                "not a file of pairs: name it .tsv (input<TAB>target a line) or .jsonl (one {\"input\": …, \"target\": …} object a line)",
            ))
        }
    };
    SourceReader::new(
        &[source],
        ReadOptions {
            on_bad_line: OnBadLine::Fail,
            ..ReadOptions::default()
        },
    )
}

/// Reads the whole file once: every line must be a pair, there must be
/// one, and a classification file needs at least two labels.
fn scan_pairs(path: &Path, task: Option<TaskKind>) -> Result<PairScan> {
    let mut reader = pair_reader(path)?;
    let classification = task == Some(TaskKind::Classification);
    let mut labels = std::collections::BTreeSet::new();
    let mut pairs = 0u64;
    while let Some(record) = reader.next_record()? {
        let Record::Pair { target, .. } = record else {
            continue;
        };
        pairs += 1;
        if !classification {
            continue;
        }
        let label = target.trim();
        if label.is_empty() {
            return Err(Error::data(
                path,
                Some(reader.stats.lines),
                "the target is empty: a classification target is one of the task's labels",
            ));
        }
        if !labels.contains(label) {
            if labels.len() == MAX_LABELS {
                return Err(Error::data(
                    path,
                    Some(reader.stats.lines),
                    format!("more than {MAX_LABELS} distinct targets: a classification file's targets are labels from a short list; for free text choose another --task"),
                ));
            }
            labels.insert(label.to_string());
        }
    }
    if pairs == 0 {
        return Err(Error::data(
            path,
            None,
            "no (input, target) pairs: the file is empty; give one pair a line, as TSV (input<TAB>target) or JSONL ({\"input\": …, \"target\": …})",
        ));
    }
    if classification && labels.len() < 2 {
        let only = labels.iter().next().cloned().unwrap_or_default();
        return Err(Error::data(
            path,
            None,
            format!("every target is the label {only:?} ({pairs} pairs): classification needs at least two labels to tell apart"),
        ));
    }
    Ok(PairScan {
        pairs,
        labels: labels.into_iter().collect(),
    })
}

/// The pairs of a TSV or JSONL file, read as they are needed.
fn file_pairs(path: &Path) -> Result<impl Iterator<Item = Result<(String, String)>>> {
    let mut reader = pair_reader(path)?;
    Ok(std::iter::from_fn(move || loop {
        match reader.next_record() {
            Ok(Some(Record::Pair { input, target })) => return Some(Ok((input, target))),
            // pair_reader reads no plain text; a text record cannot come.
            Ok(Some(Record::Text { .. })) => continue,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        }
    }))
}

/// The pairs of a prepared record stream.
struct RecordPairs(RecordStream);

impl Iterator for RecordPairs {
    type Item = Result<(String, String)>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.0.next_record() {
                Ok(Some(Record::Pair { input, target })) => return Some(Ok((input, target))),
                Ok(Some(Record::Text { .. })) => continue,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn report_table(r: &EvalReport, source: &str, task: Option<TaskKind>) -> String {
    let mut s = format!(
        "{source}: {} pairs, task {}\n\n",
        r.examples,
        task.map_or("text-to-text", TaskKind::as_str)
    );
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<16} {v}\n"));
    row("loss", format!("{:.4}", r.loss));
    row("perplexity", format!("{:.2}", r.perplexity));
    row("token_accuracy", format!("{:.2}", r.token_accuracy));
    row("gen_len", format!("{:.1}", r.gen_len));
    row("gen_chars", format!("{:.1}", r.gen_chars));
    for (k, v) in &r.metrics {
        row(k, format!("{v:.2}"));
    }
    s.push('\n');
    if let Some(c) = &r.classification {
        s.push_str(&classification_table(c));
    }
    s
}

/// Per-label scores, then the confusion matrix (rows: the target label,
/// columns: the output; `invalid` counts outputs that are no label).
fn classification_table(c: &ClassificationReport) -> String {
    let w = c
        .labels
        .iter()
        .map(|l| l.chars().count())
        .chain(["micro avg".len(), "target \\ output".len()])
        .max()
        .unwrap_or(8);
    let mut s = format!(
        "  {:<w$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
        "label", "precision", "recall", "f1", "support"
    );
    let mut line = |name: &str, p: &Prf, support: String| {
        s.push_str(&format!(
            "  {name:<w$}  {:>9.2}  {:>9.2}  {:>9.2}  {support:>7}\n",
            p.precision, p.recall, p.f1
        ));
    };
    for l in &c.per_label {
        line(&l.label, &l.scores, l.support.to_string());
    }
    line("macro avg", &c.macro_avg, c.total.to_string());
    line("micro avg", &c.micro_avg, c.total.to_string());
    s.push_str(&format!(
        "\n  confusion matrix ({} outputs are no label: invalid)\n  {:<w$}",
        c.invalid, "target \\ output"
    ));
    let cell = c
        .labels
        .iter()
        .map(|l| l.chars().count())
        .chain(["invalid".len()])
        .chain(c.confusion.iter().flatten().map(|n| n.to_string().len()))
        .max()
        .unwrap_or(7);
    for l in c.labels.iter().map(String::as_str).chain(["invalid"]) {
        s.push_str(&format!("  {l:>cell$}"));
    }
    s.push('\n');
    for (label, row) in c.labels.iter().zip(&c.confusion) {
        s.push_str(&format!("  {label:<w$}"));
        for n in row {
            s.push_str(&format!("  {n:>cell$}"));
        }
        s.push('\n');
    }
    s.push('\n');
    s
}
