//! `t5-tui generate` and `t5-tui eval`: a trained model at work, from a run
//! or a Hugging Face T5 folder.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use super::progress::Progress;
use super::{store, write_out};
use crate::config::ObjectiveKind;
use crate::data::source::{ReadOptions, Record, Source, SourceReader};
use crate::data::stream::{RecordStream, Split, StreamOptions};
use crate::error::{Error, Result};
use crate::metrics::TaskKind;
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
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let (pairs, total, predictions_path): (PairIter, Option<u64>, PathBuf) = match &args.data {
        Some(path) => {
            let (pairs, n) = file_pairs(path)?;
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

/// The pairs of a TSV or JSONL file, and how many lines it has (for the
/// progress bar).
fn file_pairs(
    path: &std::path::Path,
) -> Result<(impl Iterator<Item = Result<(String, String)>>, u64)> {
    let source = Source::from_path(path);
    let mut reader = SourceReader::new(&[source], ReadOptions::default())?;
    let lines = std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().count() as u64)
        .unwrap_or(0);
    let path = path.to_path_buf();
    let iter = std::iter::from_fn(move || {
        match reader.next_record() {
        Ok(Some(Record::Pair { input, target })) => Some(Ok((input, target))),
        Ok(Some(Record::Text { .. })) => Some(Err(Error::Invalid(format!(
            "{}: holds plain text, not (input, target) pairs: use TSV (input<TAB>target) or JSONL with input and target fields",
            path.display()
        )))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
    });
    Ok((iter, lines))
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
    for (k, v) in &r.metrics {
        row(k, format!("{v:.2}"));
    }
    s.push('\n');
    s
}
