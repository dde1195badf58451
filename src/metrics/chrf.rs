//! Corpus chrF and chrF++ exactly as `sacrebleu.corpus_chrf` (sacrebleu
//! 2.x) computes them: character n-grams of orders 1..=6 with whitespace
//! removed, optional word n-grams (chrF++ uses orders 1 and 2) after
//! splitting one punctuation mark off each word's end or start, statistics
//! summed over the corpus, and the F-beta (beta 2) of the precision and
//! recall averaged over the orders that have n-grams on both sides.

use std::collections::HashMap;
use std::hash::Hash;

use super::{check_multi, check_pairs, py_split};
use crate::{Error, Result};

/// The arguments of `sacrebleu.CHRF(...)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChrfOptions {
    /// Character n-gram order, 6 by default.
    pub char_order: usize,
    /// Word n-gram order: 0 for chrF (the default), 2 for chrF++.
    pub word_order: usize,
    /// Recall weighs `beta` times as much as precision; 2 by default.
    pub beta: u32,
    /// Lowercase hypotheses and references first.
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
    /// chrF++.py's epsilon smoothing instead of sacrebleu's effective order.
    pub eps_smoothing: bool,
}

impl Default for ChrfOptions {
    fn default() -> Self {
        ChrfOptions {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfOptions {
    /// chrF++: the defaults with word n-grams up to order 2.
    pub fn chrf_plus_plus() -> Self {
        ChrfOptions {
            word_order: 2,
            ..Self::default()
        }
    }
}

/// A corpus chrF score with its statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChrfScore {
    /// chrF (or chrF++), 0–100.
    pub score: f64,
    /// Per order (character orders first, then word orders): hypothesis
    /// n-grams, reference n-grams, matches, summed over the corpus.
    pub stats: Vec<[u64; 3]>,
}

/// Corpus chrF of `predictions` against one reference each, as
/// `sacrebleu.corpus_chrf(predictions, [references], ...)`.
pub fn corpus_chrf<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
    options: &ChrfOptions,
) -> Result<ChrfScore> {
    check_pairs("chrF", predictions.len(), references.len())?;
    let refs: Vec<[&str; 1]> = references.iter().map(|r| [r.as_ref()]).collect();
    chrf_impl(predictions, &refs, options)
}

/// Corpus chrF with several references per prediction: each segment
/// contributes the statistics of the reference it scores best against.
pub fn corpus_chrf_multi<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[Vec<R>],
    options: &ChrfOptions,
) -> Result<ChrfScore> {
    check_pairs("chrF", predictions.len(), references.len())?;
    check_multi("chrF", references)?;
    chrf_impl(predictions, references, options)
}

/// ASCII punctuation, sacrebleu's `CHRF._PUNCTS`.
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// sacrebleu's `CHRF._remove_punctuation`: split on whitespace, then split
/// one punctuation mark off the end of a word, or else off its start.
fn words(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut chars = w.chars();
        let first = chars.next();
        let last = chars.next_back();
        match (first, last) {
            (Some(f), Some(l)) => {
                if is_punct(l) {
                    let cut = w.len() - l.len_utf8();
                    out.push(&w[..cut]);
                    out.push(&w[cut..]);
                } else if is_punct(f) {
                    let cut = f.len_utf8();
                    out.push(&w[..cut]);
                    out.push(&w[cut..]);
                } else {
                    out.push(w);
                }
            }
            _ => out.push(w),
        }
    }
    out
}

fn counter<K: Hash + Eq>(items: impl Iterator<Item = K>) -> HashMap<K, u64> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// All n-gram counters of one segment: character orders, then word orders.
struct Ngrams<'a> {
    chars: Vec<HashMap<&'a [char], u64>>,
    words: Vec<HashMap<&'a [&'a str], u64>>,
}

fn ngrams<'a>(chars: &'a [char], words: &'a [&'a str], options: &ChrfOptions) -> Ngrams<'a> {
    Ngrams {
        chars: (1..=options.char_order)
            .map(|n| counter(chars.windows(n)))
            .collect(),
        words: (1..=options.word_order)
            .map(|n| counter(words.windows(n)))
            .collect(),
    }
}

fn char_seq(line: &str, options: &ChrfOptions) -> Vec<char> {
    if options.whitespace {
        line.chars().collect()
    } else {
        py_split(line).flat_map(str::chars).collect()
    }
}

/// sacrebleu's `CHRF._get_match_statistics`.
fn match_stats<K: Hash + Eq>(hyp: &HashMap<K, u64>, refs: &HashMap<K, u64>) -> [u64; 3] {
    let mut matches = 0;
    let mut hyp_count = 0;
    for (gram, &count) in hyp {
        hyp_count += count;
        if let Some(&r) = refs.get(gram) {
            matches += count.min(r);
        }
    }
    let hyp_count = if refs.is_empty() { 0 } else { hyp_count };
    [hyp_count, refs.values().sum(), matches]
}

fn segment_stats(hyp: &Ngrams, refs: &Ngrams) -> Vec<[u64; 3]> {
    let mut stats: Vec<[u64; 3]> = hyp
        .chars
        .iter()
        .zip(&refs.chars)
        .map(|(h, r)| match_stats(h, r))
        .collect();
    stats.extend(
        hyp.words
            .iter()
            .zip(&refs.words)
            .map(|(h, r)| match_stats(h, r)),
    );
    stats
}

/// sacrebleu's `CHRF._compute_f_score`.
fn f_score(stats: &[[u64; 3]], options: &ChrfOptions) -> f64 {
    let eps = 1e-16;
    let factor = f64::from(options.beta).powi(2);
    let mut score = 0.0;
    let mut effective_order = 0usize;
    let mut avg_prec = 0.0;
    let mut avg_rec = 0.0;
    for &[n_hyp, n_ref, n_match] in stats {
        let prec = if n_hyp > 0 {
            n_match as f64 / n_hyp as f64
        } else {
            eps
        };
        let rec = if n_ref > 0 {
            n_match as f64 / n_ref as f64
        } else {
            eps
        };
        let denom = factor * prec + rec;
        score += if denom > 0.0 {
            (1.0 + factor) * prec * rec / denom
        } else {
            eps
        };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective_order += 1;
        }
    }
    if options.eps_smoothing {
        return 100.0 * score / stats.len() as f64;
    }
    if effective_order == 0 {
        avg_prec = 0.0;
        avg_rec = 0.0;
    } else {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
    } else {
        0.0
    }
}

fn chrf_impl<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[impl AsRef<[R]>],
    options: &ChrfOptions,
) -> Result<ChrfScore> {
    let orders = options.char_order + options.word_order;
    if orders == 0 {
        return Err(Error::Invalid(
            "chrF: char_order + word_order must be at least 1".into(),
        ));
    }
    let prep = |s: &str| {
        if options.lowercase {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let mut totals = vec![[0u64; 3]; orders];
    for (hyp, refs) in predictions.iter().zip(references) {
        let hyp = prep(hyp.as_ref());
        let hyp_chars = char_seq(&hyp, options);
        let hyp_words = if options.word_order > 0 {
            words(&hyp)
        } else {
            Vec::new()
        };
        let hyp_ngrams = ngrams(&hyp_chars, &hyp_words, options);
        let mut best: Option<(f64, Vec<[u64; 3]>)> = None;
        for r in refs.as_ref() {
            let r = prep(r.as_ref());
            let r_chars = char_seq(&r, options);
            let r_words = if options.word_order > 0 {
                words(&r)
            } else {
                Vec::new()
            };
            let stats = segment_stats(&hyp_ngrams, &ngrams(&r_chars, &r_words, options));
            let f = f_score(&stats, options);
            if best.as_ref().is_none_or(|(b, _)| f > *b) {
                best = Some((f, stats));
            }
        }
        if let Some((_, stats)) = best {
            for (t, s) in totals.iter_mut().zip(stats) {
                for k in 0..3 {
                    t[k] += s[k];
                }
            }
        }
    }
    Ok(ChrfScore {
        score: f_score(&totals, options),
        stats: totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_split_like_sacrebleu() {
        assert_eq!(
            words("Hello, (world) ! x."),
            ["Hello", ",", "(world", ")", "!", "x", "."]
        );
    }

    #[test]
    fn identical_is_100() {
        let s = corpus_chrf(
            &["Der Hund bellt."],
            &["Der Hund bellt."],
            &ChrfOptions::default(),
        )
        .unwrap();
        assert!((s.score - 100.0).abs() < 1e-9);
        assert!(corpus_chrf(&["a"], &["a", "b"], &ChrfOptions::default()).is_err());
    }
}
