//! The trainer's view of the data: the prepared corpus (cached by the data
//! config), the tokenizer, and the stream of examples with a position that
//! a checkpoint saves.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{BuiltinData, Experiment, ObjectiveKind};
use crate::data::batch::{Example, TextToText};
use crate::data::prepare::{prepare, prepared_paths, read_prepared, record_texts};
use crate::data::source::{ReadOptions, Record, Source, SourceReader};
use crate::data::span_corruption::{PackerState, SpanCorruption, SpanCorruptionPacker};
use crate::data::stream::{RecordStream, Split, StreamOptions, StreamPosition};
use crate::data::tokenizer::T5Tokenizer;
use crate::error::{Error, Result};

/// Records shuffled together in the training stream.
const SHUFFLE_BLOCK: usize = 10_000;

/// The folder of the prepared corpus for an experiment's `[data]`
/// section: `<root>/data/<hash>/`, shared by runs with the same data.
pub fn prepared_dir(root: &Path, exp: &Experiment) -> PathBuf {
    let key = serde_json::to_string(&exp.data).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    root.join("data").join(format!("{:016x}", h.finish()))
}

/// Prepares the experiment's corpus (sources or built-in data, then
/// cleaning) unless a prepared copy exists; returns the records file.
pub fn ensure_prepared(
    root: &Path,
    exp: &Experiment,
    mut note: impl FnMut(String),
) -> Result<PathBuf> {
    let dir = prepared_dir(root, exp);
    let (records, _) = prepared_paths(&dir);
    if records.exists() {
        return Ok(records);
    }
    note(format!("preparing the corpus into {}", dir.display()));
    let report = prepare_experiment_data(exp, &dir)?;
    note(format!(
        "prepared {} records ({} read{})",
        report.clean.records_out,
        report.clean.records_in,
        report.read.skipped_note()
    ));
    Ok(records)
}

/// Runs the sources and cleaning of an experiment into `dir`.
pub fn prepare_experiment_data(
    exp: &Experiment,
    dir: &Path,
) -> Result<crate::data::prepare::PrepareReport> {
    let clean = &exp.data.clean;
    match exp.data.builtin {
        Some(builtin) => {
            let records: Box<dyn Iterator<Item = Record>> = match builtin {
                BuiltinData::TanakaText => Box::new(crate::data::demo::pretraining_records()),
                BuiltinData::TanakaEnJa => Box::new(crate::data::demo::translation_records()),
                BuiltinData::TanakaJaEn => Box::new(
                    crate::data::demo::pairs()
                        .iter()
                        .map(|p| Record::pair(p.japanese, p.english)),
                ),
            };
            prepare(records.map(Ok), Default::default, clean, dir)
        }
        None => {
            if exp.data.sources.is_empty() {
                return Err(Error::Invalid(
                    "[data] names no sources and no builtin data set: add `sources = [\"corpus.txt\"]` or `builtin = \"tanaka-text\"`".into(),
                ));
            }
            let sources: Vec<Source> = exp
                .data
                .sources
                .iter()
                .map(|p| exp.data.source(p))
                .collect();
            let opts = ReadOptions {
                on_bad_line: exp.data.on_bad_line,
                ..ReadOptions::default()
            };
            let reader = SourceReader::new(&sources, opts)?;
            let reader = std::cell::RefCell::new(reader);
            let iter = std::iter::from_fn(|| reader.borrow_mut().next_record().transpose());
            prepare(iter, || reader.borrow().stats.clone(), clean, dir)
        }
    }
}

/// Loads or trains the run's tokenizer: the run's own copy when resuming,
/// the configured file, or one trained on the prepared corpus (cached
/// beside it).
pub fn ensure_tokenizer(
    exp: &Experiment,
    records: &Path,
    run_copy: &Path,
    mut note: impl FnMut(String),
) -> Result<T5Tokenizer> {
    if run_copy.exists() {
        return T5Tokenizer::load(run_copy);
    }
    let tok = if let Some(path) = &exp.tokenizer.path {
        T5Tokenizer::load(path)?
    } else {
        let extra = exp.tokenizer.extra_ids;
        let total = exp.tokenizer.regular_vocab_size(exp.model.vocab_size) + extra;
        let cached = records.with_file_name(format!("tokenizer-{total}-{extra}.json"));
        if cached.exists() {
            T5Tokenizer::load(&cached)?
        } else {
            note(format!("training a {total}-token tokenizer on the corpus"));
            let texts = read_prepared(records)?
                .filter_map(|r| r.ok())
                .flat_map(|r| {
                    record_texts(&r)
                        .into_iter()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                });
            let tok = T5Tokenizer::train(texts, total, extra)?;
            tok.save(&cached)?;
            tok
        }
    };
    tok.save(run_copy)?;
    Ok(tok)
}

/// Where the example stream is, for a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataState {
    pub stream: StreamPosition,
    pub packer: Option<PackerState>,
    /// Examples made but not yet used.
    pub queued: Vec<(Vec<u32>, Vec<u32>)>,
}

enum Objective {
    Span(Box<SpanCorruptionPacker>),
    TextToText(TextToText),
}

/// Examples from a record stream through the tokenizer and the objective.
pub struct ExampleStream {
    records: RecordStream,
    objective: Objective,
    queue: VecDeque<Example>,
    tokenizer: T5Tokenizer,
}

impl ExampleStream {
    pub fn open(
        exp: &Experiment,
        records: &Path,
        tokenizer: &T5Tokenizer,
        split: Split,
        state: Option<DataState>,
    ) -> Result<Self> {
        let train = split == Split::Train;
        let opts = StreamOptions {
            seed: exp.train.seed,
            validation_fraction: exp.data.validation_fraction,
            split,
            block_size: SHUFFLE_BLOCK,
            repeat: train,
            shuffle: train,
        };
        let state = state.unwrap_or_default();
        let stream = RecordStream::open(records, opts, state.stream)?;
        let eos = tokenizer.eos_id();
        let objective = match exp.objective.kind {
            ObjectiveKind::SpanCorruption => {
                let obj = SpanCorruption::new(
                    exp.objective.input_length,
                    exp.objective.noise_density,
                    exp.objective.mean_noise_span_length,
                    eos,
                    tokenizer.sentinel_ids().to_vec(),
                )?;
                // Validation examples are drawn from another seed, so that
                // they do not share masks with training examples.
                let seed = exp.train.seed ^ if train { 0 } else { 0x5EED };
                let mut packer = SpanCorruptionPacker::new(obj, seed);
                if let Some(p) = state.packer {
                    packer.restore(p)?;
                }
                Objective::Span(Box::new(packer))
            }
            ObjectiveKind::TextToText => Objective::TextToText(TextToText {
                prefix: exp.objective.task_prefix.clone().unwrap_or_default(),
                input_length: exp.objective.input_length,
                target_length: exp
                    .objective
                    .target_length
                    .unwrap_or(exp.objective.input_length),
                eos_id: eos,
            }),
        };
        Ok(Self {
            records: stream,
            objective,
            queue: state
                .queued
                .into_iter()
                .map(|(input, target)| Example { input, target })
                .collect(),
            tokenizer: tokenizer.clone(),
        })
    }

    /// The length of the decoder targets span corruption makes.
    pub fn target_length(&self) -> Option<usize> {
        match &self.objective {
            Objective::Span(p) => Some(p.objective().target_length()),
            Objective::TextToText(_) => None,
        }
    }

    /// The next example; `None` at the end of a stream that does not repeat.
    pub fn next_example(&mut self) -> Result<Option<Example>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let Some(record) = self.records.next_record()? else {
                return Ok(None);
            };
            match (&mut self.objective, record) {
                (Objective::Span(packer), rec) => {
                    for text in record_texts(&rec) {
                        let ids = self.tokenizer.encode_no_eos(text)?;
                        for ex in packer.push(&ids)? {
                            self.queue.push_back(Example {
                                input: ex.inputs,
                                target: ex.targets,
                            });
                        }
                    }
                }
                (Objective::TextToText(t2t), Record::Pair { input, target }) => {
                    let tok = &self.tokenizer;
                    let ex = t2t.example(&input, &target, |s| tok.encode_no_eos(s))?;
                    self.queue.push_back(ex);
                }
                (Objective::TextToText(_), Record::Text { .. }) => {
                    return Err(Error::Invalid(
                        "the text-to-text objective needs (input, target) pairs, but the data holds plain documents: use TSV, JSONL with input/target fields, or the span-corruption objective".into(),
                    ));
                }
            }
        }
    }

    /// `n` examples, or fewer at the end of a finite stream.
    pub fn take(&mut self, n: usize) -> Result<Vec<Example>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_example()? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }

    pub fn state(&self) -> DataState {
        DataState {
            stream: self.records.position(),
            packer: match &self.objective {
                Objective::Span(p) => Some(p.state()),
                Objective::TextToText(_) => None,
            },
            queued: self
                .queue
                .iter()
                .map(|e| (e.input.clone(), e.target.clone()))
                .collect(),
        }
    }
}
