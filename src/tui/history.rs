//! What a front end remembers of a run: its curves, latest numbers,
//! samples and event log, accumulated from `TrainEvent`s (live from the
//! worker's channel, or replayed from `events.jsonl`). No drawing here:
//! the views borrow it.

use std::collections::{BTreeMap, VecDeque};

use crate::metrics::ClassificationReport;
use crate::train::events::{FinishReason, LrSource, TrainEvent};

/// Points a curve keeps before it halves its resolution.
pub const CURVE_POINTS: usize = 2048;
/// Lines the event log keeps (the whole log is in `events.jsonl`).
const LOG_LINES: usize = 500;
/// Distinct sample inputs kept.
const SAMPLE_INPUTS: usize = 16;

/// The three x-axes a curve can be drawn over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Tokens,
    /// Seconds of training.
    Time,
}

impl XAxis {
    pub fn next(self) -> XAxis {
        match self {
            XAxis::Step => XAxis::Tokens,
            XAxis::Tokens => XAxis::Time,
            XAxis::Time => XAxis::Step,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens",
            XAxis::Time => "time (s)",
        }
    }
}

/// One point of a curve, placed on every x-axis at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: f64,
    pub tokens: f64,
    pub time: f64,
    pub y: f64,
}

impl Point {
    pub fn x(&self, axis: XAxis) -> f64 {
        match axis {
            XAxis::Step => self.step,
            XAxis::Tokens => self.tokens,
            XAxis::Time => self.time,
        }
    }
}

/// A series that keeps its whole history in bounded memory: past
/// `CURVE_POINTS` points, neighbours are merged in pairs and each kept
/// point stands for twice as many raw ones. The start is never dropped.
#[derive(Debug, Clone)]
pub struct Curve {
    points: Vec<Point>,
    cap: usize,
    /// Raw points per kept point.
    stride: usize,
    pending: Option<(Point, usize)>,
    raw: u64,
}

impl Default for Curve {
    fn default() -> Self {
        Curve::with_capacity(CURVE_POINTS)
    }
}

impl Curve {
    pub fn with_capacity(cap: usize) -> Self {
        Curve {
            points: Vec::with_capacity(cap.min(1024)),
            cap: cap.max(2),
            stride: 1,
            pending: None,
            raw: 0,
        }
    }

    /// Adds a point; non-finite values (a diverging loss) are not drawn.
    pub fn push(&mut self, p: Point) {
        if !p.y.is_finite() {
            return;
        }
        self.raw += 1;
        let (acc, n) = match self.pending.take() {
            None => (p, 1),
            Some((acc, n)) => (merge(acc, n, p, 1), n + 1),
        };
        if n < self.stride {
            self.pending = Some((acc, n));
            return;
        }
        self.points.push(acc);
        if self.points.len() >= self.cap {
            self.points = self
                .points
                .chunks(2)
                .map(|c| match c {
                    [a, b] => merge(*a, 1, *b, 1),
                    [a] => *a,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            self.stride *= 2;
        }
    }

    /// The kept points, the partly filled last one included.
    pub fn points(&self) -> impl Iterator<Item = &Point> + '_ {
        self.points
            .iter()
            .chain(self.pending.as_ref().map(|(p, _)| p))
    }

    pub fn len(&self) -> usize {
        self.points.len() + usize::from(self.pending.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many raw points went in.
    pub fn raw_len(&self) -> u64 {
        self.raw
    }

    pub fn last(&self) -> Option<Point> {
        self.points().last().copied()
    }

    /// `(x, y)` pairs over `axis`, optionally smoothed by an exponential
    /// moving average with TensorBoard's debiasing (weight in `0..1`).
    pub fn xy(&self, axis: XAxis, smoothing: f64) -> Vec<(f64, f64)> {
        let w = smoothing.clamp(0.0, 0.999);
        let mut ema = 0.0;
        let mut debias = 1.0;
        self.points()
            .map(|p| {
                let y = if w > 0.0 {
                    ema = ema * w + (1.0 - w) * p.y;
                    debias *= w;
                    ema / (1.0 - debias)
                } else {
                    p.y
                };
                (p.x(axis), y)
            })
            .collect()
    }
}

/// The mean of two points weighted by how many raw points each stands for;
/// the x-axes take the later point's values, so a curve ends where the run is.
fn merge(a: Point, na: usize, b: Point, nb: usize) -> Point {
    let (na, nb) = (na as f64, nb as f64);
    Point {
        step: b.step,
        tokens: b.tokens,
        time: b.time,
        y: (a.y * na + b.y * nb) / (na + nb),
    }
}

/// A learning-rate change, for the marks on the charts.
#[derive(Debug, Clone, PartialEq)]
pub struct LrMark {
    pub step: u64,
    pub from: f64,
    pub to: f64,
    pub by: LrSource,
}

/// The latest generation for one validation input.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLine {
    pub step: u64,
    pub input: String,
    pub target: String,
    pub output: String,
}

/// What kind of line the log holds, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Info,
    Good,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub kind: LogKind,
    pub text: String,
}

/// Where a run stands, as its events tell it.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// No `Started` yet (preparing data, training the tokenizer).
    Preparing,
    Training,
    Paused(String),
    Finished(FinishReason),
    Failed(String),
}

impl Phase {
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Training => "training",
            Phase::Paused(_) => "paused",
            Phase::Finished(FinishReason::Completed) => "finished",
            Phase::Finished(FinishReason::Stopped) => "stopped",
            Phase::Failed(_) => "failed",
        }
    }

    pub fn is_over(&self) -> bool {
        matches!(self, Phase::Finished(_) | Phase::Failed(_))
    }
}

/// Everything the dashboard and the compare view draw of one run.
#[derive(Debug, Clone)]
pub struct RunHistory {
    pub id: String,
    pub phase: Phase,
    pub device: String,
    pub params: usize,
    pub tokens_per_step: usize,
    pub total_steps: u64,
    pub step: u64,
    pub tokens_seen: u64,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    /// Seconds of training, resumes included.
    pub elapsed: f64,
    /// Wall-clock time of the first event (seconds since the epoch).
    pub first_time: Option<f64>,
    pub train_loss: Curve,
    pub val_loss: Curve,
    pub lr_curve: Curve,
    pub throughput: Curve,
    pub grad_norms: Curve,
    pub lr_marks: Vec<LrMark>,
    /// Steps where the run was resumed from a checkpoint.
    pub resume_marks: Vec<u64>,
    pub last_eval: Option<(u64, f64, BTreeMap<String, f64>)>,
    /// The latest eval's classification report (labels, per-label scores,
    /// confusion matrix), for a classification task.
    pub last_classification: Option<(u64, ClassificationReport)>,
    pub best_val_loss: Option<f64>,
    pub samples: Vec<SampleLine>,
    pub log: VecDeque<LogLine>,
    pub warnings: usize,
    pub last_checkpoint: Option<u64>,
    /// Steps the event log recorded.
    pub events: u64,
}

impl RunHistory {
    pub fn new(id: impl Into<String>) -> Self {
        RunHistory {
            id: id.into(),
            phase: Phase::Preparing,
            device: String::new(),
            params: 0,
            tokens_per_step: 0,
            total_steps: 0,
            step: 0,
            tokens_seen: 0,
            loss: None,
            lr: None,
            grad_norm: None,
            tokens_per_sec: None,
            elapsed: 0.0,
            first_time: None,
            train_loss: Curve::default(),
            val_loss: Curve::default(),
            lr_curve: Curve::default(),
            throughput: Curve::default(),
            grad_norms: Curve::default(),
            lr_marks: Vec::new(),
            resume_marks: Vec::new(),
            last_eval: None,
            last_classification: None,
            best_val_loss: None,
            samples: Vec::new(),
            log: VecDeque::new(),
            warnings: 0,
            last_checkpoint: None,
            events: 0,
        }
    }

    /// A run's history from its whole event log.
    pub fn from_events<'a>(id: &str, events: impl IntoIterator<Item = &'a TrainEvent>) -> Self {
        let mut h = RunHistory::new(id);
        for e in events {
            h.apply(e);
        }
        h
    }

    fn point(&self, y: f64) -> Point {
        Point {
            step: self.step as f64,
            tokens: self.tokens_seen as f64,
            time: self.elapsed,
            y,
        }
    }

    fn log_line(&mut self, kind: LogKind, text: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { kind, text });
    }

    /// Takes one event into the history.
    pub fn apply(&mut self, event: &TrainEvent) {
        self.events += 1;
        if self.first_time.is_none() {
            self.first_time = Some(event.time()).filter(|t| t.is_finite());
        }
        match event {
            TrainEvent::Started {
                params,
                device,
                tokens_per_step,
                step,
                total_steps,
                resumed,
                ..
            } => {
                self.params = *params;
                self.device = device.clone();
                self.tokens_per_step = *tokens_per_step;
                self.total_steps = *total_steps;
                self.step = *step;
                self.phase = Phase::Training;
                if *resumed {
                    self.resume_marks.push(*step);
                }
                self.log_line(LogKind::Info, event.describe());
            }
            TrainEvent::Step {
                step,
                tokens_seen,
                loss,
                lr,
                grad_norm,
                tokens_per_sec,
                elapsed,
                ..
            } => {
                self.step = *step;
                self.tokens_seen = *tokens_seen;
                self.elapsed = *elapsed;
                self.loss = Some(*loss);
                self.lr = Some(*lr);
                self.grad_norm = Some(*grad_norm);
                self.tokens_per_sec = Some(*tokens_per_sec);
                if matches!(self.phase, Phase::Preparing) {
                    self.phase = Phase::Training;
                }
                self.train_loss.push(self.point(*loss));
                self.lr_curve.push(self.point(*lr));
                self.throughput.push(self.point(*tokens_per_sec));
                self.grad_norms.push(self.point(*grad_norm));
            }
            TrainEvent::Eval {
                step,
                loss,
                metrics,
                classification,
                ..
            } => {
                if let Some(report) = classification {
                    self.last_classification = Some((*step, report.clone()));
                }
                self.val_loss.push(self.point(*loss));
                if loss.is_finite() && self.best_val_loss.is_none_or(|b| *loss < b) {
                    self.best_val_loss = Some(*loss);
                }
                self.last_eval = Some((*step, *loss, metrics.clone()));
                self.log_line(LogKind::Info, event.describe());
            }
            TrainEvent::Sample {
                step,
                input,
                target,
                output,
                ..
            } => {
                let line = SampleLine {
                    step: *step,
                    input: input.clone(),
                    target: target.clone(),
                    output: output.clone(),
                };
                if let Some(s) = self.samples.iter_mut().find(|s| s.input == *input) {
                    *s = line;
                } else if self.samples.len() < SAMPLE_INPUTS {
                    self.samples.push(line);
                }
            }
            TrainEvent::LrChanged {
                step, from, to, by, ..
            } => {
                self.lr_marks.push(LrMark {
                    step: *step,
                    from: *from,
                    to: *to,
                    by: *by,
                });
                self.lr = Some(*to);
                self.log_line(LogKind::Good, event.describe());
            }
            TrainEvent::Checkpoint { step, .. } => {
                self.last_checkpoint = Some(*step);
                self.log_line(LogKind::Info, event.describe());
            }
            TrainEvent::Paused { reason, .. } => {
                self.phase = Phase::Paused(reason.clone());
                self.log_line(LogKind::Warning, event.describe());
            }
            TrainEvent::Resumed { .. } => {
                self.phase = Phase::Training;
                self.log_line(LogKind::Good, event.describe());
            }
            TrainEvent::Warning { .. } => {
                self.warnings += 1;
                self.log_line(LogKind::Warning, event.describe());
            }
            TrainEvent::Info { .. } => self.log_line(LogKind::Info, event.describe()),
            TrainEvent::Finished { reason, .. } => {
                self.phase = Phase::Finished(*reason);
                self.log_line(LogKind::Good, event.describe());
            }
            TrainEvent::Failed { error, .. } => {
                self.phase = Phase::Failed(error.clone());
                self.log_line(LogKind::Error, event.describe());
            }
        }
    }

    /// Seconds left at the recent pace, while training.
    pub fn eta(&self) -> Option<f64> {
        if self.phase.is_over() || self.step == 0 || self.total_steps <= self.step {
            return None;
        }
        let per_step = self.elapsed / self.step as f64;
        Some(per_step * (self.total_steps - self.step) as f64)
    }

    /// 0..1 of the configured steps.
    pub fn progress(&self) -> f64 {
        if self.total_steps == 0 {
            return 0.0;
        }
        (self.step as f64 / self.total_steps as f64).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u64, y: f64) -> Point {
        Point {
            step: i as f64,
            tokens: i as f64 * 10.0,
            time: i as f64,
            y,
        }
    }

    #[test]
    fn a_curve_keeps_its_start_and_end_in_bounded_memory() {
        let mut c = Curve::with_capacity(64);
        for i in 1..=100_000u64 {
            c.push(p(i, i as f64));
        }
        assert!(c.len() <= 64, "{}", c.len());
        assert_eq!(c.raw_len(), 100_000);
        let pts: Vec<Point> = c.points().copied().collect();
        // The first kept point averages the first raw ones: the start is there.
        assert!(pts[0].step <= 100_000.0 / 32.0, "{:?}", pts[0]);
        assert!(pts[0].y < 100_000.0 / 32.0);
        assert_eq!(c.last().unwrap().step, 100_000.0);
        // Means of consecutive raw points: a straight line stays straight.
        for w in pts.windows(2) {
            assert!(w[0].step < w[1].step);
            assert!(w[0].y < w[1].y);
        }
    }

    #[test]
    fn smoothing_is_debiased_and_zero_means_raw() {
        let mut c = Curve::default();
        for (i, y) in [4.0, 2.0, 4.0, 2.0].into_iter().enumerate() {
            c.push(p(i as u64, y));
        }
        assert_eq!(
            c.xy(XAxis::Step, 0.0)
                .iter()
                .map(|x| x.1)
                .collect::<Vec<_>>(),
            vec![4.0, 2.0, 4.0, 2.0]
        );
        let s = c.xy(XAxis::Step, 0.5);
        // TensorBoard's debiased EMA starts at the first value.
        assert!((s[0].1 - 4.0).abs() < 1e-12);
        assert!((s[1].1 - (0.5 * 2.0 + 0.25 * 4.0) / 0.75).abs() < 1e-12);
        assert_eq!(c.xy(XAxis::Tokens, 0.0)[1].0, 10.0);
    }

    #[test]
    fn non_finite_values_are_not_drawn() {
        let mut c = Curve::default();
        c.push(p(1, f64::NAN));
        c.push(p(2, f64::INFINITY));
        c.push(p(3, 1.0));
        assert_eq!(c.len(), 1);
    }
}
