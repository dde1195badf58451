//! Training: the worker thread, its events and controls, optimizers and
//! schedules, the data stream the worker reads, and the throughput bench.

pub mod bench;
pub mod data;
pub mod evaluate;
pub mod events;
pub mod export;
pub mod loss_scale;
pub mod optim;
pub mod schedule;
pub mod worker;

pub use events::{Control, FinishReason, LrSource, TrainEvent};
pub use export::TrainedModel;
pub use worker::{resume, resume_with, start, ResumeOptions, TrainHandle};
