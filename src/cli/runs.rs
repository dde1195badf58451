//! `t5-tui runs`, `runs show`, `runs rm` and `export`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{store, write_out};
use crate::error::{Error, Result};
use crate::runs::{utc_date, RunSummary};
use crate::train::events::TrainEvent;
use crate::train::export::{find_run, TrainedModel};

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// Print the list as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run: its status, config, checkpoints, last evaluation and samples.
    Show {
        #[arg(value_name = "RUN")]
        run: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a run and everything in it.
    Rm {
        #[arg(value_name = "RUN")]
        run: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run id (or a unique prefix of it).
    #[arg(value_name = "RUN")]
    pub run: String,
    /// The folder to write; the run's own `export/` folder when absent.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn runs(args: RunsArgs, out: &mut dyn Write) -> Result<()> {
    let store = store()?;
    match args.command {
        None => {
            let list = store.list()?;
            if args.json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::Other(format!("writing JSON: {e}")))?;
                return write_out(out, &format!("{text}\n"));
            }
            if list.is_empty() {
                return write_out(
                    out,
                    &format!(
                        "no runs in {} yet; start one with `t5-tui train configs/demo-pretrain.toml`\n",
                        store.runs_dir().display()
                    ),
                );
            }
            write_out(out, &runs_table(&list))
        }
        Some(RunsCommand::Show { run, json }) => {
            let run = find_run(&store, &run)?;
            let summary = run.summary();
            if json {
                let text = serde_json::to_string_pretty(&summary)
                    .map_err(|e| Error::Other(format!("writing JSON: {e}")))?;
                return write_out(out, &format!("{text}\n"));
            }
            let mut s = runs_table(std::slice::from_ref(&summary));
            s.push_str(&format!("\nfolder      {}\n", run.dir().display()));
            if let Some(p) = &summary.problem {
                s.push_str(&format!("problem     {p}\n"));
            }
            let checkpoints = run.checkpoints().unwrap_or_default();
            let steps: Vec<String> = checkpoints.iter().map(|(s, _)| s.to_string()).collect();
            s.push_str(&format!(
                "checkpoints {}\n",
                if steps.is_empty() {
                    "none".to_string()
                } else {
                    steps.join(", ")
                }
            ));
            if let Ok(read) = run.read_events() {
                let last_eval = read
                    .events
                    .iter()
                    .rev()
                    .find(|e| matches!(e, TrainEvent::Eval { .. }));
                if let Some(e) = last_eval {
                    s.push_str(&format!("last eval   {}\n", e.describe()));
                }
                let last_step = read.events.iter().rev().find_map(|e| match e {
                    TrainEvent::Sample { step, .. } => Some(*step),
                    _ => None,
                });
                if let Some(step) = last_step {
                    s.push_str(&format!("samples at step {step}:\n"));
                    for e in &read.events {
                        if let TrainEvent::Sample {
                            step: st,
                            input,
                            target,
                            output,
                            ..
                        } = e
                        {
                            if *st == step {
                                s.push_str(&format!(
                                    "  input  {input}\n  target {target}\n  output {output}\n\n"
                                ));
                            }
                        }
                    }
                }
            }
            write_out(out, &s)
        }
        Some(RunsCommand::Rm { run, yes }) => {
            let run = find_run(&store, &run)?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Error::Invalid(format!(
                        "deleting run {} needs confirmation: pass --yes",
                        run.id()
                    )));
                }
                write_out(
                    out,
                    &format!(
                        "delete run {} ({}) and all its checkpoints? [y/N] ",
                        run.id(),
                        run.dir().display()
                    ),
                )?;
                let _ = out.flush();
                let mut answer = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut answer)
                    .map_err(|e| Error::Other(format!("reading the answer: {e}")))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return write_out(out, "kept\n");
                }
            }
            store.remove(run.id())?;
            write_out(out, &format!("deleted run {}\n", run.id()))
        }
    }
}

/// The run list as an aligned table.
pub fn runs_table(list: &[RunSummary]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".into(),
        "STATUS".into(),
        "STEPS".into(),
        "BEST VAL".into(),
        "TOKENS/S".into(),
        "STARTED (UTC)".into(),
    ]];
    for r in list {
        rows.push([
            r.id.clone(),
            r.name.clone(),
            match &r.problem {
                Some(_) => format!("{} (!)", r.status),
                None => r.status.to_string(),
            },
            r.steps.to_string(),
            r.best_val_loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.tokens_per_sec.map_or("-".into(), |t| format!("{t:.0}")),
            r.started.map_or("-".into(), utc_date),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    s
}

pub fn export(args: ExportArgs, out: &mut dyn Write) -> Result<()> {
    let store = store()?;
    let run = find_run(&store, &args.run)?;
    let model = TrainedModel::open_run(&run, &candle_core::Device::Cpu)?;
    let dir = args.dir.unwrap_or_else(|| run.export_dir());
    model.export(&dir)?;
    write_out(
        out,
        &format!(
            "exported {} to {} (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)\n",
            model.source,
            dir.display()
        ),
    )
}
