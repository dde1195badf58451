//! The training worker: a named thread that owns the device and the model,
//! trains, evaluates and samples, writes every event to the run's
//! `events.jsonl` and sends it to the front end, and obeys controls at
//! step boundaries. The caller never waits on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::{ensure_prepared, ensure_tokenizer, DataState, ExampleStream};
use super::evaluate::token_hits;
use super::events::{now, Control, FinishReason, LrSource, TrainEvent};
use super::export::fitted_vocab;
use super::loss_scale::LossScale;
use super::optim::{clip_grad_norm, decay_all_but_norms, Optimizer};
use super::schedule::{LrSchedule, Schedule};
use crate::config::{DeviceChoice, Experiment, ObjectiveKind};
use crate::data::batch::{collate, Batch, Example, Padding};
use crate::data::stream::Split;
use crate::data::tokenizer::T5Tokenizer;
use crate::error::{Error, Result};
use crate::metrics::{task_scores, ClassificationReport, TaskKind};
use crate::model::generate::{generate, GenerateOptions};
use crate::model::{cross_entropy, ForwardMode, T5};
use crate::runs::{EventLog, Run, RunLock, RunStore};

/// Picks the device: `auto` is the first GPU the build supports, else the CPU.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    let dev = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(i) => Device::new_cuda(i).map_err(|e| {
            Error::Invalid(format!(
                "device cuda:{i} is not available ({e}); build with `--features cuda` on a machine with an NVIDIA GPU, or set [train] device = \"cpu\""
            ))
        })?,
        DeviceChoice::Metal(i) => Device::new_metal(i).map_err(|e| {
            Error::Invalid(format!(
                "device metal:{i} is not available ({e}); build with `--features metal` on a Mac, or set [train] device = \"cpu\""
            ))
        })?,
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).unwrap_or(Device::Cpu)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }
        }
    };
    Ok(dev)
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// A running (or finished) training worker.
pub struct TrainHandle {
    pub run_id: String,
    pub run_dir: PathBuf,
    events: Receiver<TrainEvent>,
    controls: Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TrainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainHandle")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl TrainHandle {
    /// A handle over channels the caller made, with no thread behind it:
    /// for front ends' tests, which play the worker's part themselves.
    pub fn from_channels(
        run_id: impl Into<String>,
        run_dir: PathBuf,
        events: Receiver<TrainEvent>,
        controls: Sender<Control>,
    ) -> TrainHandle {
        TrainHandle {
            run_id: run_id.into(),
            run_dir,
            events,
            controls,
            thread: None,
        }
    }

    /// Sends a control; it takes effect at the next step boundary. A
    /// worker that has ended ignores it.
    pub fn send(&self, control: Control) {
        let _ = self.controls.send(control);
    }

    pub fn controls(&self) -> Sender<Control> {
        self.controls.clone()
    }

    /// The events so far, without waiting. `Err(Disconnected)` once the
    /// worker has ended and every event was read.
    pub fn try_recv(&self) -> std::result::Result<TrainEvent, TryRecvError> {
        self.events.try_recv()
    }

    pub fn recv_timeout(&self, d: Duration) -> std::result::Result<TrainEvent, RecvTimeoutError> {
        self.events.recv_timeout(d)
    }

    /// Waits for the worker's thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a new run of `exp` in `store`. `config_toml` is the resolved
/// config as written to the run folder.
pub fn start(store: &RunStore, exp: Experiment, config_toml: &str) -> Result<TrainHandle> {
    let run = store.create(&exp.name, config_toml)?;
    let lock = run.lock()?;
    spawn(store.clone(), run, lock, exp, None)
}

/// How a run is resumed.
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    /// Config overrides (`section.key=value`).
    pub set: Vec<String>,
    /// Train to this step instead of the configured number.
    pub steps: Option<usize>,
    /// The learning rate from the checkpoint's step on (the schedule is
    /// scaled to reach it there): how a diverged run is rolled back to its
    /// last checkpoint and continued more gently.
    pub lr: Option<f64>,
}

/// Continues a stopped or crashed run from its last checkpoint (or from the
/// start, if it never wrote one). `steps` moves the end further.
pub fn resume(
    store: &RunStore,
    run_id: &str,
    set: &[String],
    steps: Option<usize>,
) -> Result<TrainHandle> {
    resume_with(
        store,
        run_id,
        &ResumeOptions {
            set: set.to_vec(),
            steps,
            lr: None,
        },
    )
}

/// [`resume`] with every option.
pub fn resume_with(store: &RunStore, run_id: &str, opts: &ResumeOptions) -> Result<TrainHandle> {
    if let Some(lr) = opts.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Invalid(format!(
                "--lr {lr}: a learning rate is a number above 0, e.g. 1e-4"
            )));
        }
    }
    let run = super::export::find_run(store, run_id)?;
    let lock = run.lock()?;
    let text = run.read_config()?;
    let stored = crate::config::Experiment::from_toml_str::<&str>(&text, &run.config_path(), &[])?;
    let mut exp = crate::config::Experiment::from_toml_str(&text, &run.config_path(), &opts.set)?;
    if let Some(s) = opts.steps {
        exp.train.steps = s;
    }
    // The checkpoint's schedule replaces the config's on resume, so a
    // `--set train.learning_rate=…` would do nothing: it means --lr.
    let lr = opts.lr.or_else(|| {
        (exp.train.learning_rate != stored.train.learning_rate).then_some(exp.train.learning_rate)
    });
    spawn(store.clone(), run, lock, exp, Some(lr))
}

/// `resume` is `Some(new learning rate, if any)` when the run is resumed.
fn spawn(
    store: RunStore,
    run: Run,
    lock: RunLock,
    exp: Experiment,
    resume: Option<Option<f64>>,
) -> Result<TrainHandle> {
    let resumed = resume.is_some();
    let new_lr = resume.flatten();
    let (ev_tx, ev_rx) = mpsc::channel();
    let (ctl_tx, ctl_rx) = mpsc::channel();
    let run_id = run.id().to_string();
    let run_dir = run.dir().to_path_buf();
    let thread = std::thread::Builder::new()
        .name(format!("t5-train-{run_id}"))
        .spawn(move || {
            let _lock = lock;
            let log = match run.event_log() {
                Ok(l) => l,
                Err(e) => {
                    let _ = ev_tx.send(TrainEvent::Failed {
                        step: 0,
                        error: e.to_string(),
                        time: now(),
                    });
                    return;
                }
            };
            let mut out = Outbox {
                log,
                tx: ev_tx,
                write_error: None,
                // A resume that cannot start (a damaged checkpoint, an
                // edited config) leaves the run's log as it was.
                held: resumed.then(Vec::new),
            };
            let mut step = 0;
            let result = Worker::setup(&store, &run, exp, resumed, new_lr, &mut out, ctl_rx)
                .and_then(|mut w| {
                    out.release();
                    let r = w.run(&mut out);
                    step = w.step;
                    r
                });
            if let Err(e) = result {
                out.emit(TrainEvent::Failed {
                    step,
                    error: e.to_string(),
                    time: now(),
                });
            }
        })
        .map_err(|e| Error::Other(format!("could not start the training thread: {e}")))?;
    Ok(TrainHandle {
        run_id,
        run_dir,
        events: ev_rx,
        controls: ctl_tx,
        thread: Some(thread),
    })
}

/// Where events go: the run's log first (never thinned), then the front end.
struct Outbox {
    log: EventLog,
    tx: Sender<TrainEvent>,
    /// A write of the run's data that failed (the log, a checkpoint), in
    /// words: the worker pauses on it rather than train on unrecorded.
    write_error: Option<String>,
    /// Events held back from the log until a resume's setup succeeds.
    held: Option<Vec<TrainEvent>>,
}

impl Outbox {
    fn emit(&mut self, event: TrainEvent) {
        if let Some(held) = self.held.as_mut() {
            held.push(event.clone());
            let _ = self.tx.send(event);
            return;
        }
        self.append(&event);
        let _ = self.tx.send(event);
    }

    /// Writes the held events to the log; from now on events go straight
    /// to it.
    fn release(&mut self) {
        for event in self.held.take().unwrap_or_default() {
            self.append(&event);
        }
    }

    fn append(&mut self, event: &TrainEvent) {
        if let Err(e) = self.log.append(event) {
            // The log is the run's history: a failed write is reported once
            // and makes the worker pause (see `Worker::run`).
            if self.write_error.is_none() {
                self.write_error = Some(format!("could not write the event log: {e}"));
            }
        }
    }
}

/// Everything a checkpoint holds beside the weights and optimizer tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    step: u64,
    tokens_seen: u64,
    elapsed: f64,
    schedule: LrSchedule,
    optimizer: serde_json::Value,
    /// The dropout RNG: its seed and position in the stream.
    rng_seed: [u8; 32],
    rng_word_pos: String,
    data: DataState,
    bad_steps: u32,
    /// f16's loss scale (absent in checkpoints from before it existed).
    #[serde(default)]
    loss_scale: LossScale,
}

struct Worker {
    exp: Experiment,
    run: Run,
    device: Device,
    model: T5,
    tokenizer: T5Tokenizer,
    optimizer: Optimizer,
    schedule: LrSchedule,
    train_data: ExampleStream,
    val_examples: Vec<Example>,
    controls: Receiver<Control>,
    mode: ForwardMode,
    step: u64,
    tokens_seen: u64,
    elapsed: f64,
    bad_steps: u32,
    /// Paused by the divergence guard: the weights are finite but not to
    /// be trusted, so stopping writes no checkpoint over the last good one.
    diverged: bool,
    loss_scale: LossScale,
    padding: Padding,
}

impl Worker {
    fn setup(
        store: &RunStore,
        run: &Run,
        mut exp: Experiment,
        resumed: bool,
        new_lr: Option<f64>,
        out: &mut Outbox,
        controls: Receiver<Control>,
    ) -> Result<Self> {
        let device = select_device(exp.train.device)?;
        let mut info = |message: String| {
            out.emit(TrainEvent::Info {
                step: 0,
                message,
                time: now(),
            })
        };
        let records = ensure_prepared(store.root(), &exp, &mut info)?;
        if !resumed && !run.tokenizer_path().exists() {
            // Fine-tuning keeps the tokenizer the weights were trained with.
            if let Some(src) = &exp.train.init_from {
                if let Some(tok) = pretrained_tokenizer(store, src) {
                    std::fs::copy(&tok, run.tokenizer_path())
                        .map_err(|e| Error::io(&run.tokenizer_path(), e))?;
                }
            }
        }
        let tokenizer = ensure_tokenizer(&exp, &records, &run.tokenizer_path(), &mut info)?;
        let mut note = |message: String| {
            out.emit(TrainEvent::Warning {
                step: 0,
                message,
                time: now(),
            })
        };
        let vocab = fitted_vocab(exp.model.vocab_size, &tokenizer);
        if vocab != exp.model.vocab_size {
            note(format!(
                "the model's vocab_size is {} but the tokenizer has {} tokens: using {vocab} (the tokenizer's, rounded up to a multiple of 128)",
                exp.model.vocab_size,
                tokenizer.vocab_size()
            ));
            exp.model.vocab_size = vocab;
        }
        // bf16 computes with f32 master weights and optimizer state; f16
        // would need loss scaling, which is not built yet.
        let compute = match exp.train.dtype {
            crate::config::Dtype::F32 => DType::F32,
            crate::config::Dtype::Bf16 => DType::BF16,
            crate::config::Dtype::F16 => DType::F16,
        };
        let mut loss_scale = LossScale::new(compute == DType::F16);

        let checkpoint = if resumed {
            run.latest_checkpoint()
        } else {
            None
        };
        // Whatever is wrong with the checkpoint, the message says which
        // file and how to go back to the one before.
        let damaged = |e: Error| match &checkpoint {
            Some((step, _)) => run.damaged_checkpoint(*step, e),
            None => e,
        };
        let state: Option<TrainState> = match &checkpoint {
            Some((_, dir)) => {
                let path = dir.join("state.json");
                let text =
                    std::fs::read_to_string(&path).map_err(|e| damaged(Error::io(&path, e)))?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    damaged(Error::checkpoint(
                        &path,
                        format!("not a valid training state ({e})"),
                    ))
                })?)
            }
            None => None,
        };
        let model = match &checkpoint {
            Some((_, dir)) => {
                T5::load_safetensors(&exp.model, &dir.join("model.safetensors"), &device)
                    .map_err(damaged)?
            }
            None => match &exp.train.init_from {
                Some(src) => load_pretrained(store, src, &exp, &device)?,
                None => T5::new_random(&exp.model, exp.train.seed, &device)?,
            },
        };
        let mut optimizer = Optimizer::new(
            &exp.train.optimizer_config(),
            model.params(),
            &decay_all_but_norms,
        )?;
        let mut schedule = LrSchedule::new(Schedule::new(
            exp.train.schedule_config(),
            exp.train.learning_rate,
            exp.train.steps as u64,
        )?);
        let mut rng = ChaCha8Rng::seed_from_u64(exp.train.seed.wrapping_add(1));
        let (mut step, mut tokens_seen, mut elapsed, mut bad_steps, mut data_state) =
            (0, 0, 0.0, 0, None);
        if let (Some(st), Some((_, dir))) = (state, &checkpoint) {
            let path = dir.join("optimizer.safetensors");
            let tensors = candle_core::safetensors::load(&path, &device).map_err(|e| {
                damaged(Error::checkpoint(
                    &path,
                    format!("not a readable safetensors file ({e})"),
                ))
            })?;
            optimizer
                .load_state(&tensors, &st.optimizer)
                .map_err(|e| damaged(Error::checkpoint(&path, e.to_string())))?;
            schedule = st.schedule;
            // A resume to another end stretches (or shortens) the decay.
            schedule.base.total_steps = exp.train.steps as u64;
            rng = ChaCha8Rng::from_seed(st.rng_seed);
            rng.set_word_pos(st.rng_word_pos.parse().unwrap_or(0));
            step = st.step;
            tokens_seen = st.tokens_seen;
            elapsed = st.elapsed;
            bad_steps = st.bad_steps;
            if loss_scale.enabled && st.loss_scale.enabled {
                loss_scale = st.loss_scale;
            }
            data_state = Some(st.data);
        }
        let train_data = ExampleStream::open(&exp, &records, &tokenizer, Split::Train, data_state)?;
        let mut val = ExampleStream::open(&exp, &records, &tokenizer, Split::Validation, None)?;
        let val_examples = val.take(exp.eval.batches.max(1) * exp.train.batch_size)?;
        if val_examples.is_empty() && exp.eval.every_steps > 0 {
            note("no validation examples (validation_fraction is 0 or the corpus is tiny): evaluation is off".into());
        }
        let padding = match train_data.target_length() {
            Some(t) => Padding::Fixed {
                input: exp.objective.input_length,
                target: t,
            },
            None => Padding::Longest,
        };
        let tokens_per_step = exp.train.batch_size
            * exp.train.grad_accum_steps.max(1)
            * (exp.objective.input_length
                + train_data.target_length().unwrap_or(
                    exp.objective
                        .target_length
                        .unwrap_or(exp.objective.input_length),
                ));
        out.emit(TrainEvent::Started {
            run: run.id().to_string(),
            params: model.num_parameters(),
            device: device_name(&device),
            tokens_per_step,
            step,
            total_steps: exp.train.steps as u64,
            resumed,
            time: now(),
        });
        if let Some(lr) = new_lr {
            let from = schedule.lr_at(step);
            schedule.set_lr(step, lr)?;
            out.emit(TrainEvent::LrChanged {
                step,
                from,
                to: schedule.lr_at(step),
                by: LrSource::User,
                time: now(),
            });
        }
        Ok(Self {
            exp,
            run: run.clone(),
            device,
            model,
            tokenizer,
            optimizer,
            schedule,
            train_data,
            val_examples,
            controls,
            mode: ForwardMode::train(rng).with_compute(compute),
            step,
            tokens_seen,
            elapsed,
            bad_steps,
            diverged: false,
            loss_scale,
            padding,
        })
    }

    fn batch(&self, examples: &[Example]) -> Result<Batch> {
        collate(
            examples,
            self.tokenizer.pad_id(),
            self.exp.model.decoder_start_token_id,
            self.padding,
            &self.device,
        )
    }

    /// Handles the controls that arrived; returns `Some(reason)` to stop.
    fn handle_controls(
        &mut self,
        out: &mut Outbox,
        paused: &mut bool,
    ) -> Result<Option<FinishReason>> {
        loop {
            let control = if *paused {
                match self.controls.recv_timeout(Duration::from_millis(200)) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => continue,
                    // The front end is gone: a paused run stops cleanly.
                    Err(RecvTimeoutError::Disconnected) => return Ok(Some(FinishReason::Stopped)),
                }
            } else {
                match self.controls.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(None),
                }
            };
            let step = self.step;
            match control {
                Control::SetLr { lr } => {
                    self.change_lr(out, |s| s.set_lr(step, lr));
                }
                Control::ScaleLr { factor } => {
                    self.change_lr(out, |s| s.scale_lr(factor));
                }
                Control::Pause => {
                    if !*paused {
                        *paused = true;
                        out.emit(TrainEvent::Paused {
                            step,
                            reason: "paused by the user".into(),
                            time: now(),
                        });
                    }
                }
                Control::Resume => {
                    if *paused {
                        *paused = false;
                        out.write_error = None;
                        out.emit(TrainEvent::Resumed { step, time: now() });
                    }
                }
                Control::SampleNow => self.samples(out)?,
                Control::CheckpointNow => self.checkpoint(out)?,
                Control::Stop => return Ok(Some(FinishReason::Stopped)),
            }
        }
    }

    /// A user's change to the learning rate: applied from this step on and
    /// echoed as an event, or refused with a warning.
    fn change_lr(&mut self, out: &mut Outbox, change: impl FnOnce(&mut LrSchedule) -> Result<f64>) {
        let step = self.step;
        let from = self.schedule.lr_at(step);
        match change(&mut self.schedule) {
            Ok(_) => out.emit(TrainEvent::LrChanged {
                step,
                from,
                to: self.schedule.lr_at(step),
                by: LrSource::User,
                time: now(),
            }),
            Err(e) => out.emit(warning(step, e.to_string())),
        }
    }

    fn run(&mut self, out: &mut Outbox) -> Result<()> {
        let total = self.exp.train.steps as u64;
        let mut paused = false;
        let reason = loop {
            if let Some(reason) = self.handle_controls(out, &mut paused)? {
                break reason;
            }
            if let Some(err) = out.write_error.take() {
                // The run's data could not be written (a full disk): pause
                // rather than train on without a record or a checkpoint.
                paused = true;
                out.emit(TrainEvent::Paused {
                    step: self.step,
                    reason: format!("{err}; free space, then resume"),
                    time: now(),
                });
                continue;
            }
            if paused {
                continue;
            }
            if self.step >= total {
                break FinishReason::Completed;
            }
            self.train_step(out, &mut paused)?;
            let step = self.step;
            let every = |n: usize| n > 0 && step.is_multiple_of(n as u64);
            if every(self.exp.eval.every_steps) {
                self.evaluate(out)?;
            }
            if every(self.exp.eval.samples_every_steps) {
                self.samples(out)?;
            }
            // Never a checkpoint of a step the divergence guard skipped.
            if every(self.exp.checkpoint.every_steps) && self.step < total && self.bad_steps == 0 {
                self.checkpoint(out)?;
            }
        };
        if self.diverged {
            let last = self
                .run
                .latest_checkpoint()
                .map_or("none yet".to_string(), |(s, _)| format!("step {s}"));
            out.emit(warning(
                self.step,
                format!(
                    "no checkpoint written: the loss diverged; the last checkpoint ({last}) is kept: `t5-tui resume {} --lr <lower rate>` continues from it",
                    self.run.id()
                ),
            ));
        } else {
            self.checkpoint(out)?;
        }
        out.emit(TrainEvent::Finished {
            step: self.step,
            reason,
            time: now(),
        });
        Ok(())
    }

    fn train_step(&mut self, out: &mut Outbox, paused: &mut bool) -> Result<()> {
        let started = Instant::now();
        let accum = self.exp.train.grad_accum_steps.max(1);
        let lr = self.schedule.lr_at(self.step);
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        let mut finite = true;
        for _ in 0..accum {
            let examples = self.train_data.take(self.exp.train.batch_size)?;
            let batch = self.batch(&examples)?;
            tokens += batch.input_tokens + batch.target_tokens;
            let logits = self.model.forward(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.decoder_input_ids,
                Some(&batch.decoder_attention_mask),
                &mut self.mode,
            )?;
            let loss = cross_entropy(&logits, &batch.labels, None, self.exp.train.z_loss)?;
            let value = loss.loss.to_scalar::<f32>()? as f64;
            finite &= value.is_finite();
            loss_sum += value;
            // f16 scales the loss up so that small gradients survive.
            let factor = self.loss_scale.factor() / accum as f64;
            let scaled = if factor != 1.0 {
                (loss.loss * factor)?
            } else {
                loss.loss
            };
            let g = scaled.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (_, var) in self.model.params() {
                        if let (Some(a), Some(b)) =
                            (acc.get(var.as_tensor()), g.get(var.as_tensor()))
                        {
                            let sum = (a + b)?;
                            acc.insert(var.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let mut grads = grads.ok_or_else(|| Error::Other("no micro-batch ran".into()))?;
        let loss = loss_sum / accum as f64;
        let scale = self.loss_scale.factor();
        if scale != 1.0 {
            for (_, var) in self.model.params() {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let unscaled = (g / scale)?;
                    grads.insert(var.as_tensor(), unscaled);
                }
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, self.model.params(), self.exp.train.grad_clip)?;
        self.step += 1;
        let overflow = finite && !grad_norm.is_finite();
        if self.loss_scale.update(overflow) {
            // f16 overflowed at this scale: not a divergence, a smaller scale.
            out.emit(TrainEvent::Warning {
                step: self.step,
                message: format!(
                    "step {} skipped: f16 gradients overflowed at loss scale {scale}; the scale is now {}",
                    self.step,
                    self.loss_scale.factor()
                ),
                time: now(),
            });
        } else if !finite || !grad_norm.is_finite() {
            // The divergence guard: no NaN or infinity reaches the weights.
            self.bad_steps += 1;
            out.emit(TrainEvent::Warning {
                step: self.step,
                message: format!(
                    "step {} skipped: loss {loss}, gradient norm {grad_norm} (not finite; {} such steps in a row)",
                    self.step, self.bad_steps
                ),
                time: now(),
            });
            if self.bad_steps as usize >= self.exp.train.max_bad_steps.max(1) {
                *paused = true;
                self.diverged = true;
                out.emit(TrainEvent::Paused {
                    step: self.step,
                    reason: format!(
                        "{} steps in a row had a non-finite loss or gradient: lower the learning rate and resume, or stop (no checkpoint is written over the last one) and `t5-tui resume {} --lr <lower rate>` to roll back to it",
                        self.bad_steps,
                        self.run.id()
                    ),
                    time: now(),
                });
            }
        } else {
            self.bad_steps = 0;
            self.diverged = false;
            self.optimizer.step(&grads, lr)?;
        }
        self.tokens_seen += tokens as u64;
        let secs = started.elapsed().as_secs_f64();
        self.elapsed += secs;
        out.emit(TrainEvent::Step {
            step: self.step,
            tokens_seen: self.tokens_seen,
            loss,
            lr,
            grad_norm,
            tokens_per_sec: tokens as f64 / secs.max(1e-9),
            elapsed: self.elapsed,
            time: now(),
        });
        Ok(())
    }

    fn evaluate(&mut self, out: &mut Outbox) -> Result<()> {
        if self.val_examples.is_empty() {
            return Ok(());
        }
        let mut eval = ForwardMode::eval();
        let (mut loss_sum, mut tokens, mut correct) = (0f64, 0usize, 0usize);
        for chunk in self.val_examples.chunks(self.exp.train.batch_size) {
            let batch = self.batch(chunk)?;
            let logits = self.model.forward(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.decoder_input_ids,
                Some(&batch.decoder_attention_mask),
                &mut eval,
            )?;
            let loss = cross_entropy(&logits, &batch.labels, None, 0.0)?;
            loss_sum += loss.cross_entropy as f64 * loss.tokens as f64;
            tokens += loss.tokens;
            correct += token_hits(&logits, &batch.labels)?;
        }
        let loss = loss_sum / tokens.max(1) as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "token_accuracy".into(),
            100.0 * correct as f64 / tokens.max(1) as f64,
        );
        let mut classification = None;
        if self.exp.objective.kind == ObjectiveKind::TextToText {
            let (task, report) = self.generation_metrics()?;
            metrics.extend(task);
            classification = report;
        }
        out.emit(TrainEvent::Eval {
            step: self.step,
            loss,
            perplexity: loss.exp(),
            metrics,
            classification,
            time: now(),
        });
        Ok(())
    }

    /// The task's metrics on generated outputs for the first
    /// `generate_examples` validation inputs (and a classification task's
    /// report, over the labels of every validation example).
    fn generation_metrics(&self) -> Result<(BTreeMap<String, f64>, Option<ClassificationReport>)> {
        let n = self.exp.eval.generate_examples.min(self.val_examples.len());
        if n == 0 {
            return Ok((BTreeMap::new(), None));
        }
        let max_new_tokens = self
            .exp
            .objective
            .target_length
            .unwrap_or(self.exp.objective.input_length);
        let opts = GenerateOptions {
            max_new_tokens,
            ..GenerateOptions::default()
        };
        let (mut predictions, mut references, mut lengths) = (Vec::new(), Vec::new(), 0usize);
        for chunk in self.val_examples[..n].chunks(self.exp.train.batch_size.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.input.clone()).collect();
            for (e, o) in chunk.iter().zip(generate(&self.model, &prompts, &opts)?) {
                lengths += o.len();
                predictions.push(self.tokenizer.decode(&o)?);
                references.push(self.tokenizer.decode(&e.target)?);
            }
        }
        // A label the first n validation targets miss is still a label,
        // so that an output naming it counts as wrong rather than invalid.
        let mut labels = Vec::new();
        if self.exp.objective.task == Some(TaskKind::Classification) {
            for e in &self.val_examples[n..] {
                labels.push(self.tokenizer.decode(&e.target)?);
            }
        }
        let mut scores = task_scores(
            self.exp.objective.task,
            &predictions,
            &references,
            self.exp.eval.rouge_stemmer,
            &labels,
        )?;
        let chars: usize = predictions.iter().map(|p| p.chars().count()).sum();
        scores
            .metrics
            .insert("gen_len".into(), lengths as f64 / n as f64);
        scores
            .metrics
            .insert("gen_chars".into(), chars as f64 / n as f64);
        Ok((scores.metrics, scores.classification))
    }

    fn samples(&mut self, out: &mut Outbox) -> Result<()> {
        let n = self.exp.eval.num_samples.min(self.val_examples.len());
        if n == 0 {
            return Ok(());
        }
        let examples = &self.val_examples[..n];
        let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.input.clone()).collect();
        let opts = GenerateOptions {
            max_new_tokens: self.exp.eval.max_sample_tokens,
            ..GenerateOptions::default()
        };
        let outputs = generate(&self.model, &prompts, &opts)?;
        for (e, o) in examples.iter().zip(outputs) {
            out.emit(TrainEvent::Sample {
                step: self.step,
                input: self.tokenizer.decode_with_special(&e.input)?,
                target: self.tokenizer.decode_with_special(&e.target)?,
                output: self.tokenizer.decode_with_special(&o)?,
                time: now(),
            });
        }
        Ok(())
    }

    fn checkpoint(&mut self, out: &mut Outbox) -> Result<()> {
        let rng = self
            .mode
            .rng()
            .ok_or_else(|| Error::Other("the training RNG is missing".into()))?;
        let state = TrainState {
            step: self.step,
            tokens_seen: self.tokens_seen,
            elapsed: self.elapsed,
            schedule: self.schedule.clone(),
            optimizer: self.optimizer.state_meta(),
            rng_seed: rng.get_seed(),
            rng_word_pos: rng.get_word_pos().to_string(),
            data: self.train_data.state(),
            bad_steps: self.bad_steps,
            loss_scale: self.loss_scale.clone(),
        };
        let model = self.model.named_tensors();
        let optim = self.optimizer.state_tensors();
        let write = |dir: &Path| -> Result<()> {
            crate::model::weights::save_safetensors(
                &model,
                DType::F32,
                &dir.join("model.safetensors"),
            )?;
            crate::model::weights::save_safetensors(
                &optim,
                DType::F32,
                &dir.join("optimizer.safetensors"),
            )?;
            let json = serde_json::to_string(&state).map_err(|e| Error::Other(e.to_string()))?;
            crate::fsutil::write_atomic(&dir.join("state.json"), json.as_bytes())
        };
        match self
            .run
            .write_checkpoint(self.step, self.exp.checkpoint.keep_last, write)
        {
            Ok(path) => out.emit(TrainEvent::Checkpoint {
                step: self.step,
                path,
                time: now(),
            }),
            Err(e) => {
                let message = format!("checkpoint at step {} failed: {e}", self.step);
                out.emit(TrainEvent::Warning {
                    step: self.step,
                    message: message.clone(),
                    time: now(),
                });
                // The previous checkpoint stays whole; the run pauses.
                out.write_error.get_or_insert(message);
            }
        }
        Ok(())
    }
}

fn warning(step: u64, message: String) -> TrainEvent {
    TrainEvent::Warning {
        step,
        message,
        time: now(),
    }
}

/// The tokenizer of a pre-trained run or Hugging Face folder, if it has one.
fn pretrained_tokenizer(store: &RunStore, src: &str) -> Option<PathBuf> {
    let dir = Path::new(src);
    if dir.join("tokenizer.json").exists() {
        return Some(dir.join("tokenizer.json"));
    }
    let run = store.open(src).ok()?;
    run.tokenizer_path().exists().then(|| run.tokenizer_path())
}

/// Weights to start fine-tuning from: a run id (its latest checkpoint) or a
/// Hugging Face folder.
fn load_pretrained(store: &RunStore, src: &str, exp: &Experiment, device: &Device) -> Result<T5> {
    let path = Path::new(src);
    if path.join("config.json").exists() {
        let model = T5::load_hf_dir(path, device)?;
        if model.config().vocab_size != exp.model.vocab_size {
            return Err(Error::Invalid(format!(
                "{src}: the pre-trained model has vocab_size {}, this experiment {}",
                model.config().vocab_size,
                exp.model.vocab_size
            )));
        }
        return Ok(model);
    }
    let run = store.open(src)?;
    let (_, dir) = run
        .latest_checkpoint()
        .ok_or_else(|| Error::Invalid(format!("run {src} has no checkpoint to start from")))?;
    T5::load_safetensors(&exp.model, &dir.join("model.safetensors"), device)
}
