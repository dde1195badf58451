//! `t5-tui tokenizer train` and `t5-tui data prepare`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::{store, write_out, Overrides};
use crate::config;
use crate::data::tokenizer::{T5Tokenizer, DEFAULT_EXTRA_IDS};
use crate::error::Result;
use crate::train::data::{prepare_experiment_data, prepared_dir};

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a T5 (SentencePiece-style Unigram) tokenizer on text files.
    Train {
        /// Plain text files, one sentence or document a line.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Tokens in all, the special ones and sentinels included.
        #[arg(long, value_name = "N")]
        vocab_size: usize,
        /// Sentinel tokens `<extra_id_0>` … for span corruption.
        #[arg(long, default_value_t = DEFAULT_EXTRA_IDS, value_name = "N")]
        extra_ids: usize,
        /// Where to write `tokenizer.json`.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Read and clean an experiment's data; print what each rule removed.
    Prepare {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
        /// Where to write the prepared records (default: the cache the
        /// trainer reads, under the run store).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

pub fn tokenizer(cmd: TokenizerCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        TokenizerCommand::Train {
            files,
            vocab_size,
            extra_ids,
            out: path,
        } => {
            let started = std::time::Instant::now();
            let tok = T5Tokenizer::train_files(&files, vocab_size, extra_ids)?;
            tok.save(&path)?;
            write_out(
                out,
                &format!(
                    "trained a {}-token tokenizer ({} sentinels) on {} file(s) in {:.1}s: {}\n",
                    tok.vocab_size(),
                    tok.num_sentinels(),
                    files.len(),
                    started.elapsed().as_secs_f64(),
                    path.display()
                ),
            )
        }
    }
}

pub fn data(cmd: DataCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        DataCommand::Prepare {
            config,
            out: dir,
            overrides,
        } => {
            let exp = config::load_with_overrides(&config, &overrides.set)?;
            let dir = match dir {
                Some(d) => d,
                None => prepared_dir(store()?.root(), &exp),
            };
            let report = prepare_experiment_data(&exp, &dir)?;
            write_out(out, &report.render())?;
            write_out(out, &format!("prepared data in {}\n", dir.display()))
        }
    }
}
