//! Generation: greedy, beam search and sampling, decoding one token at a
//! time over the decoder's key/value cache.
//!
//! Beam search follows `transformers`' (5.x) algorithm step for step, in
//! f32 like it, so that the same model gives the same tokens: keep the top
//! `2 * num_beams` continuations, let only the best `num_beams` of them end,
//! score an ended beam by `sum(log p) / generated_len^length_penalty`, and
//! stop by the same early-stopping rule.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DecoderCache, ForwardMode, T5};
use crate::error::{Error, Result};

/// When beam search may stop before `max_new_tokens`, as `transformers`'
/// `early_stopping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `False`: stop when no running beam can beat the worst ended one,
    /// judged at the current length.
    Heuristic,
    /// `True`: stop as soon as `num_beams` beams have ended.
    Always,
    /// `"never"`: like `Heuristic`, but with a positive length penalty
    /// judge the running beams at the longest possible length.
    Never,
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Greedy,
    Beam {
        num_beams: usize,
        length_penalty: f64,
        early_stopping: EarlyStopping,
    },
    Sample {
        temperature: f64,
        /// 0 keeps every token.
        top_k: usize,
        /// 1.0 keeps every token.
        top_p: f64,
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub strategy: Strategy,
    /// Recompute the whole prefix at every step instead of using the
    /// key/value cache: slower, and only there to check the cache.
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            strategy: Strategy::Greedy,
            use_cache: true,
        }
    }
}

/// Generates a continuation for each prompt (token ids, `</s>` included
/// as the tokenizer gives it). Each output holds the generated ids without
/// the decoder start token, up to and including the first `</s>`.
pub fn generate(model: &T5, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::Invalid("cannot generate from an empty input".into()));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    match &opts.strategy {
        Strategy::Greedy => step_all(model, prompts, opts, |_, row| Ok(argmax(row))),
        Strategy::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        } => {
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            step_all(model, prompts, opts, |_, row| {
                Ok(sample(row, *temperature, *top_k, *top_p, &mut rng))
            })
        }
        Strategy::Beam {
            num_beams,
            length_penalty,
            early_stopping,
        } => {
            if *num_beams == 0 {
                return Err(Error::Invalid("num_beams must be at least 1".into()));
            }
            prompts
                .iter()
                .map(|p| beam_search(model, p, opts, *num_beams, *length_penalty, *early_stopping))
                .collect()
        }
    }
}

/// Pads prompts to one batch: ids and mask, `[b, s]`.
fn pad_batch(prompts: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let s = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * s);
    let mut mask = Vec::with_capacity(prompts.len() * s);
    for p in prompts {
        ids.extend(
            p.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, s - p.len())),
        );
        mask.extend(
            std::iter::repeat_n(1u32, p.len()).chain(std::iter::repeat_n(0u32, s - p.len())),
        );
    }
    Ok((
        Tensor::from_vec(ids, (prompts.len(), s), device)?,
        Tensor::from_vec(mask, (prompts.len(), s), device)?,
    ))
}

/// Decodes step by step: `decoder` is the sequences so far (all of equal
/// length); returns the last position's logits as host rows, `[b][vocab]`.
struct Decoder<'a> {
    model: &'a T5,
    encoder_out: Tensor,
    mask: Tensor,
    cache: DecoderCache,
    use_cache: bool,
}

impl<'a> Decoder<'a> {
    fn new(model: &'a T5, ids: &Tensor, mask: &Tensor, use_cache: bool) -> Result<Self> {
        let mut mode = ForwardMode::eval();
        let encoder_out = model.encode(ids, mask, &mut mode)?;
        let cache = model.start_decoding(&encoder_out, mask)?;
        Ok(Self {
            model,
            encoder_out,
            mask: mask.clone(),
            cache,
            use_cache,
        })
    }

    fn next_logits(&mut self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let device = self.model.device();
        let mut mode = ForwardMode::eval();
        let b = sequences.len();
        let logits = if self.use_cache {
            let past = self.cache.len();
            let new: Vec<u32> = sequences
                .iter()
                .flat_map(|s| s[past..].iter().copied())
                .collect();
            let t = new.len() / b;
            let ids = Tensor::from_vec(new, (b, t), device)?;
            self.model
                .decode_step(&ids, None, &mut self.cache, &mut mode)?
        } else {
            let t = sequences[0].len();
            let ids = Tensor::from_vec(sequences.concat(), (b, t), device)?;
            let mut fresh = self.model.start_decoding(&self.encoder_out, &self.mask)?;
            self.model.decode_step(&ids, None, &mut fresh, &mut mode)?
        };
        let t = logits.dim(1)?;
        let last = logits
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(DType::F32)?;
        Ok(last.to_vec2::<f32>()?)
    }

    /// Keeps (and repeats) the batch rows in `rows`, for beam search.
    fn select(&mut self, rows: &[u32]) -> Result<()> {
        let idx = Tensor::new(rows, self.encoder_out.device())?;
        self.encoder_out = self.encoder_out.index_select(&idx, 0)?;
        self.mask = self.mask.index_select(&idx, 0)?;
        self.cache = self.cache.select(rows)?;
        Ok(())
    }
}

/// Greedy or sampled decoding of a whole batch: finished rows go on with
/// padding, as in `transformers`, until every row has ended.
fn step_all(
    model: &T5,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut choose: impl FnMut(usize, &[f32]) -> Result<u32>,
) -> Result<Vec<Vec<u32>>> {
    let cfg = model.config();
    let (ids, mask) = pad_batch(prompts, cfg.pad_token_id, model.device())?;
    let mut dec = Decoder::new(model, &ids, &mask, opts.use_cache)?;
    let mut seqs = vec![vec![cfg.decoder_start_token_id]; prompts.len()];
    let mut done = vec![false; prompts.len()];
    for _ in 0..opts.max_new_tokens {
        let rows = dec.next_logits(&seqs)?;
        for (i, row) in rows.iter().enumerate() {
            let tok = if done[i] {
                cfg.pad_token_id
            } else {
                choose(i, row)?
            };
            seqs[i].push(tok);
            if tok == cfg.eos_token_id {
                done[i] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(seqs
        .iter()
        .map(|s| trim_output(s, cfg.eos_token_id))
        .collect())
}

/// The generated ids after the start token, through the first `</s>`.
fn trim_output(seq: &[u32], eos: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for &t in &seq[1..] {
        out.push(t);
        if t == eos {
            break;
        }
    }
    out
}

/// The index of the largest value; the first one on a tie, like torch.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax` of a row in f32, computed as torch does.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = sum.ln();
    row.iter().map(|&x| x - max - lse).collect()
}

/// Samples a token: temperature, then top-k, then top-p (nucleus), the
/// order `transformers` applies them in.
fn sample(row: &[f32], temperature: f64, top_k: usize, top_p: f64, rng: &mut ChaCha8Rng) -> u32 {
    let t = temperature.max(1e-6) as f32;
    let mut scored: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x / t))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    if top_k > 0 && top_k < scored.len() {
        scored.truncate(top_k);
    }
    let max = scored[0].1;
    let mut probs: Vec<f32> = scored.iter().map(|&(_, x)| (x - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one).
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum as f64 >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        scored.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f32 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return scored[i].0;
        }
        u -= p;
    }
    scored[probs.len() - 1].0
}

/// Indices of the `k` largest values, largest first; equal values keep
/// their index order.
fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

const NEG: f32 = -1.0e9;

/// Beam search for one prompt, as `transformers`' `_beam_search`.
fn beam_search(
    model: &T5,
    prompt: &[u32],
    opts: &GenerateOptions,
    num_beams: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
) -> Result<Vec<u32>> {
    let cfg = model.config();
    let eos = cfg.eos_token_id;
    let n = num_beams;
    let k = 2 * n;
    let prompt_len = 1usize;
    let max_length = prompt_len + opts.max_new_tokens;
    let (ids, mask) = pad_batch(&[prompt.to_vec()], cfg.pad_token_id, model.device())?;
    let mut dec = Decoder::new(model, &ids, &mask, opts.use_cache)?;
    dec.select(&vec![0; n])?;

    let mut running: Vec<Vec<u32>> = vec![vec![cfg.decoder_start_token_id]; n];
    let mut running_scores = vec![NEG; n];
    running_scores[0] = 0.0;
    // Ended beams: sequence, score, and whether the slot is really ended.
    let mut finished: Vec<(Vec<u32>, f32, bool)> = vec![(running[0].clone(), NEG, false); n];
    let mut improvable = true;
    let mut cur_len = prompt_len;
    while cur_len < max_length {
        let rows = dec.next_logits(&running)?;
        let vocab = rows[0].len();
        let mut acc = Vec::with_capacity(n * vocab);
        for (b, row) in rows.iter().enumerate() {
            acc.extend(
                log_softmax(row)
                    .into_iter()
                    .map(|lp| lp + running_scores[b]),
            );
        }
        let top = top_k_indices(&acc, k);
        let cands: Vec<(usize, u32, f32)> = top
            .iter()
            .map(|&i| (i / vocab, (i % vocab) as u32, acc[i]))
            .collect();
        let hits: Vec<bool> = cands
            .iter()
            .map(|&(_, tok, _)| tok == eos || cur_len + 1 >= max_length)
            .collect();

        // The running beams of the next step: the best that did not end.
        let run_scores: Vec<f32> = cands
            .iter()
            .zip(&hits)
            .map(|(&(_, _, s), &h)| s + if h { NEG } else { 0.0 })
            .collect();
        let next = top_k_indices(&run_scores, n);
        let new_running: Vec<Vec<u32>> = next
            .iter()
            .map(|&c| {
                let (beam, tok, _) = cands[c];
                let mut s = running[beam].clone();
                s.push(tok);
                s
            })
            .collect();
        let new_scores: Vec<f32> = next.iter().map(|&c| run_scores[c]).collect();
        let beam_rows: Vec<u32> = next.iter().map(|&c| cands[c].0 as u32).collect();

        // Ended beams: the best of the old ones and the new ones.
        let denom = ((cur_len + 1 - prompt_len) as f64).powf(length_penalty) as f32;
        let all_full = finished.iter().all(|f| f.2) && early_stopping == EarlyStopping::Always;
        let mut merged = finished.clone();
        for (i, &(beam, tok, score)) in cands.iter().enumerate() {
            let just_ended = hits[i] && i < n;
            let mut s = score / denom;
            s += if all_full { NEG } else { 0.0 };
            s += if improvable { 0.0 } else { NEG };
            s += if just_ended { 0.0 } else { NEG };
            let mut seq = running[beam].clone();
            seq.push(tok);
            merged.push((seq, s, just_ended));
        }
        let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
        finished = top_k_indices(&merged_scores, n)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect();

        running = new_running;
        running_scores = new_scores;
        if opts.use_cache {
            dec.select(&beam_rows)?;
        }
        cur_len += 1;

        // Could a running beam still beat the worst ended one?
        let best_len = if early_stopping == EarlyStopping::Never && length_penalty > 0.0 {
            max_length - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_possible = running_scores[0] / (best_len as f64).powf(length_penalty) as f32;
        let worst = finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
        improvable = improvable
            && finished
                .iter()
                .any(|f| best_possible > if f.2 { worst } else { NEG });
        let open_beam = !(finished.iter().all(|f| f.2) && early_stopping == EarlyStopping::Always);
        let can_continue = !hits.iter().all(|&h| h);
        if !(improvable && open_beam && can_continue) {
            break;
        }
    }
    Ok(trim_output(&finished[0].0, eos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_prefix() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // One token holds 90% of the mass: top_p 0.5 always picks it.
        let row = [5.0f32, 0.0, 0.0, 0.0, 0.0];
        for _ in 0..50 {
            assert_eq!(sample(&row, 1.0, 0, 0.5, &mut rng), 0);
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let row = [0.1f32, 0.3, 0.2, 0.25];
        for _ in 0..20 {
            assert_eq!(sample(&row, 2.0, 1, 1.0, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed() {
        let row: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..30)
                .map(|_| sample(&row, 1.0, 0, 1.0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
