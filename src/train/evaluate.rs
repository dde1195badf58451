//! Evaluation of a trained model on (input, target) pairs: teacher-forced
//! loss, perplexity and token accuracy, then generation scored with the
//! task's metrics. Batches stream through, so memory stays flat however
//! many pairs there are; only the output strings are kept.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::data::batch::{collate, Example, Padding, TextToText};
use crate::data::tokenizer::T5Tokenizer;
use crate::error::Result;
use crate::metrics::{task_scores, ClassificationReport, TaskKind};
use crate::model::generate::{generate, GenerateOptions};
use crate::model::{cross_entropy, ForwardMode, T5};

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub task: Option<TaskKind>,
    /// Put before every input (a run's `task_prefix`).
    pub prefix: String,
    pub input_length: usize,
    pub target_length: usize,
    pub batch_size: usize,
    pub generate: GenerateOptions,
    pub rouge_stemmer: bool,
    /// Classification: the task's labels, beyond those among the targets
    /// scored (an output naming one is wrong, not invalid).
    pub labels: Vec<String>,
}

/// One pair's generated output.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub input: String,
    pub target: String,
    pub output: String,
}

/// The scores of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub loss: f64,
    pub perplexity: f64,
    /// Share of target tokens predicted right under teacher forcing, 0–100.
    pub token_accuracy: f64,
    /// Mean generated tokens.
    pub gen_len: f64,
    /// Mean characters of the decoded outputs: a length that compares
    /// across tokenizers.
    pub gen_chars: f64,
    /// The task's metrics (see [`crate::metrics::task_metrics`]).
    pub metrics: BTreeMap<String, f64>,
    /// Classification: per-label scores and the confusion matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationReport>,
}

/// Evaluates `model` on `pairs`, calling `each` with every prediction as
/// it is made (to write it out or show progress).
pub fn evaluate_pairs<I>(
    model: &T5,
    tokenizer: &T5Tokenizer,
    pairs: I,
    opts: &EvalOptions,
    mut each: impl FnMut(&Prediction) -> Result<()>,
) -> Result<EvalReport>
where
    I: IntoIterator<Item = Result<(String, String)>>,
{
    let t2t = TextToText {
        prefix: opts.prefix.clone(),
        input_length: opts.input_length,
        target_length: opts.target_length,
        eos_id: tokenizer.eos_id(),
    };
    let cfg = model.config();
    let (mut loss_sum, mut tokens, mut correct, mut gen_tokens) = (0f64, 0usize, 0usize, 0usize);
    let mut gen_chars = 0usize;
    let (mut outputs, mut targets) = (Vec::new(), Vec::new());
    let mut batch: Vec<(Example, String, String)> = Vec::new();
    let mut flush = |batch: &mut Vec<(Example, String, String)>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let examples: Vec<Example> = batch.iter().map(|(e, _, _)| e.clone()).collect();
        let b = collate(
            &examples,
            cfg.pad_token_id,
            cfg.decoder_start_token_id,
            Padding::Longest,
            model.device(),
        )?;
        let logits = model.forward(
            &b.input_ids,
            &b.attention_mask,
            &b.decoder_input_ids,
            Some(&b.decoder_attention_mask),
            &mut ForwardMode::eval(),
        )?;
        let loss = cross_entropy(&logits, &b.labels, None, 0.0)?;
        loss_sum += loss.cross_entropy as f64 * loss.tokens as f64;
        tokens += loss.tokens;
        correct += token_hits(&logits, &b.labels)?;
        let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.input.clone()).collect();
        let generated = generate(model, &prompts, &opts.generate)?;
        for ((_, input, target), out) in batch.drain(..).zip(generated) {
            gen_tokens += out.len();
            let p = Prediction {
                input,
                target,
                output: tokenizer.decode(&out)?,
            };
            each(&p)?;
            gen_chars += p.output.chars().count();
            outputs.push(p.output);
            targets.push(p.target);
        }
        Ok(())
    };
    for pair in pairs {
        let (input, target) = pair?;
        let example = t2t.example(&input, &target, |s| tokenizer.encode_no_eos(s))?;
        batch.push((example, input, target));
        if batch.len() >= opts.batch_size.max(1) {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    let n = outputs.len();
    let (metrics, classification) = if n == 0 {
        (BTreeMap::new(), None)
    } else {
        let s = task_scores(
            opts.task,
            &outputs,
            &targets,
            opts.rouge_stemmer,
            &opts.labels,
        )?;
        (s.metrics, s.classification)
    };
    let loss = loss_sum / tokens.max(1) as f64;
    Ok(EvalReport {
        examples: n,
        loss,
        perplexity: loss.exp(),
        token_accuracy: 100.0 * correct as f64 / tokens.max(1) as f64,
        gen_len: gen_tokens as f64 / n.max(1) as f64,
        gen_chars: gen_chars as f64 / n.max(1) as f64,
        metrics,
        classification,
    })
}

/// Label positions where the most likely token is the label.
pub fn token_hits(logits: &candle_core::Tensor, labels: &candle_core::Tensor) -> Result<usize> {
    let pred: Vec<u32> = logits
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1()?;
    let labels: Vec<i64> = labels.flatten_all()?.to_vec1()?;
    Ok(pred
        .iter()
        .zip(&labels)
        .filter(|(&p, &l)| l >= 0 && p as i64 == l)
        .count())
}
