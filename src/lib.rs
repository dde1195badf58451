//! `t5-tui`: train and fine-tune T5 models from a terminal UI or the command
//! line. The library holds everything but the front ends: the model, the
//! data pipeline, the trainer and the run store; the TUI and the headless
//! CLI both drive it.

pub mod cli;
pub mod config;
pub mod cpu_runtime;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod runs;
pub mod signals;
pub mod train;
pub mod tui;

pub use error::{Error, Result};
