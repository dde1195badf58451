//! Everything between a user's raw text and the batches the trainer
//! consumes: sources, cleaning, the tokenizer, the objectives (span
//! corruption, text-to-text), the record stream and batching.

pub mod batch;
pub mod clean;
pub mod demo;
pub mod prepare;
pub mod source;
pub mod span_corruption;
pub mod stream;
pub mod tokenizer;
