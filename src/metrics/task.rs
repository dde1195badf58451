//! The metrics of a fine-tuning task's kind, from generated outputs and
//! their references: one flat map of numbers (the shape an `Eval` event's
//! `metrics` carries), and for classification the whole report (per-label
//! scores and the confusion matrix), which does not fit a flat map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    classification_report, corpus_bleu, corpus_chrf, rouge, squad, BleuOptions, BleuTokenizer,
    ChrfOptions, ClassificationReport, RougeOptions,
};
use crate::Result;

/// What a text-to-text task is, which decides how its outputs are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// BLEU (13a and character-level) and chrF.
    Translation,
    /// ROUGE-1, ROUGE-2 and ROUGE-L F-measures.
    Summarization,
    /// SQuAD exact match and token F1.
    QuestionAnswering,
    /// Accuracy, macro and micro F1, and how many outputs are no label.
    Classification,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Translation => "translation",
            TaskKind::Summarization => "summarization",
            TaskKind::QuestionAnswering => "question_answering",
            TaskKind::Classification => "classification",
        }
    }
}

/// A task's scores: the flat metrics, and the classification report when
/// the task is classification.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskScores {
    pub metrics: BTreeMap<String, f64>,
    pub classification: Option<ClassificationReport>,
}

/// Scores `predictions` against `references` (same length, at least one).
/// Every task gets `exact_match` (the output equals the target, after
/// trimming); a kind adds its own metrics, 0–100. Without a kind, BLEU and
/// chrF are reported as for translation. `use_stemmer` applies to ROUGE.
pub fn task_metrics(
    kind: Option<TaskKind>,
    predictions: &[String],
    references: &[String],
    use_stemmer: bool,
) -> Result<BTreeMap<String, f64>> {
    Ok(task_scores(kind, predictions, references, use_stemmer, &[] as &[&str])?.metrics)
}

/// [`task_metrics`], plus the classification report. `known_labels` are
/// the task's labels beyond those among `references` (a label of the data
/// that this sample happens to miss): an output equal to one of them is a
/// wrong label, not an invalid one.
pub fn task_scores<L: AsRef<str>>(
    kind: Option<TaskKind>,
    predictions: &[String],
    references: &[String],
    use_stemmer: bool,
    known_labels: &[L],
) -> Result<TaskScores> {
    let mut m = BTreeMap::new();
    let mut classification = None;
    super::check_pairs("evaluation", predictions.len(), references.len())?;
    let exact = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| p.trim() == r.trim())
        .count();
    m.insert(
        "exact_match".into(),
        100.0 * exact as f64 / predictions.len() as f64,
    );
    match kind {
        None | Some(TaskKind::Translation) => {
            let bleu = corpus_bleu(predictions, references, &BleuOptions::default())?;
            m.insert("bleu".into(), bleu.score);
            let chars = BleuOptions::with_tokenizer(BleuTokenizer::Char);
            m.insert(
                "bleu_char".into(),
                corpus_bleu(predictions, references, &chars)?.score,
            );
            let chrf = corpus_chrf(predictions, references, &ChrfOptions::default())?;
            m.insert("chrf".into(), chrf.score);
        }
        Some(TaskKind::Summarization) => {
            let r = rouge(predictions, references, &RougeOptions { use_stemmer })?;
            m.insert("rouge1".into(), r.rouge1);
            m.insert("rouge2".into(), r.rouge2);
            m.insert("rougeL".into(), r.rouge_l);
            m.insert("rougeLsum".into(), r.rouge_lsum);
        }
        Some(TaskKind::QuestionAnswering) => {
            let q = squad(predictions, references)?;
            m.insert("exact_match".into(), q.exact_match);
            m.insert("f1".into(), q.f1);
        }
        Some(TaskKind::Classification) => {
            let mut labels: Vec<&str> = references
                .iter()
                .map(|r| r.trim())
                .chain(known_labels.iter().map(|l| l.as_ref().trim()))
                .collect();
            labels.sort_unstable();
            labels.dedup();
            let preds: Vec<&str> = predictions.iter().map(|p| p.trim()).collect();
            let refs: Vec<&str> = references.iter().map(|r| r.trim()).collect();
            let report = classification_report(&preds, &refs, &labels)?;
            m.insert("accuracy".into(), report.accuracy);
            m.insert("macro_precision".into(), report.macro_avg.precision);
            m.insert("macro_recall".into(), report.macro_avg.recall);
            m.insert("macro_f1".into(), report.macro_avg.f1);
            m.insert("micro_f1".into(), report.micro_avg.f1);
            m.insert("invalid".into(), report.invalid as f64);
            classification = Some(report);
        }
    }
    Ok(TaskScores {
        metrics: m,
        classification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn perfect_outputs_score_full_marks() {
        let refs = s(&["the cat sat on the mat", "a dog barked loudly today"]);
        for kind in [
            None,
            Some(TaskKind::Translation),
            Some(TaskKind::Summarization),
            Some(TaskKind::QuestionAnswering),
        ] {
            let m = task_metrics(kind, &refs, &refs, false).unwrap();
            assert!((m["exact_match"] - 100.0).abs() < 1e-9, "{kind:?} {m:?}");
            for (k, v) in &m {
                assert!((v - 100.0).abs() < 1e-6, "{kind:?} {k} = {v}");
            }
        }
    }

    #[test]
    fn classification_counts_invalid_outputs() {
        let m = task_metrics(
            Some(TaskKind::Classification),
            &s(&["yes", "no", "maybe", "yes"]),
            &s(&["yes", "no", "no", "no"]),
            false,
        )
        .unwrap();
        assert_eq!(m["invalid"], 1.0);
        assert!((m["accuracy"] - 50.0).abs() < 1e-9, "{m:?}");
        assert!((m["exact_match"] - 50.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn known_labels_outside_the_sample_are_wrong_not_invalid() {
        let scores = task_scores(
            Some(TaskKind::Classification),
            &s(&["neutral", "yes", "no"]),
            &s(&["yes", "yes", "no"]),
            false,
            &["neutral"],
        )
        .unwrap();
        let report = scores.classification.unwrap();
        assert_eq!(report.labels, ["neutral", "no", "yes"]);
        assert_eq!(report.invalid, 0);
        // Row "yes": one predicted neutral, one yes; no invalid column count.
        assert_eq!(report.confusion[2], vec![1, 0, 1, 0]);
        assert_eq!(scores.metrics["invalid"], 0.0);
        assert!((scores.metrics["accuracy"] - 200.0 / 3.0).abs() < 1e-9);
        let other = task_scores(
            Some(TaskKind::Summarization),
            &s(&["a b"]),
            &s(&["a b"]),
            false,
            &[] as &[&str],
        )
        .unwrap();
        assert!(other.classification.is_none());
    }
}
