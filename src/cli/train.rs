//! `t5-tui train` and `t5-tui resume`: a run on the worker thread, its
//! events printed as they come. Ctrl-C (and SIGTERM) sends the stop
//! control: the worker finishes its step, checkpoints and reports
//! finished; a second Ctrl-C quits at once.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use clap::Args;

use super::progress::{stdout_is_terminal, Progress};
use super::{report, store, Overrides};
use crate::config;
use crate::error::{Error, Result};
use crate::train::{Control, TrainEvent, TrainHandle};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment file (TOML), e.g. configs/demo-pretrain.toml.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Train without the terminal UI, printing progress (the run id on the
    /// first line). Today every run from the command line is headless.
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
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn train(args: TrainArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let started = (|| {
        let exp = config::load_with_overrides(&args.config, &args.overrides.set)?;
        let toml = exp.to_toml()?;
        crate::train::start(&store()?, exp, &toml)
    })();
    follow(started, out, err)
}

pub fn resume(args: ResumeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let started =
        store().and_then(|s| crate::train::resume(&s, &args.run, &args.overrides.set, args.steps));
    follow(started, out, err)
}

/// The sender Ctrl-C stops, for the run this process follows.
static STOP: OnceLock<Mutex<Option<Sender<Control>>>> = OnceLock::new();

fn install_ctrl_c(controls: Sender<Control>) {
    let slot = STOP.get_or_init(|| Mutex::new(None));
    if let Ok(mut s) = slot.lock() {
        *s = Some(controls);
    }
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let mut presses = 0u32;
        // Failing to install (another handler exists) leaves the default:
        // the process ends and the run is found as crashed, then resumed.
        let _ = ctrlc::set_handler(move || {
            presses += 1;
            if presses > 1 {
                eprintln!("\nstopping now; the run resumes from its last checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
            if let Some(Ok(s)) = STOP.get().map(|m| m.lock()) {
                if let Some(tx) = s.as_ref() {
                    let _ = tx.send(Control::Stop);
                }
            }
        });
    });
}

/// Prints the run id, then the run's events until it ends.
fn follow(started: Result<TrainHandle>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            report(err, &e);
            return 1;
        }
    };
    let _ = writeln!(out, "{}", handle.run_id);
    let _ = out.flush();
    install_ctrl_c(handle.controls());
    let tty = stdout_is_terminal();
    let mut progress: Option<Progress> = None;
    let mut total = 0u64;
    let mut failed: Option<String> = None;
    loop {
        match handle.recv_timeout(Duration::from_millis(250)) {
            Ok(event) => {
                match &event {
                    TrainEvent::Started {
                        step, total_steps, ..
                    } => {
                        total = *total_steps;
                        progress = Some(Progress::new(total, *step, tty));
                    }
                    TrainEvent::Failed { error, .. } => failed = Some(error.clone()),
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
    handle.join();
    match failed {
        Some(e) => {
            report(err, &Error::Other(format!("the run failed: {e}")));
            1
        }
        None => 0,
    }
}
