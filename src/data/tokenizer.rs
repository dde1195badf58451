//! T5's tokenizer: a SentencePiece-style Unigram model, trained here with
//! the `tokenizers` crate or loaded from any T5 `tokenizer.json`, Hugging
//! Face's own included.
//!
//! The layout mirrors the `tokenizer.json` of Google's T5 checkpoints:
//!
//! - ids: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, then the learned pieces by
//!   descending score, then the sentinels from `<extra_id_{N-1}>` up to
//!   `<extra_id_0>`, which is the highest id of all (`vocab_size - 1`);
//! - normalizer: NFKC, every run of whitespace to one space, trimmed (T5
//!   ships SentencePiece's precompiled NMT-NFKC charsmap instead, which is
//!   NFKC plus a few NMT rules);
//! - pre-tokenizer: `WhitespaceSplit` then `Metaspace` (`▁`, prepended to
//!   every word, split on spaces); decoder: `Metaspace`;
//! - post-processor: `$A </s>` and `$A </s> $B </s>`;
//! - the special tokens and sentinels as added tokens, `special: true`, so
//!   that a sentinel written in the text is one token and `decode` drops
//!   them.
//!
//! Training is deterministic: the words go to the trainer sorted, the
//! Unigram EM runs on one thread, and the pieces the trainer orders by hash
//! are put in a fixed order, so the same text and settings give the same
//! `tokenizer.json` on any machine. (One thread is slower on a large
//! corpus; sampling the text, as SentencePiece does, is the remedy.)

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::normalizers::{
    NormalizerWrapper, Replace, Sequence as NormalizerSequence, Strip, NFKC,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, ModelWrapper, OffsetReferential, OffsetType, PreTokenizer, Tokenizer,
};

use crate::error::{Error, Result};

/// The padding token, id 0 (also the decoder's start token in T5).
pub const PAD_TOKEN: &str = "<pad>";
/// The end-of-sequence token, id 1, appended to every encoded text.
pub const EOS_TOKEN: &str = "</s>";
/// The unknown token, id 2.
pub const UNK_TOKEN: &str = "<unk>";
/// T5's default number of sentinels (`<extra_id_0>` … `<extra_id_99>`).
pub const DEFAULT_EXTRA_IDS: usize = 100;
/// SentencePiece's (and the Unigram trainer's) longest piece, in characters.
pub const MAX_PIECE_LENGTH: usize = 16;

/// The name of the `i`-th sentinel: `<extra_id_{i}>`.
pub fn sentinel_token(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// The vocabulary size of a model for a tokenizer of `tokenizer_vocab`
/// tokens: rounded up to a multiple of 128, as T5's checkpoints do (32100
/// tokens, 32128 embeddings), which keeps the matrices friendly to GPUs.
pub fn model_vocab_size(tokenizer_vocab: usize) -> usize {
    tokenizer_vocab.div_ceil(128) * 128
}

/// A T5 tokenizer: `tokenizers`' own `Tokenizer` plus the ids T5 relies on.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    eos_id: u32,
    unk_id: u32,
    /// `sentinels[i]` is the id of `<extra_id_{i}>`.
    sentinels: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .field("num_sentinels", &self.sentinels.len())
            .finish()
    }
}

/// Counts the words (pre-tokenized pieces) of the training text.
struct WordCounter {
    /// A tokenizer with the final pipeline and the special tokens, whose
    /// model is not used: it only normalizes and splits.
    pipeline: Tokenizer,
    counts: HashMap<String, u32>,
}

impl WordCounter {
    fn new(pipeline: Tokenizer) -> Self {
        WordCounter {
            pipeline,
            counts: HashMap::new(),
        }
    }

    fn add(&mut self, text: &str) -> Result<()> {
        // Special tokens written in the text are cut out first, as when
        // encoding, and are not learned as words.
        let mut pretokenized = self
            .pipeline
            .get_added_vocabulary()
            .extract_and_normalize(self.pipeline.get_normalizer(), text);
        if let Some(pre_tokenizer) = self.pipeline.get_pre_tokenizer() {
            pre_tokenizer
                .pre_tokenize(&mut pretokenized)
                .map_err(|e| Error::Other(format!("tokenizer: cannot split the text: {e}")))?;
        }
        for (word, _, tokens) in
            pretokenized.get_splits(OffsetReferential::Original, OffsetType::None)
        {
            if tokens.is_some() || word.is_empty() {
                continue;
            }
            match self.counts.get_mut(word) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    self.counts.insert(word.to_owned(), 1);
                }
            }
        }
        Ok(())
    }
}

impl T5Tokenizer {
    /// Trains a Unigram tokenizer on `texts` (documents or lines of cleaned
    /// text, streamed once) with `vocab_size` tokens in all: the 3 special
    /// tokens, the learned pieces and `extra_ids` sentinels.
    pub fn train<I, S>(texts: I, vocab_size: usize, extra_ids: usize) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        check_sizes(vocab_size, extra_ids)?;
        let mut counter = WordCounter::new(pipeline(
            ModelWrapper::Unigram(Unigram::default()),
            extra_ids,
        ));
        for text in texts {
            counter.add(text.as_ref())?;
        }
        Self::train_counted(counter, vocab_size, extra_ids)
    }

    /// Trains like [`T5Tokenizer::train`] on the lines of text files (UTF-8,
    /// one sentence or document a line, as SentencePiece reads them).
    pub fn train_files<P: AsRef<Path>>(
        paths: &[P],
        vocab_size: usize,
        extra_ids: usize,
    ) -> Result<Self> {
        check_sizes(vocab_size, extra_ids)?;
        if paths.is_empty() {
            return Err(Error::Invalid(
                "no files to train the tokenizer on: give at least one text file".into(),
            ));
        }
        let mut counter = WordCounter::new(pipeline(
            ModelWrapper::Unigram(Unigram::default()),
            extra_ids,
        ));
        for path in paths {
            let path = path.as_ref();
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| Error::io(path, e))?;
                counter.add(&line)?;
            }
        }
        Self::train_counted(counter, vocab_size, extra_ids)
    }

    fn train_counted(counter: WordCounter, vocab_size: usize, extra_ids: usize) -> Result<Self> {
        let counts = counter.counts;
        if counts.is_empty() {
            return Err(Error::Invalid(
                "no text to train the tokenizer on: the training text is empty or only whitespace"
                    .into(),
            ));
        }
        // Sorted, so that training does not depend on hash order.
        let mut words: Vec<(String, u32)> = counts.into_iter().collect();
        words.sort_unstable();

        let mut char_counts: HashMap<char, u64> = HashMap::new();
        for (word, n) in &words {
            for c in word.chars() {
                *char_counts.entry(c).or_default() += u64::from(*n);
            }
        }
        let distinct_chars = char_counts.len();
        let learned = vocab_size - extra_ids;
        // The trainer keeps every character of the text as a piece.
        if distinct_chars + 3 > learned {
            return Err(Error::Invalid(format!(
                "vocab_size {vocab_size} is too small for this text: it has {distinct_chars} \
                 distinct characters (with `▁`), which with the 3 special tokens and \
                 {extra_ids} sentinels need a vocab_size of at least {}",
                distinct_chars + 3 + extra_ids
            )));
        }

        let trainer = UnigramTrainer::builder()
            .show_progress(false)
            .vocab_size(learned as u32)
            .special_tokens(vec![
                AddedToken::from(PAD_TOKEN, true),
                AddedToken::from(EOS_TOKEN, true),
                AddedToken::from(UNK_TOKEN, true),
            ])
            .unk_token(Some(UNK_TOKEN.to_string()))
            .max_piece_length(MAX_PIECE_LENGTH)
            .build()
            .map_err(|e| Error::Other(format!("tokenizer trainer: {e}")))?;
        // On a pool of one thread: the EM sums floats over chunks of words,
        // and both the chunks and the order of the sums follow the number
        // of threads, which would make the pieces depend on the machine.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "tokenizer-training".into())
            .build()
            .map_err(|e| Error::Other(format!("tokenizer training: cannot start a thread: {e}")))?;
        let mut model = Unigram::default();
        pool.install(|| trainer.do_train(words, &mut model))
            .map_err(|e| Error::Other(format!("tokenizer training failed: {e}")))?;

        let mut vocab: Vec<(String, f64)> = model.iter().map(|(p, s)| (p.clone(), *s)).collect();
        canonical_order(&mut vocab[3..], &char_counts);
        if vocab.len() != learned {
            return Err(Error::Invalid(format!(
                "the training text is too small for vocab_size {vocab_size}: only {} pieces \
                 could be learned besides the {extra_ids} sentinels (a vocab_size of at most {} \
                 fits this text); give more text or a smaller vocab_size",
                vocab.len(),
                vocab.len() + extra_ids
            )));
        }
        // Sentinels last, `<extra_id_0>` highest, as T5's converter lays them.
        vocab.extend((0..extra_ids).rev().map(|i| (sentinel_token(i), 0.0)));
        let model = Unigram::from(vocab, Some(2), false)
            .map_err(|e| Error::Other(format!("tokenizer: cannot build the model: {e}")))?;
        let mut tokenizer = pipeline(ModelWrapper::Unigram(model), extra_ids);
        tokenizer.with_post_processor(Some(eos_template(1)?));
        Self::from_tokenizer(tokenizer).map_err(|m| Error::Other(format!("tokenizer: {m}")))
    }

    /// Loads a `tokenizer.json`: one written by [`T5Tokenizer::save`] or any
    /// T5 tokenizer from Hugging Face. Padding and truncation stored in the
    /// file are switched off: the data pipeline does its own.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            return Err(tokenizer_error(
                path,
                format!("is not a tokenizer.json: not valid JSON ({e})"),
            ));
        }
        let inner: Tokenizer = text.parse().map_err(|e| {
            tokenizer_error(
                path,
                format!("is not a tokenizer.json the `tokenizers` library can read: {e}"),
            )
        })?;
        Self::from_tokenizer(inner).map_err(|m| tokenizer_error(path, m))
    }

    /// Wraps a `tokenizers::Tokenizer` that has T5's special tokens and at
    /// least one sentinel.
    pub fn from_tokenizer(mut inner: Tokenizer) -> std::result::Result<Self, String> {
        let missing: Vec<&str> = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
            .into_iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "is not a T5 tokenizer: it has no {} token (T5 needs <pad>, </s> and <unk>)",
                missing.join(", ")
            ));
        }
        let id = |t: &str| inner.token_to_id(t).unwrap_or_default();
        let (pad_id, eos_id, unk_id) = (id(PAD_TOKEN), id(EOS_TOKEN), id(UNK_TOKEN));
        let sentinels: Vec<u32> = (0..)
            .map_while(|i| inner.token_to_id(&sentinel_token(i)))
            .collect();
        if sentinels.is_empty() {
            return Err(
                "is not a T5 tokenizer: it has no sentinel tokens (<extra_id_0>, <extra_id_1>, …)"
                    .into(),
            );
        }
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| format!("cannot switch truncation off: {e}"))?;
        Ok(T5Tokenizer {
            inner,
            pad_id,
            eos_id,
            unk_id,
            sentinels,
            vocab_size,
        })
    }

    /// Writes the tokenizer as a `tokenizer.json` (pretty-printed, as Hugging
    /// Face writes it) through a temporary file renamed into place.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.to_json()?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::Other(format!("tokenizer: cannot serialize: {e}")))
    }

    /// A `tokenizer_config.json` to write beside `tokenizer.json` so that
    /// `transformers`' `AutoTokenizer.from_pretrained` loads the file as it
    /// is. It names the generic `PreTrainedTokenizerFast` class on purpose:
    /// `T5Tokenizer` (transformers 5) rebuilds the pipeline from the vocab
    /// and keeps only a SentencePiece `Precompiled` normalizer, so it would
    /// drop this tokenizer's NFKC step and encode full-width text otherwise.
    pub fn hf_tokenizer_config(&self) -> serde_json::Value {
        let sentinels: Vec<String> = (0..self.sentinels.len()).map(sentinel_token).collect();
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": UNK_TOKEN,
            "additional_special_tokens": sentinels,
            "clean_up_tokenization_spaces": false,
        })
    }

    /// The ids of `text` followed by `</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_no_eos(text)?;
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// The ids of `text` alone, without `</s>`.
    pub fn encode_no_eos(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Other(format!("tokenizer: cannot encode the text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The pieces `text` is cut into (without `</s>`), for display.
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Other(format!("tokenizer: cannot encode the text: {e}")))?;
        Ok(encoding.get_tokens().to_vec())
    }

    /// The text of `ids`, without the special tokens and sentinels. Ids past
    /// the tokenizer's vocabulary (a model's padded rows) are skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Other(format!("tokenizer: cannot decode: {e}")))
    }

    /// The text of `ids` with the special tokens and sentinels written out
    /// (`<extra_id_0>`, `</s>`, …): what a span-corruption target looks like.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Other(format!("tokenizer: cannot decode: {e}")))
    }

    /// `text` after normalization, special tokens left out: what
    /// `decode(encode(text))` gives back when every character of it is in
    /// the vocabulary.
    pub fn normalize(&self, text: &str) -> String {
        let pretokenized = self
            .inner
            .get_added_vocabulary()
            .extract_and_normalize(self.inner.get_normalizer(), text);
        pretokenized
            .get_splits(OffsetReferential::Normalized, OffsetType::None)
            .into_iter()
            .filter(|(_, _, tokens)| tokens.is_none())
            .flat_map(|(s, _, _)| s.split_whitespace())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Number of ids: one past the highest id, sentinels included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// The id of `<extra_id_{i}>`.
    ///
    /// # Panics
    /// If `i >= self.num_sentinels()`.
    pub fn sentinel_id(&self, i: usize) -> u32 {
        match self.sentinels.get(i) {
            Some(&id) => id,
            None => panic!(
                "sentinel {i} asked of a tokenizer with {} sentinels",
                self.sentinels.len()
            ),
        }
    }

    /// The sentinel ids, `<extra_id_0>` first.
    pub fn sentinel_ids(&self) -> &[u32] {
        &self.sentinels
    }

    pub fn num_sentinels(&self) -> usize {
        self.sentinels.len()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Puts the learned pieces in an order that does not depend on hash order.
///
/// The trainer gives every character of the text that its EM dropped a
/// score just above the lowest, `min + k * 0.0001` for k = 0, 1, …, in the
/// iteration order of a randomly seeded hash set, and keeps pieces of equal
/// score in that order too. Here those characters get the same scores
/// again, the most frequent the highest, and pieces of equal score are
/// ordered by their text.
fn canonical_order(pieces: &mut [(String, f64)], char_counts: &HashMap<char, u64>) {
    const PENALTY_STEP: f64 = 0.0001; // the trainer's `min_score_penalty_delta`
    let single_char = |p: &str| {
        let mut chars = p.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    };
    let Some(min) = pieces.iter().map(|(_, s)| *s).min_by(f64::total_cmp) else {
        return;
    };
    // The band of penalized characters: scores min + p_k, with p_k summed
    // the way the trainer sums it.
    let mut band: Vec<usize> = Vec::new();
    let mut penalty = 0.0;
    let mut scores = Vec::new();
    loop {
        let score = min + penalty;
        let before = band.len();
        band.extend(
            pieces
                .iter()
                .enumerate()
                .filter(|(_, (p, s))| *s == score && single_char(p).is_some())
                .map(|(i, _)| i),
        );
        if band.len() == before {
            break;
        }
        // The lowest learned piece may share the lowest score.
        scores.extend(std::iter::repeat_n(score, band.len() - before));
        penalty += PENALTY_STEP;
    }
    band.sort_by(|&a, &b| {
        let (ca, cb) = (single_char(&pieces[a].0), single_char(&pieces[b].0));
        let (na, nb) = (
            ca.and_then(|c| char_counts.get(&c)).copied().unwrap_or(0),
            cb.and_then(|c| char_counts.get(&c)).copied().unwrap_or(0),
        );
        nb.cmp(&na).then_with(|| pieces[a].0.cmp(&pieces[b].0))
    });
    // `scores` ascends; the most frequent character takes the highest.
    for (&i, &score) in band.iter().zip(scores.iter().rev()) {
        pieces[i].1 = score;
    }
    pieces.sort_by(|(pa, sa), (pb, sb)| sb.total_cmp(sa).then_with(|| pa.cmp(pb)));
}

fn tokenizer_error(path: &Path, message: String) -> Error {
    Error::Tokenizer {
        path: PathBuf::from(path),
        message,
    }
}

fn check_sizes(vocab_size: usize, extra_ids: usize) -> Result<()> {
    let special = 3 + extra_ids;
    if vocab_size <= special {
        return Err(Error::Invalid(format!(
            "tokenizer vocab_size {vocab_size} is too small: the 3 special tokens (<pad>, </s>, \
             <unk>) and {extra_ids} sentinels (extra_ids) alone take {special} ids; ask for more \
             than {special} (T5 uses 32100 with 100 sentinels)"
        )));
    }
    if vocab_size > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "tokenizer vocab_size {vocab_size} is too large: ids are 32-bit"
        )));
    }
    Ok(())
}

fn special_tokens(extra_ids: usize) -> Vec<AddedToken> {
    [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
        .into_iter()
        .map(String::from)
        .chain((0..extra_ids).rev().map(sentinel_token))
        .map(|t| AddedToken::from(t, true))
        .collect()
}

fn eos_template(eos_id: u32) -> Result<TemplateProcessing> {
    let build = || -> std::result::Result<TemplateProcessing, String> {
        TemplateProcessing::builder()
            .try_single("$A </s>")?
            .try_pair("$A </s> $B </s>")?
            .special_tokens(vec![(EOS_TOKEN, eos_id)])
            .build()
            .map_err(|e| e.to_string())
    };
    build().map_err(|e| Error::Other(format!("tokenizer: cannot build the template: {e}")))
}

/// A tokenizer with T5's normalizer, pre-tokenizer, decoder and special
/// tokens around `model`. The special tokens take the model's ids when it
/// has them (so build it with the final model, not a placeholder).
fn pipeline(model: ModelWrapper, extra_ids: usize) -> Tokenizer {
    let normalizer = NormalizerSequence::new(vec![
        NormalizerWrapper::NFKC(NFKC),
        NormalizerWrapper::Replace(whitespace_runs()),
        NormalizerWrapper::StripNormalizer(Strip::new(true, true)),
    ]);
    let pre_tokenizer = PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
        PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true)),
    ]);
    let decoder = DecoderWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true));
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(NormalizerWrapper::Sequence(normalizer)))
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)))
        .with_decoder(Some(decoder));
    tokenizer.add_special_tokens(&special_tokens(extra_ids));
    tokenizer
}

/// Every run of whitespace (spaces, tabs, newlines, NBSP, …) to one space,
/// as SentencePiece's `remove_extra_whitespaces` does.
fn whitespace_runs() -> Replace {
    // The pattern is a constant that compiles; a failure is a bug here.
    Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .expect("the whitespace pattern compiles")
}
