//! T5's span-corruption pretraining objective, as the T5 code does it
//! (`t5.data.preprocessors.span_corruption` and its helpers
//! `random_spans_helper`, `random_spans_noise_mask`,
//! `noise_span_to_unique_sentinel` and `nonnoise_span_to_unique_sentinel`),
//! with the packing of Hugging Face's `run_t5_mlm_flax.py` and nanoT5.
//!
//! One example takes `raw_length` tokens of the concatenated corpus, picks
//! noise spans with [`random_spans_noise_mask`], and produces
//!
//! ```text
//! raw:     a b c d e f g h i
//! mask:    . . X X . . . X X          (non-noise first, noise last)
//! inputs:  a b <s0> e f g <s1> </s>
//! targets: <s0> c d <s1> h i </s>
//! ```
//!
//! where `<s0>` is `<extra_id_0>`, the highest id of a T5 vocabulary, `<s1>`
//! is `<extra_id_1>` one below it, and so on. With
//! [`compute_input_and_target_lengths`] choosing `raw_length`, every example
//! has exactly `input_length` input ids and `target_length` target ids: no
//! padding.
//!
//! Rounding is Python's and NumPy's: halves go to the even neighbour
//! (`round(10.5) == 10`), in `f64`, as in the T5 length helper and in
//! `run_t5_mlm_flax.py` (T5's TensorFlow mask rounds the same way in `f32`).
//!
//! [`SpanCorruptionPacker`] is the streaming part: documents go in, examples
//! come out, and its [`PackerState`] (leftover tokens, seed, example count)
//! is all a checkpoint needs to continue with the next example.

use std::collections::{HashMap, HashSet, VecDeque};

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// T5's default share of noise tokens.
pub const DEFAULT_NOISE_DENSITY: f64 = 0.15;
/// T5's default mean length of a noise span.
pub const DEFAULT_MEAN_NOISE_SPAN_LENGTH: f64 = 3.0;

/// `compute_input_and_target_lengths` gives up when the raw length would be
/// more than this many times the input length (a noise density close to 1
/// with very long spans), rather than loop for minutes.
const MAX_RAW_PER_INPUT: usize = 64;

/// Python's `round`: to the nearest integer, halves to the even one.
fn round_half_even(x: f64) -> usize {
    // Callers pass finite, non-negative values; `as` saturates otherwise.
    x.round_ties_even() as usize
}

fn check_parameters(noise_density: f64, mean_noise_span_length: f64) -> Result<()> {
    if !(noise_density.is_finite() && (0.0..1.0).contains(&noise_density)) {
        return Err(Error::Invalid(format!(
            "span corruption: noise_density must be at least 0 and below 1, got {noise_density}"
        )));
    }
    if !(mean_noise_span_length.is_finite() && mean_noise_span_length >= 1.0) {
        return Err(Error::Invalid(format!(
            "span corruption: mean_noise_span_length must be at least 1, got {mean_noise_span_length}"
        )));
    }
    Ok(())
}

/// T5's `_tokens_length_to_inputs_length_targets_length`: the lengths (with
/// `</s>`) of the inputs and targets made from `tokens_length` raw tokens,
/// without the clamping that the mask itself applies.
fn helper_lengths(tokens_length: usize, noise_density: f64, mean: f64) -> (usize, usize) {
    let num_noise = round_half_even(tokens_length as f64 * noise_density).min(tokens_length);
    let num_nonnoise = tokens_length - num_noise;
    let num_spans = round_half_even(num_noise as f64 / mean);
    (num_nonnoise + num_spans + 1, num_noise + num_spans + 1)
}

/// T5's `random_spans_helper` (HF: `compute_input_and_target_lengths`): the
/// number of raw tokens to cut from the corpus for each example so that its
/// inputs (non-noise tokens, one sentinel per noise span, `</s>`) are exactly
/// `inputs_length` long, and the length of its targets (one sentinel per
/// span, the noise tokens, `</s>`).
///
/// Returns `(raw_tokens_length, targets_length)`; `(512, 0.15, 3.0)` gives
/// `(568, 114)`. As T5, the search starts at `inputs_length - 1` and, for a
/// noise density of exactly 0.5, shortens the raw length by one when the
/// targets would come out longer than the inputs.
///
/// Errors when `noise_density` is not in `[0, 1)` or
/// `mean_noise_span_length` is below 1, or when the raw length would exceed
/// 64 times `inputs_length`.
pub fn compute_input_and_target_lengths(
    inputs_length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
) -> Result<(usize, usize)> {
    check_parameters(noise_density, mean_noise_span_length)?;
    let limit = inputs_length
        .saturating_mul(MAX_RAW_PER_INPUT)
        .saturating_add(MAX_RAW_PER_INPUT);
    let lengths = |t| helper_lengths(t, noise_density, mean_noise_span_length);
    let mut tokens_length = inputs_length.saturating_sub(1);
    while lengths(tokens_length + 1).0 <= inputs_length {
        tokens_length += 1;
        if tokens_length > limit {
            return Err(Error::Invalid(format!(
                "span corruption: with noise_density {noise_density} and \
                 mean_noise_span_length {mean_noise_span_length}, an input of \
                 {inputs_length} tokens would need more than {limit} raw tokens"
            )));
        }
    }
    let (inputs, mut targets_length) = lengths(tokens_length);
    if noise_density == 0.5 && targets_length > inputs {
        tokens_length -= 1;
        targets_length -= 1;
    }
    Ok((tokens_length, targets_length))
}

/// The numbers of noise tokens and of noise spans that
/// [`random_spans_noise_mask`] uses for a sequence of `length >= 2` tokens.
fn noise_counts(length: usize, noise_density: f64, mean: f64) -> Result<(usize, usize)> {
    let num_noise = round_half_even(length as f64 * noise_density).clamp(1, length - 1);
    let num_spans = round_half_even(num_noise as f64 / mean).max(1);
    let num_nonnoise = length - num_noise;
    if num_spans > num_nonnoise {
        // T5's segmentation cannot split the non-noise tokens into that many
        // non-empty spans (its TensorFlow graph fails on a shape mismatch).
        return Err(Error::Invalid(format!(
            "span corruption: {num_spans} noise spans need at least {num_spans} non-noise \
             tokens, but a sequence of {length} tokens with noise_density {noise_density} \
             has {num_nonnoise}; lower noise_density or raise mean_noise_span_length"
        )));
    }
    Ok((num_noise, num_spans))
}

/// T5's `_random_segmentation`: splits `num_items` into `num_segments`
/// non-empty segments, every split equally likely (the cut points are a
/// uniform random subset of the `num_items - 1` gaps).
fn random_segmentation(num_items: usize, num_segments: usize, rng: &mut impl Rng) -> Vec<usize> {
    debug_assert!(1 <= num_segments && num_segments <= num_items);
    if num_segments <= 1 {
        return vec![num_items];
    }
    let mut cuts = rand::seq::index::sample(rng, num_items - 1, num_segments - 1).into_vec();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(num_segments);
    let mut start = 0;
    for cut in cuts {
        // A cut at gap `g` starts a new segment at item `g + 1`.
        lengths.push(cut + 1 - start);
        start = cut + 1;
    }
    lengths.push(num_items - start);
    lengths
}

/// T5's `random_spans_noise_mask`: `true` marks a noise token.
///
/// `num_noise = round(length * noise_density)` clamped to `[1, length - 1]`;
/// `num_spans = max(1, round(num_noise / mean_noise_span_length))`; the
/// noise tokens and the non-noise tokens are each split at random into
/// `num_spans` non-empty spans, which alternate starting with non-noise (so
/// the mask always ends with noise). As T5, a length below 2 is computed as
/// 2 and cut back: `length` 0 gives an empty mask, 1 gives `[false]`.
///
/// Errors on parameters outside `noise_density` in `[0, 1)` and
/// `mean_noise_span_length >= 1`, and when there would be more spans than
/// non-noise tokens (where T5 itself fails).
pub fn random_spans_noise_mask(
    length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
    rng: &mut impl Rng,
) -> Result<Vec<bool>> {
    check_parameters(noise_density, mean_noise_span_length)?;
    let padded = length.max(2);
    let (num_noise, num_spans) = noise_counts(padded, noise_density, mean_noise_span_length)?;
    let noise_spans = random_segmentation(num_noise, num_spans, rng);
    let nonnoise_spans = random_segmentation(padded - num_noise, num_spans, rng);
    let mut mask = Vec::with_capacity(padded);
    for (&nonnoise, &noise) in nonnoise_spans.iter().zip(&noise_spans) {
        mask.extend(std::iter::repeat_n(false, nonnoise));
        mask.extend(std::iter::repeat_n(true, noise));
    }
    mask.truncate(length);
    Ok(mask)
}

/// T5's `noise_span_to_unique_sentinel`: each run of noise tokens becomes
/// one sentinel, the `i`-th run `sentinel_ids[i]`; non-noise tokens stay.
pub fn noise_span_to_unique_sentinel(
    tokens: &[u32],
    noise_mask: &[bool],
    sentinel_ids: &[u32],
) -> Result<Vec<u32>> {
    if tokens.len() != noise_mask.len() {
        return Err(Error::Invalid(format!(
            "span corruption: {} tokens but a noise mask of {}",
            tokens.len(),
            noise_mask.len()
        )));
    }
    let mut out = Vec::with_capacity(tokens.len());
    let mut spans = 0;
    let mut prev_noise = false;
    for (&token, &noise) in tokens.iter().zip(noise_mask) {
        if !noise {
            out.push(token);
        } else if !prev_noise {
            let sentinel = sentinel_ids.get(spans).ok_or_else(|| {
                Error::Invalid(format!(
                    "span corruption: more than {} spans but only {} sentinel ids",
                    sentinel_ids.len(),
                    sentinel_ids.len()
                ))
            })?;
            out.push(*sentinel);
            spans += 1;
        }
        prev_noise = noise;
    }
    Ok(out)
}

/// T5's `nonnoise_span_to_unique_sentinel`: the same with the mask
/// inverted, so each run of non-noise tokens becomes one sentinel and the
/// noise tokens stay.
pub fn nonnoise_span_to_unique_sentinel(
    tokens: &[u32],
    noise_mask: &[bool],
    sentinel_ids: &[u32],
) -> Result<Vec<u32>> {
    let inverted: Vec<bool> = noise_mask.iter().map(|&noise| !noise).collect();
    noise_span_to_unique_sentinel(tokens, &inverted, sentinel_ids)
}

/// One span-corruption example, both sides ending in `</s>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanCorruptionExample {
    /// Non-noise tokens, each noise span replaced by its sentinel.
    pub inputs: Vec<u32>,
    /// Each non-noise span replaced by its sentinel, followed by the noise
    /// tokens: `<s0> noise_0 <s1> noise_1 … </s>`.
    pub targets: Vec<u32>,
}

/// Applies a noise mask to `raw` as T5's `denoise` does for span
/// corruption: inputs from [`noise_span_to_unique_sentinel`], targets from
/// [`nonnoise_span_to_unique_sentinel`], `eos_id` appended to each.
pub fn corrupt_spans(
    raw: &[u32],
    noise_mask: &[bool],
    sentinel_ids: &[u32],
    eos_id: u32,
) -> Result<SpanCorruptionExample> {
    let mut inputs = noise_span_to_unique_sentinel(raw, noise_mask, sentinel_ids)?;
    let mut targets = nonnoise_span_to_unique_sentinel(raw, noise_mask, sentinel_ids)?;
    inputs.push(eos_id);
    targets.push(eos_id);
    Ok(SpanCorruptionExample { inputs, targets })
}

/// Rebuilds the raw tokens of an example from its inputs and targets: each
/// sentinel in the inputs is replaced by the tokens that follow the same
/// sentinel in the targets. Both sides must end in `eos_id`, and the targets
/// must start with a sentinel (as every mask of [`random_spans_noise_mask`]
/// starts with non-noise).
///
/// Exact as long as the raw tokens contain no sentinel id; a sentinel id in
/// the raw text is as ambiguous here as it is to a T5 model.
pub fn reconstruct(
    inputs: &[u32],
    targets: &[u32],
    sentinel_ids: &[u32],
    eos_id: u32,
) -> Result<Vec<u32>> {
    let strip = |side: &[u32], name: &str| -> Result<Vec<u32>> {
        match side.split_last() {
            Some((&last, rest)) if last == eos_id => Ok(rest.to_vec()),
            _ => Err(Error::Invalid(format!(
                "span corruption: the {name} do not end in </s> (id {eos_id})"
            ))),
        }
    };
    let inputs = strip(inputs, "inputs")?;
    let targets = strip(targets, "targets")?;
    let is_sentinel: HashSet<u32> = sentinel_ids.iter().copied().collect();

    let mut noise_of: HashMap<u32, &[u32]> = HashMap::new();
    let mut rest = targets.as_slice();
    while let Some((&sentinel, after)) = rest.split_first() {
        if !is_sentinel.contains(&sentinel) {
            return Err(Error::Invalid(format!(
                "span corruption: the targets hold token {sentinel} where a sentinel should be"
            )));
        }
        let end = after
            .iter()
            .position(|t| is_sentinel.contains(t))
            .unwrap_or(after.len());
        noise_of.insert(sentinel, &after[..end]);
        rest = &after[end..];
    }

    let mut raw = Vec::with_capacity(inputs.len() + targets.len());
    for &token in &inputs {
        if is_sentinel.contains(&token) {
            let noise = noise_of.get(&token).ok_or_else(|| {
                Error::Invalid(format!(
                    "span corruption: sentinel {token} is in the inputs but not in the targets"
                ))
            })?;
            raw.extend_from_slice(noise);
        } else {
            raw.push(token);
        }
    }
    Ok(raw)
}

/// T5's sentinel ids for a vocabulary of `vocab_size` ids: `<extra_id_i>` is
/// `vocab_size - 1 - i`, for `i` in `0..count`. (For a Hugging Face T5
/// tokenizer, `vocab_size` is `len(tokenizer)`, 32100 for the original
/// vocabulary; look the ids up in the tokenizer when in doubt.)
pub fn t5_sentinel_ids(vocab_size: u32, count: usize) -> Result<Vec<u32>> {
    if count > vocab_size as usize {
        return Err(Error::Invalid(format!(
            "span corruption: {count} sentinels do not fit in a vocabulary of {vocab_size}"
        )));
    }
    Ok((0..count as u32).map(|i| vocab_size - 1 - i).collect())
}

/// The span-corruption objective for one configuration: lengths, noise and
/// the ids it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanCorruption {
    input_length: usize,
    target_length: usize,
    raw_length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
    num_noise_spans: usize,
    eos_id: u32,
    sentinel_ids: Vec<u32>,
    eos_after_document: bool,
}

impl SpanCorruption {
    /// The objective whose examples have exactly `input_length` input ids.
    ///
    /// `sentinel_ids[i]` is the id of `<extra_id_i>` (see
    /// [`t5_sentinel_ids`]). Errors, each in one sentence, when the
    /// parameters are out of range, when `input_length` is too short for
    /// T5's length formula and T5's mask to agree (T5 would pad or cut the
    /// example; this crate promises exact lengths), when there are fewer
    /// sentinels than noise spans per example, when sentinel ids repeat, or
    /// when `eos_id` is a sentinel.
    pub fn new(
        input_length: usize,
        noise_density: f64,
        mean_noise_span_length: f64,
        eos_id: u32,
        sentinel_ids: Vec<u32>,
    ) -> Result<Self> {
        let (raw_length, target_length) =
            compute_input_and_target_lengths(input_length, noise_density, mean_noise_span_length)?;
        let settings = format!(
            "span corruption with input_length {input_length}, noise_density {noise_density} \
             and mean_noise_span_length {mean_noise_span_length}"
        );
        if raw_length < 2 {
            return Err(Error::Invalid(format!(
                "{settings}: an example would hold {raw_length} raw tokens; \
                 it needs at least 2 (choose a longer input_length)"
            )));
        }
        let (num_noise, num_noise_spans) =
            noise_counts(raw_length, noise_density, mean_noise_span_length)?;
        let actual = (
            raw_length - num_noise + num_noise_spans + 1,
            num_noise + num_noise_spans + 1,
        );
        if actual != (input_length, target_length) {
            return Err(Error::Invalid(format!(
                "{settings}: T5's length formula cuts {raw_length} raw tokens for \
                 {input_length} inputs and {target_length} targets, but its noise mask \
                 then gives {} inputs and {} targets (T5 would pad or cut them); \
                 choose a longer input_length or other noise settings",
                actual.0, actual.1
            )));
        }
        if sentinel_ids.len() < num_noise_spans {
            return Err(Error::Invalid(format!(
                "{settings}: each example has {num_noise_spans} noise spans but only {} \
                 sentinel ids were given",
                sentinel_ids.len()
            )));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = sentinel_ids.iter().find(|&&id| !seen.insert(id)) {
            return Err(Error::Invalid(format!(
                "span corruption: sentinel id {dup} is given twice"
            )));
        }
        if seen.contains(&eos_id) {
            return Err(Error::Invalid(format!(
                "span corruption: the </s> id {eos_id} is also a sentinel id"
            )));
        }
        Ok(Self {
            input_length,
            target_length,
            raw_length,
            noise_density,
            mean_noise_span_length,
            num_noise_spans,
            eos_id,
            sentinel_ids,
            eos_after_document: true,
        })
    }

    /// T5's defaults: noise density 0.15, mean noise span length 3.
    pub fn t5_defaults(input_length: usize, eos_id: u32, sentinel_ids: Vec<u32>) -> Result<Self> {
        Self::new(
            input_length,
            DEFAULT_NOISE_DENSITY,
            DEFAULT_MEAN_NOISE_SPAN_LENGTH,
            eos_id,
            sentinel_ids,
        )
    }

    /// Whether the packer appends `</s>` to each document before
    /// concatenating (default `true`, as Hugging Face's `run_t5_mlm_flax.py`
    /// and nanoT5 do, their tokenizer appending `</s>` to every text).
    /// `false` concatenates documents back to back, as the original T5
    /// pipeline does (it adds `</s>` only after corruption).
    pub fn with_eos_after_document(mut self, append: bool) -> Self {
        self.eos_after_document = append;
        self
    }

    /// Encoder length of every example (with `</s>`).
    pub fn input_length(&self) -> usize {
        self.input_length
    }
    /// Decoder length of every example (with `</s>`).
    pub fn target_length(&self) -> usize {
        self.target_length
    }
    /// Raw corpus tokens consumed by one example.
    pub fn raw_length(&self) -> usize {
        self.raw_length
    }
    pub fn noise_density(&self) -> f64 {
        self.noise_density
    }
    pub fn mean_noise_span_length(&self) -> f64 {
        self.mean_noise_span_length
    }
    /// Noise spans (and sentinels) in every example.
    pub fn num_noise_spans(&self) -> usize {
        self.num_noise_spans
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn sentinel_ids(&self) -> &[u32] {
        &self.sentinel_ids
    }
    pub fn eos_after_document(&self) -> bool {
        self.eos_after_document
    }

    /// The noise mask for `length` raw tokens with this objective's noise.
    pub fn noise_mask(&self, length: usize, rng: &mut impl Rng) -> Result<Vec<bool>> {
        random_spans_noise_mask(length, self.noise_density, self.mean_noise_span_length, rng)
    }

    /// Corrupts one sequence of raw tokens. With `raw.len() ==
    /// raw_length()` the example has exactly `input_length()` inputs and
    /// `target_length()` targets; other lengths work too (tests, evaluation),
    /// with lengths that follow from the mask.
    pub fn corrupt(&self, raw: &[u32], rng: &mut impl Rng) -> Result<SpanCorruptionExample> {
        let mask = self.noise_mask(raw.len(), rng)?;
        corrupt_spans(raw, &mask, &self.sentinel_ids, self.eos_id)
    }

    /// [`reconstruct`] with this objective's ids.
    pub fn reconstruct(&self, example: &SpanCorruptionExample) -> Result<Vec<u32>> {
        reconstruct(
            &example.inputs,
            &example.targets,
            &self.sentinel_ids,
            self.eos_id,
        )
    }
}

/// Everything a [`SpanCorruptionPacker`] needs to continue exactly where it
/// was: restore it into a packer of the same objective and the next example
/// is the one an uninterrupted packer would have produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackerState {
    /// The seed the packer was created with.
    pub seed: u64,
    /// Examples produced so far; example `n` draws its mask from ChaCha8
    /// stream `n` of the seed.
    pub examples: u64,
    /// The raw length of the objective, checked on restore.
    pub raw_length: usize,
    /// Tokens pushed but not yet in an example (with the `</s>` separators).
    pub pending: Vec<u32>,
}

/// Streams documents into span-corruption examples: documents are
/// concatenated (each followed by `</s>` unless the objective says
/// otherwise) and cut into chunks of `raw_length()` tokens, each chunk one
/// example. It holds only the tokens not yet in an example; the tail of the
/// corpus shorter than one chunk never becomes an example.
///
/// ```text
/// for doc in documents {
///     packer.push_document(&doc);
///     while let Some(example) = packer.next_example()? { … }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SpanCorruptionPacker {
    objective: SpanCorruption,
    seed: u64,
    examples: u64,
    pending: VecDeque<u32>,
}

impl SpanCorruptionPacker {
    pub fn new(objective: SpanCorruption, seed: u64) -> Self {
        Self {
            objective,
            seed,
            examples: 0,
            pending: VecDeque::new(),
        }
    }

    pub fn objective(&self) -> &SpanCorruption {
        &self.objective
    }

    /// Appends a document's token ids (without `</s>`; the packer appends
    /// it when the objective says so). Empty documents are skipped, as T5
    /// filters them.
    pub fn push_document(&mut self, document: &[u32]) {
        if document.is_empty() {
            return;
        }
        self.pending.extend(document);
        if self.objective.eos_after_document {
            self.pending.push_back(self.objective.eos_id);
        }
    }

    /// The next example, once a full chunk of raw tokens is pending.
    pub fn next_example(&mut self) -> Result<Option<SpanCorruptionExample>> {
        let n = self.objective.raw_length;
        if self.pending.len() < n {
            return Ok(None);
        }
        let raw: Vec<u32> = self.pending.drain(..n).collect();
        let mut rng = example_rng(self.seed, self.examples);
        let example = self.objective.corrupt(&raw, &mut rng)?;
        self.examples += 1;
        Ok(Some(example))
    }

    /// [`push_document`](Self::push_document), then every example that is
    /// complete.
    pub fn push(&mut self, document: &[u32]) -> Result<Vec<SpanCorruptionExample>> {
        self.push_document(document);
        let mut out = Vec::with_capacity(self.pending.len() / self.objective.raw_length);
        while let Some(example) = self.next_example()? {
            out.push(example);
        }
        Ok(out)
    }

    /// Tokens pushed but not yet in an example.
    pub fn pending_tokens(&self) -> usize {
        self.pending.len()
    }

    /// Examples produced so far.
    pub fn examples_produced(&self) -> u64 {
        self.examples
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> PackerState {
        PackerState {
            seed: self.seed,
            examples: self.examples,
            raw_length: self.objective.raw_length,
            pending: self.pending.iter().copied().collect(),
        }
    }

    /// Continues from a saved state. Errors when the state comes from an
    /// objective with another raw length.
    pub fn restore(&mut self, state: PackerState) -> Result<()> {
        if state.raw_length != self.objective.raw_length {
            return Err(Error::Invalid(format!(
                "span corruption: the saved packer state cuts {} raw tokens per example \
                 but this objective cuts {}; resume with the configuration it was saved with",
                state.raw_length, self.objective.raw_length
            )));
        }
        self.seed = state.seed;
        self.examples = state.examples;
        self.pending = state.pending.into();
        Ok(())
    }
}

/// The generator of example `index`: ChaCha8 seeded from `seed`, on stream
/// `index`, so every example's randomness depends only on the seed and its
/// position.
fn example_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn sentinels_descend_from_the_top_of_the_vocabulary() {
        let sentinels = t5_sentinel_ids(32100, 100).unwrap();
        assert_eq!(sentinels[0], 32099); // <extra_id_0>
        assert_eq!(sentinels[1], 32098);
        assert_eq!(sentinels[99], 32000);

        // The first noise span gets <extra_id_0>, the second <extra_id_1>.
        let raw = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mask = [false, false, true, true, false, false, false, true, true];
        let ex = corrupt_spans(&raw, &mask, &sentinels, 1).unwrap();
        assert_eq!(ex.inputs, vec![1, 2, 32099, 5, 6, 7, 32098, 1]);
        assert_eq!(ex.targets, vec![32099, 3, 4, 32098, 8, 9, 1]);
        assert_eq!(
            reconstruct(&ex.inputs, &ex.targets, &sentinels, 1).unwrap(),
            raw
        );
    }

    #[test]
    fn objective_examples_use_extra_id_0_first() {
        let sentinels = t5_sentinel_ids(1000, 100).unwrap();
        let objective = SpanCorruption::t5_defaults(64, 1, sentinels).unwrap();
        let raw: Vec<u32> = (10..10 + objective.raw_length() as u32).collect();
        let ex = objective.corrupt(&raw, &mut rng(7)).unwrap();
        let in_sentinels: Vec<u32> = ex.inputs.iter().copied().filter(|&t| t >= 900).collect();
        let tg_sentinels: Vec<u32> = ex.targets.iter().copied().filter(|&t| t >= 900).collect();
        let expected: Vec<u32> = (0..objective.num_noise_spans() as u32)
            .map(|i| 999 - i)
            .collect();
        assert_eq!(in_sentinels, expected);
        assert_eq!(tg_sentinels, expected);
        assert_eq!(ex.targets[0], 999);
    }

    #[test]
    fn too_few_sentinels_is_an_error() {
        // 512 inputs at the defaults: 28 noise spans per example.
        let err = SpanCorruption::t5_defaults(512, 1, t5_sentinel_ids(32100, 27).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("28 noise spans"), "{err}");
        assert!(SpanCorruption::t5_defaults(512, 1, t5_sentinel_ids(32100, 28).unwrap()).is_ok());

        // And at the level of one sequence.
        let raw = [5, 6, 7, 8];
        let mask = [false, true, false, true];
        let err = corrupt_spans(&raw, &mask, &[99], 1).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }

    #[test]
    fn bad_sentinels_and_parameters_are_errors() {
        let s = t5_sentinel_ids(100, 10).unwrap();
        let mut dup = s.clone();
        dup[3] = dup[0];
        assert!(SpanCorruption::t5_defaults(64, 1, dup).is_err());
        assert!(SpanCorruption::t5_defaults(64, 99, s.clone()).is_err());
        assert!(SpanCorruption::new(64, 1.0, 3.0, 1, s.clone()).is_err());
        assert!(SpanCorruption::new(64, -0.1, 3.0, 1, s.clone()).is_err());
        assert!(SpanCorruption::new(64, f64::NAN, 3.0, 1, s.clone()).is_err());
        assert!(SpanCorruption::new(64, 0.15, 0.5, 1, s.clone()).is_err());
        assert!(SpanCorruption::new(64, 0.15, f64::INFINITY, 1, s).is_err());
        assert!(t5_sentinel_ids(5, 6).is_err());
    }

    #[test]
    fn tiny_masks_follow_t5() {
        let mut r = rng(0);
        assert_eq!(
            random_spans_noise_mask(0, 0.15, 3.0, &mut r).unwrap(),
            Vec::<bool>::new()
        );
        assert_eq!(
            random_spans_noise_mask(1, 0.15, 3.0, &mut r).unwrap(),
            vec![false]
        );
        assert_eq!(
            random_spans_noise_mask(2, 0.15, 3.0, &mut r).unwrap(),
            vec![false, true]
        );
        // round(0.45) = 0 noise tokens, clamped up to 1.
        assert_eq!(
            random_spans_noise_mask(3, 0.15, 3.0, &mut r).unwrap(),
            vec![false, false, true]
        );
        // round(0.99 * 10) = 10 clamped to 9, but 3 spans need 3 non-noise tokens.
        assert!(random_spans_noise_mask(10, 0.99, 3.0, &mut r).is_err());
    }

    #[test]
    fn tiny_input_lengths() {
        let s = t5_sentinel_ids(100, 20).unwrap();
        for input_length in 0..=9 {
            let err = SpanCorruption::t5_defaults(input_length, 1, s.clone());
            assert!(err.is_err(), "input_length {input_length} was accepted");
        }
        // 10 is the shortest input length at the defaults where T5's length
        // formula and its mask agree: 10 raw tokens, 2 noise in 1 span.
        let objective = SpanCorruption::t5_defaults(10, 1, s.clone()).unwrap();
        assert_eq!((objective.raw_length(), objective.target_length()), (10, 4));
        let ex = objective
            .corrupt(&[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], &mut rng(3))
            .unwrap();
        assert_eq!(ex.inputs.len(), 10);
        assert_eq!(ex.targets.len(), 4);

        // Empty and one-token sequences corrupt without noise.
        let ex = objective.corrupt(&[], &mut rng(3)).unwrap();
        assert_eq!((ex.inputs, ex.targets), (vec![1], vec![1]));
        let ex = objective.corrupt(&[42], &mut rng(3)).unwrap();
        assert_eq!(
            (ex.inputs.clone(), ex.targets.clone()),
            (vec![42, 1], vec![99, 1])
        );
        assert_eq!(objective.reconstruct(&ex).unwrap(), vec![42]);
    }

    #[test]
    fn random_segmentation_is_uniform() {
        // 5 items in 2 segments: 4 splits, each 1/4 of the time.
        let mut r = rng(11);
        let mut counts = [0usize; 4];
        let n = 8000;
        for _ in 0..n {
            let seg = random_segmentation(5, 2, &mut r);
            assert_eq!(seg.iter().sum::<usize>(), 5);
            assert!(seg.iter().all(|&l| l > 0));
            counts[seg[0] - 1] += 1;
        }
        for c in counts {
            assert!((c as f64 / n as f64 - 0.25).abs() < 0.02, "{counts:?}");
        }
        assert_eq!(random_segmentation(7, 7, &mut r), vec![1; 7]);
        assert_eq!(random_segmentation(7, 1, &mut r), vec![7]);
    }

    #[test]
    fn reconstruct_rejects_malformed_examples() {
        let s = [99, 98];
        assert!(reconstruct(&[5, 99], &[99, 6, 1], &s, 1).is_err()); // no </s>
        assert!(reconstruct(&[5, 99, 1], &[6, 99, 1], &s, 1).is_err()); // no leading sentinel
        assert!(reconstruct(&[5, 98, 1], &[99, 6, 1], &s, 1).is_err()); // unknown sentinel
        assert_eq!(
            reconstruct(&[5, 99, 1], &[99, 6, 7, 1], &s, 1).unwrap(),
            vec![5, 6, 7]
        );
    }

    #[test]
    fn restore_rejects_another_configuration() {
        let s = t5_sentinel_ids(1000, 100).unwrap();
        let a =
            SpanCorruptionPacker::new(SpanCorruption::t5_defaults(64, 1, s.clone()).unwrap(), 1);
        let mut b = SpanCorruptionPacker::new(SpanCorruption::t5_defaults(128, 1, s).unwrap(), 1);
        assert!(b.restore(a.state()).is_err());
    }
}
