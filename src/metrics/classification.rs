//! Classification as text: the model writes a label, which must be one of
//! the task's known labels. Accuracy, per-label precision, recall and F1,
//! their macro and micro averages as scikit-learn's
//! `precision_recall_fscore_support(y_true, y_pred, labels=labels,
//! zero_division=0)` computes them, and a confusion matrix.
//!
//! A prediction that is not a known label (a misspelling, another case,
//! an empty output) is wrong, and counted as *invalid*: it is a false
//! negative of the true label and a false positive of no label, exactly as
//! scikit-learn treats a prediction outside `labels=` (so micro precision
//! can exceed accuracy when there are invalid predictions).

use std::collections::HashMap;

use super::{check_pairs, Prf};
use crate::{Error, Result};

/// One label's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelScores {
    pub label: String,
    /// Precision, recall and F1, 0–100 (0 where undefined).
    pub scores: Prf,
    /// How many references have this label.
    pub support: u64,
    /// How many predictions have this label.
    pub predicted: u64,
}

/// Everything a classification task reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassificationReport {
    /// The known labels, in the order of `per_label` and of the confusion
    /// matrix.
    pub labels: Vec<String>,
    /// Predictions equal to their reference, 0–100.
    pub accuracy: f64,
    pub per_label: Vec<LabelScores>,
    /// Unweighted means of the per-label scores (all known labels count,
    /// even those that never occur).
    pub macro_avg: Prf,
    /// Scores of the pooled true positives, predictions and references.
    pub micro_avg: Prf,
    /// `confusion[t][p]`: references of label `t` predicted as label `p`;
    /// the last column (index `labels.len()`) counts invalid predictions.
    pub confusion: Vec<Vec<u64>>,
    /// Predictions that are not a known label.
    pub invalid: u64,
    /// Number of predictions.
    pub total: u64,
}

/// `num / den`, or 0 when `den` is 0 (scikit-learn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// scikit-learn's precision, recall and F1 (as `2 tp / (true + pred)`),
/// scaled to 0–100.
fn prf(tp: u64, predicted: u64, support: u64) -> Prf {
    Prf {
        precision: 100.0 * ratio(tp, predicted),
        recall: 100.0 * ratio(tp, support),
        f1: 100.0 * ratio(2 * tp, support + predicted),
    }
}

/// Scores `predictions` against `references` over the known `labels`.
/// Every reference must be one of `labels`; predictions may be anything.
pub fn classification_report<P: AsRef<str>, R: AsRef<str>, L: AsRef<str>>(
    predictions: &[P],
    references: &[R],
    labels: &[L],
) -> Result<ClassificationReport> {
    check_pairs("classification", predictions.len(), references.len())?;
    if labels.is_empty() {
        return Err(Error::Invalid(
            "classification: no labels given; list the task's known labels".into(),
        ));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        if index.insert(l.as_ref(), i).is_some() {
            return Err(Error::Invalid(format!(
                "classification: label {:?} is listed twice; labels must be distinct",
                l.as_ref()
            )));
        }
    }
    let k = labels.len();
    let mut confusion = vec![vec![0u64; k + 1]; k];
    let mut correct = 0u64;
    let mut invalid = 0u64;
    for (n, (p, r)) in predictions.iter().zip(references).enumerate() {
        let Some(&t) = index.get(r.as_ref()) else {
            return Err(Error::Invalid(format!(
                "classification: reference {n} is {:?}, which is not one of the labels {:?}",
                r.as_ref(),
                labels.iter().map(AsRef::as_ref).collect::<Vec<_>>()
            )));
        };
        match index.get(p.as_ref()) {
            Some(&q) => {
                confusion[t][q] += 1;
                if q == t {
                    correct += 1;
                }
            }
            None => {
                confusion[t][k] += 1;
                invalid += 1;
            }
        }
    }
    let mut per_label = Vec::with_capacity(k);
    let (mut tp_all, mut pred_all, mut true_all) = (0u64, 0u64, 0u64);
    for (i, label) in labels.iter().enumerate() {
        let tp = confusion[i][i];
        let predicted: u64 = confusion.iter().map(|row| row[i]).sum();
        let support: u64 = confusion[i].iter().sum();
        tp_all += tp;
        pred_all += predicted;
        true_all += support;
        per_label.push(LabelScores {
            label: label.as_ref().to_owned(),
            scores: prf(tp, predicted, support),
            support,
            predicted,
        });
    }
    let mean = |f: fn(&Prf) -> f64| per_label.iter().map(|l| f(&l.scores)).sum::<f64>() / k as f64;
    let macro_avg = Prf {
        precision: mean(|s| s.precision),
        recall: mean(|s| s.recall),
        f1: mean(|s| s.f1),
    };
    let total = predictions.len() as u64;
    Ok(ClassificationReport {
        labels: labels.iter().map(|l| l.as_ref().to_owned()).collect(),
        accuracy: 100.0 * ratio(correct, total),
        per_label,
        macro_avg,
        micro_avg: prf(tp_all, pred_all, true_all),
        confusion,
        invalid,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_predictions_are_wrong_and_counted() {
        let r = classification_report(
            &["yes", "no", "maybe", "yes"],
            &["yes", "no", "no", "no"],
            &["yes", "no"],
        )
        .unwrap();
        assert_eq!(r.accuracy, 50.0);
        assert_eq!(r.invalid, 1);
        assert_eq!(r.confusion, [vec![1, 0, 0], vec![1, 1, 1]]);
        // micro precision: 2 true positives of 3 valid predictions.
        assert!((r.micro_avg.precision - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn bad_inputs() {
        assert!(classification_report(&["a"], &["b"], &["a"]).is_err());
        assert!(classification_report(&["a"], &["a"], &["a", "a"]).is_err());
        let none: [&str; 0] = [];
        assert!(classification_report(&["a"], &["a"], &none).is_err());
    }
}
