//! Evaluation metrics for T5's four kinds of application, each a pure
//! function over prediction and reference strings that agrees with the
//! reference implementation the literature reports:
//!
//! | application     | metric                         | reference implementation                         |
//! |-----------------|--------------------------------|--------------------------------------------------|
//! | translation     | [`corpus_bleu`], [`corpus_chrf`] | `sacrebleu.corpus_bleu`, `sacrebleu.corpus_chrf` |
//! | summarization   | [`rouge`]                      | `rouge_score.rouge_scorer.RougeScorer`            |
//! | question answering | [`squad`]                   | SQuAD v1.1's `evaluate-v1.1.py`                   |
//! | classification  | [`classification_report`]      | scikit-learn's `precision_recall_fscore_support`  |
//!
//! plus two helpers every kind reports: [`token_accuracy`] (teacher-forced
//! argmax against the labels, ignoring [`IGNORE_INDEX`]) and
//! [`mean_generation_length`].
//!
//! **Scale.** Every score is a percentage on the 0–100 scale, the scale
//! sacrebleu reports BLEU and chrF on: ROUGE F-measures, SQuAD's exact match
//! and F1, and accuracy, precision, recall and F1 are the reference
//! implementation's 0–1 numbers times 100.
//!
//! **Inputs.** Predictions and references are any slices of strings
//! (`&[String]`, `&[&str]`); the two must have the same length, and must not
//! be empty (a corpus score of nothing is undefined): either mistake is an
//! [`Error::Invalid`] that says which. Each metric also has a variant that
//! takes several references per prediction.
//!
//! `tests/metrics.rs` checks every metric against numbers that
//! `tests/fixtures/metrics/make_fixture.py` computed with the reference
//! implementations on a few hundred pairs with edge cases.
//!
//! **Known approximations.** Python's `str.lower` is Rust's
//! [`str::to_lowercase`] (the same Unicode mapping up to Unicode version
//! differences), and Python's regex `\w` (used by SQuAD's article removal)
//! is [`char::is_alphanumeric`] or `_`, which also counts a few combining
//! marks (Unicode `Other_Alphabetic`) as word characters. Neither matters
//! outside contrived text.

mod bleu;
mod chrf;
mod classification;
mod porter;
mod rouge;
mod squad;
mod task;

pub use bleu::{
    corpus_bleu, corpus_bleu_multi, tokenize_bleu, BleuOptions, BleuScore, BleuTokenizer, Smoothing,
};
pub use chrf::{corpus_chrf, corpus_chrf_multi, ChrfOptions, ChrfScore};
pub use classification::{classification_report, ClassificationReport, LabelScores};
pub use porter::porter_stem;
pub use rouge::{
    rouge, rouge_multi, rouge_pair, rouge_tokenize, RougeOptions, RougePair, RougeScores,
};
pub use squad::{normalize_answer, squad, squad_exact_match, squad_f1, squad_multi, QaScores};
pub use task::{task_metrics, task_scores, TaskKind, TaskScores};

pub use crate::model::IGNORE_INDEX;
use crate::{Error, Result};

/// Precision, recall and F-measure (F1), each 0–100.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Checks that a metric has as many predictions as references, and at least
/// one of each.
pub(crate) fn check_pairs(metric: &str, predictions: usize, references: usize) -> Result<()> {
    if predictions != references {
        return Err(Error::Invalid(format!(
            "{metric}: {predictions} predictions but {references} references; \
             each prediction needs its reference (same length, same order)"
        )));
    }
    if predictions == 0 {
        return Err(Error::Invalid(format!(
            "{metric}: no predictions to score; give at least one prediction and its reference"
        )));
    }
    Ok(())
}

/// Checks that every prediction of a multi-reference metric has at least one
/// reference.
pub(crate) fn check_multi<R>(metric: &str, references: &[Vec<R>]) -> Result<()> {
    if let Some(i) = references.iter().position(|r| r.is_empty()) {
        return Err(Error::Invalid(format!(
            "{metric}: prediction {i} has no reference; give each prediction at least one"
        )));
    }
    Ok(())
}

/// Python's `str.isspace`: Unicode category `Zs` or bidirectional class
/// `WS`, `B` or `S`. This is what `str.split()` with no argument and
/// `str.rstrip()` split on and strip; it differs from
/// [`char::is_whitespace`] by also counting U+001C..U+001F.
pub(crate) fn py_is_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `s.split()`: the non-empty runs between whitespace.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_is_space).filter(|w| !w.is_empty())
}

/// Python's `s.rstrip()`.
pub(crate) fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_is_space)
}

/// Teacher-forced token accuracy: how many predicted ids (the argmax of the
/// logits) equal their label, over the positions whose label is not
/// [`IGNORE_INDEX`]. Accumulate batches with [`TokenAccuracy::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenAccuracy {
    pub correct: u64,
    pub total: u64,
}

impl TokenAccuracy {
    /// Correct over counted positions, 0–100; 0 when nothing was counted.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }

    /// Adds another batch's counts.
    pub fn add(&mut self, other: TokenAccuracy) {
        self.correct += other.correct;
        self.total += other.total;
    }
}

/// Token accuracy of `predicted` ids against `labels` (both flattened in the
/// same order), skipping positions labelled [`IGNORE_INDEX`].
pub fn token_accuracy(predicted: &[u32], labels: &[i64]) -> Result<TokenAccuracy> {
    if predicted.len() != labels.len() {
        return Err(Error::Invalid(format!(
            "token accuracy: {} predicted ids but {} labels; they must be the same shape",
            predicted.len(),
            labels.len()
        )));
    }
    let mut acc = TokenAccuracy::default();
    for (&p, &l) in predicted.iter().zip(labels) {
        if l == IGNORE_INDEX {
            continue;
        }
        acc.total += 1;
        if i64::from(p) == l {
            acc.correct += 1;
        }
    }
    Ok(acc)
}

/// The mean number of tokens of generated sequences (count whatever the
/// caller passes: strip padding and the decoder start first if they should
/// not count).
pub fn mean_generation_length<S: AsRef<[u32]>>(outputs: &[S]) -> Result<f64> {
    if outputs.is_empty() {
        return Err(Error::Invalid(
            "generation length: no generated sequences to measure".into(),
        ));
    }
    let tokens: usize = outputs.iter().map(|o| o.as_ref().len()).sum();
    Ok(tokens as f64 / outputs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace() {
        assert!(py_is_space('\u{1c}'));
        assert!(py_is_space('\u{3000}'));
        assert!(!py_is_space('\u{200b}'));
        assert_eq!(
            py_split(" a\u{a0}b\u{1f}c  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_rstrip("x \u{2029}\n"), "x");
    }

    #[test]
    fn token_accuracy_ignores_padding() {
        let acc = token_accuracy(&[1, 2, 3, 0], &[1, 5, 3, IGNORE_INDEX]).unwrap();
        assert_eq!(
            acc,
            TokenAccuracy {
                correct: 2,
                total: 3
            }
        );
        assert!((acc.percent() - 200.0 / 3.0).abs() < 1e-12);
        assert!(token_accuracy(&[1], &[1, 2]).is_err());
        assert_eq!(
            mean_generation_length(&[vec![1u32, 2], vec![3]]).unwrap(),
            1.5
        );
        assert!(mean_generation_length::<Vec<u32>>(&[]).is_err());
    }
}
