//! `t5-tui train` and `t5-tui resume`: a run on the worker thread, its
//! events printed as they come. Ctrl-C (and SIGTERM) sends the stop
//! control: the worker finishes its step, checkpoints and reports
//! finished; a second Ctrl-C quits at once.
//!
//! Exit codes: 0 when the run completed or was stopped, 1 for an error or
//! a failed run, 3 when the run paused on its own (a write failed, as on a
//! full disk; the loss diverged): with no UI to resume it, it is stopped.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use clap::Args;

use super::progress::{stdout_is_terminal, Progress};
use super::{report, store, Overrides};
use crate::config;
use crate::error::{Error, Result};
use crate::train::{TrainEvent, TrainHandle};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment file (TOML), e.g. configs/demo-pretrain.toml.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Train without the terminal UI, printing progress (the run id on the
    /// first line). Without a terminal, runs are headless anyway.
    #[arg(long)]
    pub headless: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run id (or a unique prefix of it).
    #[arg(value_name = "RUN")]
    pub run: String,
    /// Train to this step instead of the configured number.
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// The learning rate from the last checkpoint on: after a divergence,
    /// rolls back to the last checkpoint and continues at this rate.
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn train(
    args: TrainArgs,
    theme: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let started = (|| {
        let exp = config::load_with_overrides(&args.config, &args.overrides.set)?;
        let toml = exp.to_toml()?;
        crate::train::start(&store()?, exp, &toml)
    })();
    // In a terminal, the run opens on the UI's dashboard.
    let interactive = !args.headless && stdout_is_terminal() && std::io::stdin().is_terminal();
    match started {
        Ok(handle) if interactive => super::ui(Some(handle), theme, out, err),
        other => follow(other, out, err),
    }
}

pub fn resume(args: ResumeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let opts = crate::train::ResumeOptions {
        set: args.overrides.set,
        steps: args.steps,
        lr: args.lr,
    };
    let started = store().and_then(|s| crate::train::resume_with(&s, &args.run, &opts));
    follow(started, out, err)
}

/// Prints the run id, then the run's events until it ends.
pub(crate) fn follow(
    started: Result<TrainHandle>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            report(err, &e);
            return 1;
        }
    };
    let _ = writeln!(out, "{}", handle.run_id);
    let _ = out.flush();
    follow_handle(handle, None, out, err)
}

/// Prints a run's events until it ends; `at` is `(step, total_steps)` when
/// its `Started` event was already read (by the terminal UI).
pub(crate) fn follow_handle(
    handle: TrainHandle,
    at: Option<(u64, u64)>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    crate::signals::stop_on_signal(handle.controls());
    let tty = stdout_is_terminal();
    let mut progress: Option<Progress> = at.map(|(step, total)| Progress::new(total, step, tty));
    let mut total = at.map_or(0, |a| a.1);
    let mut failed: Option<String> = None;
    // Whether the worker got as far as training (else its failure is the
    // setup's: a bad file, named in the error).
    let mut started = at.is_some();
    let mut paused: Option<String> = None;
    loop {
        match handle.recv_timeout(Duration::from_millis(250)) {
            Ok(event) => {
                match &event {
                    TrainEvent::Started {
                        step, total_steps, ..
                    } => {
                        total = *total_steps;
                        started = true;
                        progress = Some(Progress::new(total, *step, tty));
                    }
                    TrainEvent::Failed { error, .. } => failed = Some(error.clone()),
                    // Nothing here can resume a paused run (no keys, no
                    // UI): stop it, and say why in the exit code.
                    TrainEvent::Paused { step, reason, .. } if paused.is_none() => {
                        paused = Some(format!("the run paused at step {step} ({reason})"));
                        handle.send(crate::train::Control::Stop);
                    }
                    _ => {}
                }
                let p = progress.get_or_insert_with(|| Progress::new(total, 0, tty));
                match &event {
                    TrainEvent::Step {
                        step,
                        loss,
                        lr,
                        tokens_per_sec,
                        ..
                    } => p.update(
                        out,
                        *step,
                        &format!("loss {loss:.4}, lr {lr:.2e}, {tokens_per_sec:.0} tokens/s"),
                    ),
                    other => p.line(out, &other.describe()),
                }
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish(out);
    }
    let id = handle.run_id.clone();
    handle.join();
    match (failed, paused) {
        (Some(e), _) if !started => {
            report(err, &Error::Other(e));
            1
        }
        (Some(e), _) => {
            report(err, &Error::Other(format!("the run failed: {e}")));
            1
        }
        (None, Some(p)) => {
            report(
                err,
                &Error::Other(format!(
                    "{p}; the run was stopped, and `t5-tui resume {id}` continues it"
                )),
            );
            3
        }
        (None, None) => 0,
    }
}
