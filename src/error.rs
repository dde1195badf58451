//! Errors a user can cause or meet, each with a message that says what and
//! where, so that the front ends print one clear sentence.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file (experiment TOML or a model's `config.json`) is invalid.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// A checkpoint does not fit the model: a missing tensor, another
    /// shape or another dtype, or a file that is not safetensors.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A `tokenizer.json` that cannot be read or is not a T5 tokenizer.
    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// A data file (an eval file of pairs) that cannot be used as it is:
    /// the file, the line when one is to blame, and what is wrong.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },
    /// A bad argument to a library call (a shape, a token id, an option).
    #[error("{0}")]
    Invalid(String),
    /// A run's lock is held by a live process (the UI or another resume).
    #[error(
        "run {id} is in use by {} (the UI or another resume); stop it first",
        match pid { Some(pid) => format!("process {pid}"), None => "another process".to_string() }
    )]
    RunInUse { id: String, pid: Option<u32> },
    /// A tensor operation failed inside candle.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn data(path: &Path, line: Option<u64>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
