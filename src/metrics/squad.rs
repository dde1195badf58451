//! Question answering: exact match and token F1 as SQuAD v1.1's official
//! `evaluate-v1.1.py` computes them, after its `normalize_answer`
//! (lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse
//! whitespace), each prediction scored against its best reference.

use std::collections::HashMap;

use super::{check_multi, check_pairs, py_split};
use crate::Result;

/// Mean exact match and mean token F1, both 0–100.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaScores {
    pub exact_match: f64,
    pub f1: f64,
}

/// Python's `\w`: a letter or digit, or `_`.
fn is_word_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// SQuAD v1.1's `normalize_answer`.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    // remove_punc: every character of Python's `string.punctuation`.
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // remove_articles: re.sub(r'\b(a|an|the)\b', ' ', text), i.e. each
    // whole word `a`, `an` or `the` becomes a space.
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut rest = no_punc.as_str();
    while let Some(c) = rest.chars().next() {
        let end = if is_word_char(c) {
            rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        let piece = &rest[..end];
        if matches!(piece, "a" | "an" | "the") {
            no_articles.push(' ');
        } else {
            no_articles.push_str(piece);
        }
        rest = &rest[end..];
    }
    // white_space_fix
    py_split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// SQuAD v1.1's `exact_match_score`.
pub fn squad_exact_match(prediction: &str, reference: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(reference)
}

/// SQuAD v1.1's `f1_score`, 0–1: the F1 of the bags of normalized tokens
/// (0 when nothing overlaps, even when both are empty).
pub fn squad_f1(prediction: &str, reference: &str) -> f64 {
    let p = normalize_answer(prediction);
    let r = normalize_answer(reference);
    let p_tokens: Vec<&str> = py_split(&p).collect();
    let r_tokens: Vec<&str> = py_split(&r).collect();
    let mut r_counts: HashMap<&str, u64> = HashMap::new();
    for &t in &r_tokens {
        *r_counts.entry(t).or_insert(0) += 1;
    }
    let mut same = 0u64;
    for t in &p_tokens {
        if let Some(c) = r_counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p_tokens.len() as f64;
    let recall = same as f64 / r_tokens.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Mean exact match and F1 (0–100) of `predictions` against one reference
/// answer each.
pub fn squad<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
) -> Result<QaScores> {
    check_pairs("SQuAD", predictions.len(), references.len())?;
    let refs: Vec<[&str; 1]> = references.iter().map(|r| [r.as_ref()]).collect();
    Ok(squad_impl(predictions, &refs))
}

/// Mean exact match and F1 (0–100) with several reference answers per
/// prediction, each metric taking its best reference
/// (`metric_max_over_ground_truths`), as in SQuAD's own evaluation.
pub fn squad_multi<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[Vec<R>],
) -> Result<QaScores> {
    check_pairs("SQuAD", predictions.len(), references.len())?;
    check_multi("SQuAD", references)?;
    Ok(squad_impl(predictions, references))
}

fn squad_impl<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[impl AsRef<[R]>],
) -> QaScores {
    let mut em = 0.0;
    let mut f1 = 0.0;
    for (p, refs) in predictions.iter().zip(references) {
        let p = p.as_ref();
        let refs = refs.as_ref();
        em += if refs.iter().any(|r| squad_exact_match(p, r.as_ref())) {
            1.0
        } else {
            0.0
        };
        f1 += refs
            .iter()
            .map(|r| squad_f1(p, r.as_ref()))
            .fold(0.0, f64::max);
    }
    let n = predictions.len() as f64;
    QaScores {
        exact_match: 100.0 * em / n,
        f1: 100.0 * f1 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
        assert_eq!(
            normalize_answer("an apple, a day; the end"),
            "apple day end"
        );
        assert_eq!(normalize_answer("theatre Anna"), "theatre anna");
        assert_eq!(normalize_answer("  "), "");
    }

    #[test]
    fn scores() {
        assert!(squad_exact_match("the Beatles", "Beatles."));
        assert!((squad_f1("new york city", "york") - 0.5).abs() < 1e-12);
        assert_eq!(squad_f1("", ""), 0.0);
        let s = squad(&["Paris", "in 1990"], &["paris", "1990"]).unwrap();
        assert_eq!(s.exact_match, 50.0);
        assert!(squad(&["x"], &["x", "y"]).is_err());
    }
}
