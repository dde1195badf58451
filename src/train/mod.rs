//! Training: the worker thread, its events and controls, optimizers and
//! schedules.

pub mod events;
pub mod optim;
pub mod schedule;
