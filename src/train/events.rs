//! The messages between the training worker and its front ends: events out
//! (one a line in a run's `events.jsonl`), controls in. Plain data only,
//! so that they serialize as they are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::metrics::ClassificationReport;

/// Who changed the learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSource {
    User,
    Schedule,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It reached its configured number of steps.
    Completed,
    /// Someone stopped it (the stop control, Ctrl-C, SIGTERM).
    Stopped,
}

/// What the worker reports, in order. Each event carries the wall-clock
/// time it happened (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        run: String,
        params: usize,
        device: String,
        tokens_per_step: usize,
        /// The step it starts from: 0, or a checkpoint's step on resume.
        step: u64,
        /// The step it will end at; 0 in logs from before it was recorded.
        #[serde(default)]
        total_steps: u64,
        resumed: bool,
        time: f64,
    },
    Step {
        step: u64,
        tokens_seen: u64,
        #[serde(with = "float")]
        loss: f64,
        lr: f64,
        #[serde(with = "float")]
        grad_norm: f64,
        tokens_per_sec: f64,
        /// Seconds of training in this run, resumes included.
        elapsed: f64,
        time: f64,
    },
    Eval {
        step: u64,
        #[serde(with = "float")]
        loss: f64,
        #[serde(with = "float")]
        perplexity: f64,
        /// Token accuracy, generation length, and the task's metrics
        /// (exact match, BLEU, chrF…): the numbers, flat.
        metrics: BTreeMap<String, f64>,
        /// A classification task's per-label scores and confusion matrix.
        /// Absent for other kinds, and in logs written before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classification: Option<ClassificationReport>,
        time: f64,
    },
    Sample {
        step: u64,
        input: String,
        target: String,
        output: String,
        time: f64,
    },
    LrChanged {
        step: u64,
        from: f64,
        to: f64,
        by: LrSource,
        time: f64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
        time: f64,
    },
    Paused {
        step: u64,
        reason: String,
        time: f64,
    },
    Resumed {
        step: u64,
        time: f64,
    },
    Warning {
        step: u64,
        message: String,
        time: f64,
    },
    /// Progress worth a line in the log that is not a problem (preparing
    /// data, training the tokenizer).
    Info {
        step: u64,
        message: String,
        time: f64,
    },
    Finished {
        step: u64,
        reason: FinishReason,
        time: f64,
    },
    Failed {
        step: u64,
        error: String,
        time: f64,
    },
}

impl TrainEvent {
    /// Ends the run's life in this process.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TrainEvent::Finished { .. } | TrainEvent::Failed { .. }
        )
    }

    /// The event as one line of text, for logs and plain output.
    pub fn describe(&self) -> String {
        match self {
            TrainEvent::Started {
                run,
                params,
                device,
                tokens_per_step,
                step,
                resumed,
                ..
            } => format!(
                "{} run {run} at step {step}: {params} parameters on {device}, {tokens_per_step} tokens a step",
                if *resumed { "resumed" } else { "started" }
            ),
            TrainEvent::Step {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_sec,
                ..
            } => format!(
                "step {step}: loss {loss:.4}, lr {lr:.3e}, grad norm {grad_norm:.3}, {tokens_per_sec:.0} tokens/s"
            ),
            TrainEvent::Eval {
                step,
                loss,
                perplexity,
                metrics,
                ..
            } => {
                let mut line =
                    format!("eval at step {step}: loss {loss:.4}, perplexity {perplexity:.2}");
                for (k, v) in metrics {
                    line.push_str(&format!(", {k} {v:.2}"));
                }
                line
            }
            TrainEvent::Sample {
                step,
                input,
                target,
                output,
                ..
            } => format!("sample at step {step}: {input:?} -> {output:?} (target {target:?})"),
            TrainEvent::LrChanged {
                step, from, to, by, ..
            } => format!(
                "learning rate {from:.3e} -> {to:.3e} at step {step} (by the {})",
                match by {
                    LrSource::User => "user",
                    LrSource::Schedule => "schedule",
                }
            ),
            TrainEvent::Checkpoint { step, path, .. } => {
                format!("checkpoint at step {step}: {}", path.display())
            }
            TrainEvent::Paused { step, reason, .. } => format!("paused at step {step}: {reason}"),
            TrainEvent::Resumed { step, .. } => format!("resumed at step {step}"),
            TrainEvent::Warning { step, message, .. } => {
                format!("warning at step {step}: {message}")
            }
            TrainEvent::Info { message, .. } => message.clone(),
            TrainEvent::Finished { step, reason, .. } => format!(
                "finished at step {step}: {}",
                match reason {
                    FinishReason::Completed => "completed",
                    FinishReason::Stopped => "stopped",
                }
            ),
            TrainEvent::Failed { step, error, .. } => format!("failed at step {step}: {error}"),
        }
    }

    /// When it happened (seconds since the Unix epoch).
    pub fn time(&self) -> f64 {
        match self {
            TrainEvent::Started { time, .. }
            | TrainEvent::Step { time, .. }
            | TrainEvent::Eval { time, .. }
            | TrainEvent::Sample { time, .. }
            | TrainEvent::LrChanged { time, .. }
            | TrainEvent::Checkpoint { time, .. }
            | TrainEvent::Paused { time, .. }
            | TrainEvent::Resumed { time, .. }
            | TrainEvent::Warning { time, .. }
            | TrainEvent::Info { time, .. }
            | TrainEvent::Finished { time, .. }
            | TrainEvent::Failed { time, .. } => *time,
        }
    }

    pub fn step(&self) -> Option<u64> {
        match self {
            TrainEvent::Started { step, .. }
            | TrainEvent::Step { step, .. }
            | TrainEvent::Eval { step, .. }
            | TrainEvent::Sample { step, .. }
            | TrainEvent::LrChanged { step, .. }
            | TrainEvent::Checkpoint { step, .. }
            | TrainEvent::Paused { step, .. }
            | TrainEvent::Resumed { step, .. }
            | TrainEvent::Warning { step, .. }
            | TrainEvent::Info { step, .. }
            | TrainEvent::Finished { step, .. }
            | TrainEvent::Failed { step, .. } => Some(*step),
        }
    }
}

/// What a front end can ask of a running worker. Each takes effect at the
/// next step boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub enum Control {
    /// Set the learning rate now; the schedule is rescaled from here on.
    SetLr {
        lr: f64,
    },
    /// Multiply the learning rate (and the rest of the schedule).
    ScaleLr {
        factor: f64,
    },
    Pause,
    Resume,
    SampleNow,
    CheckpointNow,
    /// Finish the current step, checkpoint, report finished.
    Stop,
}

/// A float that may be NaN or infinite (a diverging loss): JSON has no
/// such numbers, so they are written as the strings `"NaN"`, `"inf"`,
/// `"-inf"`, and read back from those (or from `null`, as NaN).
mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
        Null(()),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            Some(Repr::Num(v)) => Ok(v),
            Some(Repr::Text(t)) => match t.as_str() {
                "NaN" | "nan" => Ok(f64::NAN),
                "inf" | "Infinity" => Ok(f64::INFINITY),
                "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("not a number: {other}"))),
            },
            Some(Repr::Null(())) | None => Ok(f64::NAN),
        }
    }
}

/// Seconds since the Unix epoch, for event times.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_a_line() {
        let e = TrainEvent::LrChanged {
            step: 7,
            from: 1e-3,
            to: 2e-3,
            by: LrSource::User,
            time: 1.5,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"event\":\"lr_changed\""), "{line}");
        assert_eq!(serde_json::from_str::<TrainEvent>(&line).unwrap(), e);
    }

    #[test]
    fn a_diverged_loss_round_trips() {
        for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = TrainEvent::Step {
                step: 1,
                tokens_seen: 10,
                loss,
                lr: 1e-3,
                grad_norm: f64::NAN,
                tokens_per_sec: 5.0,
                elapsed: 1.0,
                time: 2.0,
            };
            let line = serde_json::to_string(&e).unwrap();
            let TrainEvent::Step {
                loss: back,
                grad_norm,
                ..
            } = serde_json::from_str::<TrainEvent>(&line).unwrap()
            else {
                panic!("{line}");
            };
            assert!(grad_norm.is_nan());
            assert!(back == loss || (back.is_nan() && loss.is_nan()), "{line}");
        }
    }

    #[test]
    fn an_eval_event_round_trips_with_and_without_its_confusion_matrix() {
        let report = crate::metrics::classification_report(
            &["yes", "no", "maybe"],
            &["yes", "yes", "no"],
            &["no", "yes"],
        )
        .unwrap();
        let mut metrics = BTreeMap::new();
        metrics.insert("accuracy".to_string(), report.accuracy);
        let e = TrainEvent::Eval {
            step: 3,
            loss: 1.25,
            perplexity: 1.25f64.exp(),
            metrics,
            classification: Some(report),
            time: 4.0,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"confusion\":[[0,0,1],[1,1,0]]"), "{line}");
        assert_eq!(serde_json::from_str::<TrainEvent>(&line).unwrap(), e);
        // An event log from before the field: it reads as no matrix.
        let old = r#"{"event":"eval","step":2,"loss":1.5,"perplexity":4.48,"metrics":{"token_accuracy":12.5},"time":3.0}"#;
        match serde_json::from_str::<TrainEvent>(old).unwrap() {
            TrainEvent::Eval {
                classification,
                metrics,
                ..
            } => {
                assert!(classification.is_none());
                assert_eq!(metrics["token_accuracy"], 12.5);
            }
            other => panic!("{other:?}"),
        }
        // And none is written when there is none.
        let plain = TrainEvent::Eval {
            step: 1,
            loss: 1.0,
            perplexity: 1.0f64.exp(),
            metrics: BTreeMap::new(),
            classification: None,
            time: 1.0,
        };
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("classification"));
    }
}
