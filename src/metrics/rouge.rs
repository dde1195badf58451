//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum as Google's `rouge-score`
//! package computes them (`RougeScorer(['rouge1', 'rouge2', 'rougeL',
//! 'rougeLsum'])`, default tokenizer), averaged over the pairs.
//!
//! Its tokenizer lowercases the text and keeps only runs of ASCII letters
//! and digits, `[a-z0-9]+`: accents split words (`café` gives `caf`) and
//! text in other scripts (Japanese, Russian, …) has no tokens at all, so it
//! scores 0 against anything. This mirrors `rouge-score` faithfully; score
//! such languages with chrF or character BLEU instead.

use std::collections::HashMap;

use super::{check_multi, check_pairs, porter::porter_stem, Prf};
use crate::Result;

/// The arguments of `RougeScorer(...)` this implementation supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RougeOptions {
    /// Stem tokens longer than 3 letters with NLTK's Porter stemmer
    /// (`use_stemmer=True`). Off by default, as in `rouge-score`.
    pub use_stemmer: bool,
}

/// The ROUGE scores of one prediction against its reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RougePair {
    pub rouge1: Prf,
    pub rouge2: Prf,
    /// Longest common subsequence over the whole text.
    pub rouge_l: Prf,
    /// Summary-level LCS over sentences split at newlines.
    pub rouge_lsum: Prf,
}

/// Corpus ROUGE: the mean F-measure of each kind over the pairs, 0–100.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RougeScores {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
    pub rouge_lsum: f64,
}

/// `rouge-score`'s default tokenizer: lowercase, keep runs of `[a-z0-9]`,
/// stem tokens longer than 3 letters when asked.
pub fn rouge_tokenize(text: &str, options: &RougeOptions) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if options.use_stemmer && t.len() > 3 {
                porter_stem(t)
            } else {
                t.to_owned()
            }
        })
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

/// `rouge_score.scoring.fmeasure`, on 0–1 inputs.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn prf(precision: f64, recall: f64) -> Prf {
    Prf {
        precision: 100.0 * precision,
        recall: 100.0 * recall,
        f1: 100.0 * fmeasure(precision, recall),
    }
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// `_score_ngrams`.
fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> Prf {
    let t = ngram_counts(target, n);
    let p = ngram_counts(prediction, n);
    let overlap: u64 = t
        .iter()
        .map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0)))
        .sum();
    let t_total: u64 = t.values().sum();
    let p_total: u64 = p.values().sum();
    prf(
        overlap as f64 / p_total.max(1) as f64,
        overlap as f64 / t_total.max(1) as f64,
    )
}

/// `_lcs_table`: `table[i][j]` is the LCS length of `a[..i]` and `b[..j]`.
fn lcs_table(a: &[String], b: &[String]) -> Vec<Vec<u32>> {
    let mut t = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i][j] = if a[i - 1] == b[j - 1] {
                t[i - 1][j - 1] + 1
            } else {
                t[i - 1][j].max(t[i][j - 1])
            };
        }
    }
    t
}

/// `_score_lcs`.
fn score_lcs(target: &[String], prediction: &[String]) -> Prf {
    if target.is_empty() || prediction.is_empty() {
        return Prf::default();
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()] as f64;
    prf(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// `_backtrack_norec` after `_lcs_table`: the indices into `r` of one LCS.
fn lcs_indices(r: &[String], c: &[String]) -> Vec<usize> {
    let t = lcs_table(r, c);
    let (mut i, mut j) = (r.len(), c.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// `_summary_level_lcs`: union LCS of each reference sentence against all
/// candidate sentences, each token counted at most as often as it occurs
/// on both sides.
fn summary_level_lcs(refs: &[Vec<String>], cands: &[Vec<String>]) -> Prf {
    if refs.is_empty() || cands.is_empty() {
        return Prf::default();
    }
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Prf::default();
    }
    let mut count_r: HashMap<&str, i64> = HashMap::new();
    let mut count_c: HashMap<&str, i64> = HashMap::new();
    for t in refs.iter().flatten() {
        *count_r.entry(t).or_insert(0) += 1;
    }
    for t in cands.iter().flatten() {
        *count_c.entry(t).or_insert(0) += 1;
    }
    let mut hits = 0u64;
    for r in refs {
        let mut union: Vec<usize> = cands.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let t = r[i].as_str();
            let (Some(cc), Some(cr)) = (count_c.get(t).copied(), count_r.get(t).copied()) else {
                continue;
            };
            if cc > 0 && cr > 0 {
                hits += 1;
                count_c.insert(t, cc - 1);
                count_r.insert(t, cr - 1);
            }
        }
    }
    prf(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// `rouge-score`'s sentences for ROUGE-Lsum: split at `\n`, drop empty ones.
fn sentences(text: &str, options: &RougeOptions) -> Vec<Vec<String>> {
    text.split('\n')
        .filter(|s| !s.is_empty())
        .map(|s| rouge_tokenize(s, options))
        .collect()
}

/// All four ROUGE scores of one prediction against one reference, as
/// `RougeScorer.score(target=reference, prediction=prediction)`.
pub fn rouge_pair(prediction: &str, reference: &str, options: &RougeOptions) -> RougePair {
    let t = rouge_tokenize(reference, options);
    let p = rouge_tokenize(prediction, options);
    RougePair {
        rouge1: score_ngrams(&t, &p, 1),
        rouge2: score_ngrams(&t, &p, 2),
        rouge_l: score_lcs(&t, &p),
        rouge_lsum: summary_level_lcs(
            &sentences(reference, options),
            &sentences(prediction, options),
        ),
    }
}

fn mean(pairs: &[RougePair]) -> RougeScores {
    let n = pairs.len() as f64;
    let avg = |f: fn(&RougePair) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    RougeScores {
        rouge1: avg(|p| p.rouge1.f1),
        rouge2: avg(|p| p.rouge2.f1),
        rouge_l: avg(|p| p.rouge_l.f1),
        rouge_lsum: avg(|p| p.rouge_lsum.f1),
    }
}

/// Mean ROUGE F-measures (0–100) of `predictions` against one reference
/// each.
pub fn rouge<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
    options: &RougeOptions,
) -> Result<RougeScores> {
    check_pairs("ROUGE", predictions.len(), references.len())?;
    let pairs: Vec<RougePair> = predictions
        .iter()
        .zip(references)
        .map(|(p, r)| rouge_pair(p.as_ref(), r.as_ref(), options))
        .collect();
    Ok(mean(&pairs))
}

/// Mean ROUGE F-measures with several references per prediction: as
/// `RougeScorer.score_multi`, each kind takes the reference with the best
/// F-measure (the first on a tie).
pub fn rouge_multi<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[Vec<R>],
    options: &RougeOptions,
) -> Result<RougeScores> {
    check_pairs("ROUGE", predictions.len(), references.len())?;
    check_multi("ROUGE", references)?;
    let pairs: Vec<RougePair> = predictions
        .iter()
        .zip(references)
        .map(|(p, refs)| {
            let scores: Vec<RougePair> = refs
                .iter()
                .map(|r| rouge_pair(p.as_ref(), r.as_ref(), options))
                .collect();
            let best = |f: fn(&RougePair) -> Prf| {
                scores
                    .iter()
                    .map(f)
                    .fold(None::<Prf>, |best, s| match best {
                        Some(b) if b.f1 >= s.f1 => Some(b),
                        _ => Some(s),
                    })
            };
            RougePair {
                rouge1: best(|s| s.rouge1).unwrap_or_default(),
                rouge2: best(|s| s.rouge2).unwrap_or_default(),
                rouge_l: best(|s| s.rouge_l).unwrap_or_default(),
                rouge_lsum: best(|s| s.rouge_lsum).unwrap_or_default(),
            }
        })
        .collect();
    Ok(mean(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_keeps_ascii_alphanumerics_only() {
        let o = RougeOptions::default();
        assert_eq!(
            rouge_tokenize("The café's 2nd-best 日本", &o),
            ["the", "caf", "s", "2nd", "best"]
        );
        assert!(rouge_tokenize("日本語の文章", &o).is_empty());
    }

    #[test]
    fn example_from_rouge_score() {
        let p = rouge_pair(
            "The quick brown dog jumps on the log.",
            "The quick brown fox jumps over the lazy dog",
            &RougeOptions::default(),
        );
        // rouge1: 6 overlapping of 8 predicted, 9 reference tokens.
        assert!((p.rouge1.precision - 75.0).abs() < 1e-9);
        assert!((p.rouge1.recall - 600.0 / 9.0).abs() < 1e-9);
    }
}
