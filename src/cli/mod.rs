//! The headless front end: `t5-tui COMMAND …`, over the same library calls
//! the terminal UI makes. Every command writes its results to `out` and
//! its errors, one line each as `error: <message>`, to `err`, and returns
//! the process exit code.

mod bench;
mod data;
mod generate;
mod progress;
mod runs;
mod train;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Experiment};
use crate::error::{Error, Result};
use crate::model::T5Config;

#[derive(Debug, Parser)]
#[command(
    name = "t5-tui",
    version,
    about = "Train and fine-tune T5 models from a terminal UI",
    long_about = "Train and fine-tune T5 models from a terminal UI.\n\n\
                  With no command, t5-tui opens the terminal UI; every command below \
                  works without it, for scripts and machines with no terminal."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The UI's colour theme: dark, light, colorblind, or a theme file
    /// (also T5_TUI_THEME; NO_COLOR turns colour off).
    #[arg(long, global = true, value_name = "NAME_OR_FILE")]
    pub theme: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train an experiment: a new run from a config file.
    Train(train::TrainArgs),
    /// Continue a stopped or crashed run from its last checkpoint.
    Resume(train::ResumeArgs),
    /// List the runs (or show one, or delete one).
    Runs(runs::RunsArgs),
    /// Generate text with a run's model or a Hugging Face T5 folder.
    Generate(generate::GenerateArgs),
    /// Score a run's model (or a Hugging Face T5 folder) on pairs.
    Eval(generate::EvalArgs),
    /// Write a run's model as a Hugging Face T5 folder.
    Export(runs::ExportArgs),
    /// Tokenizers.
    #[command(subcommand)]
    Tokenizer(data::TokenizerCommand),
    /// Data preparation.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Time training steps of a model shape (tokens/s, step time, FLOP/s).
    Bench(bench::BenchArgs),
    /// Experiment configs (TOML files).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Model shapes.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and check experiment configs; print the model each one builds.
    Check {
        /// Experiment files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// A model's shape and parameter count.
    Info {
        /// A preset name (t5-tiny, t5-small, …; looked up in ./configs/,
        /// then among the built-in ones) or an experiment file.
        #[arg(value_name = "PRESET_OR_CONFIG")]
        target: String,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Debug, Args)]
pub struct Overrides {
    /// Override a config value, e.g. `--set train.learning_rate=3e-4` or
    /// `--set model.num_layers=2` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

/// Opens the terminal UI (on a run just started, if any); afterwards
/// follows the runs the user kept training or stops them.
pub(crate) fn ui(
    start: Option<crate::train::TrainHandle>,
    theme: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let store = match store() {
        Ok(s) => s,
        Err(e) => {
            report(err, &e);
            return 1;
        }
    };
    let exit = match crate::tui::run(store, crate::tui::UiOptions { theme, start }) {
        Ok(exit) => exit,
        Err(e) => {
            report(err, &e);
            return 2;
        }
    };
    let mut code = 0;
    for (handle, step, total) in exit.training {
        match exit.choice {
            crate::tui::QuitChoice::KeepRuns => {
                let _ = writeln!(
                    out,
                    "run {} keeps training (Ctrl-C stops it with a checkpoint; `t5-tui` shows it again)",
                    handle.run_id
                );
            }
            _ => {
                handle.send(crate::train::Control::Stop);
                let _ = writeln!(
                    out,
                    "stopping run {} after its step; writing a checkpoint",
                    handle.run_id
                );
            }
        }
        code = code.max(train::follow_handle(handle, Some((step, total)), out, err));
    }
    if let Some(e) = exit.error {
        report(err, &e);
        code = code.max(2);
    }
    code
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match cli.command {
        None => return ui(None, cli.theme, out, err),
        Some(Command::Train(args)) => return train::train(args, cli.theme, out, err),
        Some(Command::Resume(args)) => return train::resume(args, out, err),
        Some(Command::Runs(args)) => runs::runs(args, out),
        Some(Command::Generate(args)) => generate::generate(args, out),
        Some(Command::Eval(args)) => generate::eval(args, out, err),
        Some(Command::Export(args)) => runs::export(args, out),
        Some(Command::Tokenizer(cmd)) => data::tokenizer(cmd, out),
        Some(Command::Data(cmd)) => data::data(cmd, out),
        Some(Command::Bench(args)) => bench::bench(args, out),
        Some(Command::Config(ConfigCommand::Check { files, overrides })) => {
            return config_check(&files, &overrides.set, out, err);
        }
        Some(Command::Model(ModelCommand::Info { target, overrides })) => {
            model_info(&target, &overrides.set, out)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            report(err, &e);
            1
        }
    }
}

/// The run store the commands use: `$T5_TUI_HOME`, else the platform's
/// data folder.
fn store() -> Result<crate::runs::RunStore> {
    crate::runs::RunStore::open_default()
}

fn report(err: &mut dyn Write, e: &Error) {
    // Nothing more can be done when stderr itself fails.
    let _ = writeln!(err, "error: {e}");
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .map_err(|e| Error::Other(format!("writing the output: {e}")))
}

/// `config check`: every file is checked, each error reported; the exit
/// code is 1 when any failed.
fn config_check(
    files: &[PathBuf],
    overrides: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let mut failed = false;
    for path in files {
        let result = config::load_with_overrides(path, overrides)
            .and_then(|exp| write_out(out, &format!("ok {}: {}\n", path.display(), summary(&exp))));
        if let Err(e) = result {
            report(err, &e);
            failed = true;
        }
    }
    i32::from(failed)
}

/// One line: the experiment's name and its model.
pub fn summary(exp: &Experiment) -> String {
    let m = &exp.model;
    format!(
        "{}: {}, {} parameters",
        exp.name,
        shape_line(m),
        group_digits(m.num_parameters())
    )
}

/// `d_model 256, 8 heads × d_kv 32, d_ff 1024 gated-gelu, 4+4 layers, vocab 8192, untied`
pub fn shape_line(m: &T5Config) -> String {
    format!(
        "d_model {}, {} heads x d_kv {}, d_ff {} {}, {}+{} layers, vocab {}, {}",
        m.d_model,
        m.num_heads,
        m.d_kv,
        m.d_ff,
        m.feed_forward_proj.as_str(),
        m.num_layers,
        m.decoder_layers(),
        m.vocab_size,
        if m.tie_word_embeddings {
            "tied embeddings"
        } else {
            "untied lm_head"
        }
    )
}

/// `model info`: the target is a file when it names one (or ends in
/// `.toml`), else a preset.
fn model_info(target: &str, overrides: &[String], out: &mut dyn Write) -> Result<()> {
    let path = Path::new(target);
    let exp = if path.is_file() || target.ends_with(".toml") {
        config::load_with_overrides(path, overrides)?
    } else {
        Experiment::from_preset(target, None, overrides)?
    };
    write_out(out, &model_table(&exp))
}

/// Parameters of each part of a T5, counted as `transformers` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterBreakdown {
    /// `shared`: the input embedding of encoder and decoder.
    pub embedding: usize,
    pub encoder: usize,
    pub decoder: usize,
    /// The output projection; 0 when tied to the embedding.
    pub lm_head: usize,
}

impl ParameterBreakdown {
    pub fn of(m: &T5Config) -> Self {
        let d = m.d_model;
        let attention = 4 * d * m.inner_dim();
        let ff_mats = if m.feed_forward_proj.is_gated() { 3 } else { 2 };
        let ff = ff_mats * d * m.d_ff;
        let bias = m.relative_attention_num_buckets * m.num_heads;
        ParameterBreakdown {
            embedding: m.vocab_size * d,
            encoder: m.num_layers * (attention + ff + 2 * d) + bias + d,
            decoder: m.decoder_layers() * (2 * attention + ff + 3 * d) + bias + d,
            lm_head: if m.tie_word_embeddings {
                0
            } else {
                m.vocab_size * d
            },
        }
    }

    pub fn total(&self) -> usize {
        self.embedding + self.encoder + self.decoder + self.lm_head
    }
}

/// The shape table and parameter counts `model info` prints.
pub fn model_table(exp: &Experiment) -> String {
    let m = &exp.model;
    let mut s = String::new();
    s.push_str(&exp.name);
    if let Some(d) = &exp.description {
        s.push_str(": ");
        s.push_str(d);
    }
    s.push_str("\n\n");
    let rows: Vec<(&str, String)> = vec![
        ("vocab_size", m.vocab_size.to_string()),
        ("d_model", m.d_model.to_string()),
        ("d_kv", m.d_kv.to_string()),
        ("num_heads", m.num_heads.to_string()),
        ("d_ff", m.d_ff.to_string()),
        (
            "feed_forward_proj",
            m.feed_forward_proj.as_str().to_string(),
        ),
        ("num_layers", m.num_layers.to_string()),
        ("num_decoder_layers", m.decoder_layers().to_string()),
        (
            "relative_attention_num_buckets",
            m.relative_attention_num_buckets.to_string(),
        ),
        (
            "relative_attention_max_distance",
            m.relative_attention_max_distance.to_string(),
        ),
        ("dropout_rate", format!("{:?}", m.dropout_rate)),
        ("layer_norm_epsilon", format!("{:e}", m.layer_norm_epsilon)),
        ("initializer_factor", format!("{:?}", m.initializer_factor)),
        ("tie_word_embeddings", m.tie_word_embeddings.to_string()),
        ("pad_token_id", m.pad_token_id.to_string()),
        ("eos_token_id", m.eos_token_id.to_string()),
        (
            "decoder_start_token_id",
            m.decoder_start_token_id.to_string(),
        ),
    ];
    for (k, v) in rows {
        s.push_str(&format!("  {k:<32} {v}\n"));
    }
    let p = ParameterBreakdown::of(m);
    let total = m.num_parameters();
    s.push_str("\nparameters\n");
    let mut part = |name: &str, n: usize, note: String| {
        s.push_str(&format!("  {name:<16} {:>13}{note}\n", group_digits(n)));
    };
    part("embedding", p.embedding, "  (shared)".into());
    part("encoder", p.encoder, format!("  ({} layers)", m.num_layers));
    part(
        "decoder",
        p.decoder,
        format!("  ({} layers)", m.decoder_layers()),
    );
    part(
        "lm_head",
        p.lm_head,
        if m.tie_word_embeddings {
            "  (tied to the embedding)".into()
        } else {
            String::new()
        },
    );
    part("total", total, format!("  ({})", human(total)));
    s.push_str(&format!(
        "\n  f32 weights take {}; training with AdamW keeps about 4x that (weights, gradients, two moments).\n",
        bytes(total * 4)
    ));
    s
}

/// `13637632` → `13,637,632`.
pub fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn bytes(n: usize) -> String {
    let n = n as f64;
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024.0 * MIB {
        format!("{:.2} GiB", n / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", n / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(76_961_152), "76,961,152");
    }

    #[test]
    fn breakdown_adds_up_to_num_parameters() {
        for name in config::builtin_preset_names() {
            let exp = Experiment::from_preset::<&str>(name, None, &[]).unwrap();
            let p = ParameterBreakdown::of(&exp.model);
            assert_eq!(p.total(), exp.model.num_parameters(), "{name}");
        }
    }

    #[test]
    fn no_command_without_a_terminal_points_to_the_headless_commands() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            Cli {
                command: None,
                theme: None,
            },
            &mut out,
            &mut err,
        );
        // Tests run with no terminal on stdin/stdout.
        assert_eq!(code, 2);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("needs a terminal") && err.contains("--headless"),
            "{err}"
        );
    }
}
