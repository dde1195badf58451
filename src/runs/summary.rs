//! A run's status and headline numbers, derived from its folder.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Run;
use crate::train::events::{FinishReason, TrainEvent};

/// Where a run stands, from its lock and its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No events yet.
    New,
    /// A live process holds the run's lock.
    Running,
    /// It reached its configured steps.
    Finished,
    /// Someone stopped it; it can be resumed.
    Stopped,
    /// It reported a failure.
    Failed,
    /// It started and never reported an end, and no process holds it: the
    /// process died (a crash, `kill -9`, a power cut). It can be resumed
    /// from its last checkpoint.
    Crashed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::New => "new",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "failed",
            RunStatus::Crashed => "crashed",
        }
    }

    /// The status its events alone say, for a run nobody holds.
    pub fn from_events(events: &[TrainEvent]) -> RunStatus {
        if events.is_empty() {
            return RunStatus::New;
        }
        let last_start = events
            .iter()
            .rposition(|e| matches!(e, TrainEvent::Started { .. }));
        let after_start = &events[last_start.map_or(0, |i| i + 1)..];
        match after_start.iter().rev().find(|e| e.is_terminal()) {
            Some(TrainEvent::Finished {
                reason: FinishReason::Completed,
                ..
            }) => RunStatus::Finished,
            Some(TrainEvent::Finished {
                reason: FinishReason::Stopped,
                ..
            }) => RunStatus::Stopped,
            Some(_) => RunStatus::Failed,
            None => RunStatus::Crashed,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the run list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    /// The step of the last event; 0 with none.
    pub steps: u64,
    /// The lowest finite validation loss.
    pub best_val_loss: Option<f64>,
    /// The median of the last few steps' throughput.
    pub tokens_per_sec: Option<f64>,
    /// Seconds since the Unix epoch: the first `Started` event, else when
    /// the folder was made.
    pub started: Option<f64>,
    /// The newest complete checkpoint's step.
    pub last_checkpoint: Option<u64>,
    /// What is wrong with the folder, in words (a missing config, a torn or
    /// unreadable event log), when something is.
    pub problem: Option<String>,
}

/// How many recent steps the throughput is the median of.
const RECENT_STEPS: usize = 20;

impl Run {
    /// The run's status now.
    pub fn status(&self) -> RunStatus {
        if self.is_locked() {
            return RunStatus::Running;
        }
        match self.read_events() {
            Ok(read) => RunStatus::from_events(&read.events),
            Err(_) => RunStatus::Crashed,
        }
    }

    /// The run summarised from its folder. Never fails: what cannot be read
    /// is said in `problem`.
    pub fn summary(&self) -> RunSummary {
        let mut problems = Vec::new();
        let config = self.config_path();
        match std::fs::read_to_string(&config) {
            Ok(text) => {
                if let Err(e) = toml::from_str::<toml::Table>(&text) {
                    problems.push(format!("config.toml is not valid TOML: {}", e.message()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push("no config.toml (a run folder left half-made)".to_string());
            }
            Err(e) => problems.push(format!("config.toml cannot be read: {e}")),
        }

        let events = match self.read_events() {
            Ok(read) => {
                problems.extend(read.problem());
                read.events
            }
            Err(e) => {
                problems.push(format!("events.jsonl cannot be read: {e}"));
                Vec::new()
            }
        };

        let status = if self.is_locked() {
            RunStatus::Running
        } else {
            RunStatus::from_events(&events)
        };
        let steps = events.last().and_then(TrainEvent::step).unwrap_or(0);
        let best_val_loss = events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Eval { loss, .. } if loss.is_finite() => Some(*loss),
                _ => None,
            })
            .min_by(f64::total_cmp);
        let mut recent: Vec<f64> = events
            .iter()
            .rev()
            .filter_map(|e| match e {
                TrainEvent::Step { tokens_per_sec, .. } if tokens_per_sec.is_finite() => {
                    Some(*tokens_per_sec)
                }
                _ => None,
            })
            .take(RECENT_STEPS)
            .collect();
        recent.sort_by(f64::total_cmp);
        let tokens_per_sec = recent.get(recent.len() / 2).copied();
        let started = events
            .iter()
            .find_map(|e| match e {
                TrainEvent::Started { time, .. } if time.is_finite() => Some(*time),
                _ => None,
            })
            .or_else(|| folder_time(self));
        let last_checkpoint = match self.checkpoints() {
            Ok(all) => all.last().map(|(step, _)| *step),
            Err(e) => {
                problems.push(format!("checkpoints cannot be listed: {e}"));
                None
            }
        };

        RunSummary {
            id: self.id.clone(),
            name: self.name(),
            status,
            steps,
            best_val_loss,
            tokens_per_sec,
            started,
            last_checkpoint,
            problem: if problems.is_empty() {
                None
            } else {
                Some(problems.join("; "))
            },
        }
    }
}

/// When the run folder was made (or, where the file system does not keep
/// that, last changed), as seconds since the Unix epoch.
fn folder_time(run: &Run) -> Option<f64> {
    let meta = std::fs::metadata(run.dir()).ok()?;
    let t = meta.created().or_else(|_| meta.modified()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(step: u64) -> TrainEvent {
        TrainEvent::Started {
            run: "r".into(),
            params: 1,
            device: "cpu".into(),
            tokens_per_step: 1,
            step,
            total_steps: 100,
            resumed: step > 0,
            time: 1.0,
        }
    }

    fn finished(step: u64, reason: FinishReason) -> TrainEvent {
        TrainEvent::Finished {
            step,
            reason,
            time: 2.0,
        }
    }

    #[test]
    fn status_from_events() {
        use RunStatus::*;
        assert_eq!(RunStatus::from_events(&[]), New);
        assert_eq!(RunStatus::from_events(&[started(0)]), Crashed);
        assert_eq!(
            RunStatus::from_events(&[started(0), finished(5, FinishReason::Stopped)]),
            Stopped
        );
        // Stopped, resumed, then the process died: crashed.
        assert_eq!(
            RunStatus::from_events(&[started(0), finished(5, FinishReason::Stopped), started(5)]),
            Crashed
        );
        assert_eq!(
            RunStatus::from_events(&[
                started(0),
                finished(5, FinishReason::Stopped),
                started(5),
                finished(9, FinishReason::Completed)
            ]),
            Finished
        );
        let failed = TrainEvent::Failed {
            step: 3,
            error: "out of memory".into(),
            time: 3.0,
        };
        assert_eq!(RunStatus::from_events(&[started(0), failed]), Failed);
    }
}
