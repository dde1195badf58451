//! `t5-tui bench`: the speed of one training step (forward, backward,
//! AdamW) on random data of a fixed shape, for the performance work.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::optim::{decay_all_but_norms, Optimizer, OptimizerConfig};
use crate::error::Result;
use crate::model::{cross_entropy, shift_right, ForwardMode, T5Config, T5};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: T5Config,
    pub batch_size: usize,
    pub input_length: usize,
    pub target_length: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    /// Time the forward pass alone as well.
    pub forward: bool,
    /// Also time greedy decoding of this many new tokens at batch 1 (0:
    /// no decoding).
    pub generate_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub params: usize,
    pub batch_size: usize,
    pub input_length: usize,
    pub target_length: usize,
    pub steps: usize,
    /// Median seconds of a training step.
    pub step_seconds: f64,
    pub step_seconds_min: f64,
    pub tokens_per_sec: f64,
    /// Matmul FLOPs of one forward pass (a training step counts 3×).
    pub forward_flops: f64,
    pub train_flops_per_sec: f64,
    pub forward_seconds: Option<f64>,
    /// Median seconds per new token of greedy decoding at batch 1.
    pub generate_seconds_per_token: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Matmul FLOPs of one forward pass: attention projections, scores and
/// weighted sums, cross-attention, feed-forward and the output projection.
pub fn forward_flops(cfg: &T5Config, b: usize, s: usize, t: usize) -> f64 {
    let (d, inner, ff, h, dkv, v) = (
        cfg.d_model as f64,
        cfg.inner_dim() as f64,
        cfg.d_ff as f64,
        cfg.num_heads as f64,
        cfg.d_kv as f64,
        cfg.vocab_size as f64,
    );
    let (b, s, t) = (b as f64, s as f64, t as f64);
    let ff_mats = if cfg.feed_forward_proj.is_gated() {
        3.0
    } else {
        2.0
    };
    let enc = 4.0 * 2.0 * b * s * d * inner
        + 2.0 * 2.0 * b * h * s * s * dkv
        + ff_mats * 2.0 * b * s * d * ff;
    let dec = 4.0 * 2.0 * b * t * d * inner
        + 2.0 * 2.0 * b * h * t * t * dkv
        + 2.0 * 2.0 * b * t * d * inner
        + 2.0 * 2.0 * b * s * d * inner
        + 2.0 * 2.0 * b * h * t * s * dkv
        + ff_mats * 2.0 * b * t * d * ff;
    cfg.num_layers as f64 * enc + cfg.decoder_layers() as f64 * dec + 2.0 * b * t * d * v
}

/// The process's peak resident memory (Linux), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub fn run_bench(opts: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let cfg = &opts.model;
    let model = T5::new_random(cfg, 0, device)?;
    let mut optimizer = Optimizer::new(
        &OptimizerConfig::default(),
        model.params(),
        &decay_all_but_norms,
    )?;
    let (b, s, t) = (opts.batch_size, opts.input_length, opts.target_length);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let v = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..b * s).map(|_| rng.random_range(3..v)).collect();
    let labels: Vec<i64> = (0..b * t).map(|_| rng.random_range(3..v) as i64).collect();
    let dec: Vec<u32> = labels
        .chunks(t)
        .flat_map(|row| shift_right(row, cfg.decoder_start_token_id, cfg.pad_token_id))
        .collect();
    let input = Tensor::from_vec(ids, (b, s), device)?;
    let mask = Tensor::ones((b, s), candle_core::DType::U32, device)?;
    let dec = Tensor::from_vec(dec, (b, t), device)?;
    let labels = Tensor::from_vec(labels, (b, t), device)?;
    let mut mode = ForwardMode::train(ChaCha8Rng::seed_from_u64(1));

    let mut times = Vec::with_capacity(opts.steps);
    for i in 0..opts.warmup_steps + opts.steps {
        let start = Instant::now();
        let logits = model.forward(&input, &mask, &dec, None, &mut mode)?;
        let loss = cross_entropy(&logits, &labels, None, 0.0)?;
        let grads = loss.loss.backward()?;
        optimizer.step(&grads, 1e-4)?;
        device.synchronize()?;
        if i >= opts.warmup_steps {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let forward_seconds = if opts.forward {
        let mut eval = ForwardMode::eval();
        let mut f = Vec::new();
        for i in 0..opts.warmup_steps.min(2) + opts.steps.min(5) {
            let start = Instant::now();
            let logits = model.forward(&input, &mask, &dec, None, &mut eval)?;
            let _ = cross_entropy(&logits, &labels, None, 0.0)?.cross_entropy;
            device.synchronize()?;
            if i >= opts.warmup_steps.min(2) {
                f.push(start.elapsed().as_secs_f64());
            }
        }
        Some(median(f))
    } else {
        None
    };
    let generate_seconds_per_token = if opts.generate_tokens > 0 {
        Some(time_greedy_decoding(
            &model,
            opts.input_length,
            opts.generate_tokens,
        )?)
    } else {
        None
    };
    let step = median(times.clone());
    let flops = forward_flops(cfg, b, s, t);
    Ok(BenchReport {
        device: super::worker::device_name(device),
        params: model.num_parameters(),
        batch_size: b,
        input_length: s,
        target_length: t,
        steps: opts.steps,
        step_seconds: step,
        step_seconds_min: times.iter().cloned().fold(f64::INFINITY, f64::min),
        tokens_per_sec: (b * (s + t)) as f64 / step,
        forward_flops: flops,
        train_flops_per_sec: 3.0 * flops / step,
        forward_seconds,
        generate_seconds_per_token,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Seconds per token of greedy decoding at batch 1: `new_tokens` steps of
/// the key/value-cached decoder after one encoder pass over a random
/// prompt of `prompt_len` tokens, as `generate` runs them, but never
/// stopping at `</s>` (a random model may write it at any step), so that
/// every run decodes the same number of tokens. Median of 5 runs after
/// one warm-up.
pub fn time_greedy_decoding(model: &T5, prompt_len: usize, new_tokens: usize) -> Result<f64> {
    let cfg = model.config();
    let device = model.device();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut prompt: Vec<u32> = (0..prompt_len.saturating_sub(1))
        .map(|_| rng.random_range(3..cfg.vocab_size as u32))
        .collect();
    prompt.push(cfg.eos_token_id);
    let n = prompt.len();
    let ids = Tensor::from_vec(prompt, (1, n), device)?;
    let mask = Tensor::ones((1, n), candle_core::DType::U32, device)?;
    let mut times = Vec::new();
    for run in 0..6 {
        let start = Instant::now();
        let mut mode = ForwardMode::eval();
        let enc = model.encode(&ids, &mask, &mut mode)?;
        let mut cache = model.start_decoding(&enc, &mask)?;
        let mut next = cfg.decoder_start_token_id;
        for _ in 0..new_tokens {
            let step = Tensor::from_vec(vec![next], (1, 1), device)?;
            let logits = model.decode_step(&step, None, &mut cache, &mut mode)?;
            let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            next = row
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as u32;
        }
        if run > 0 {
            times.push(start.elapsed().as_secs_f64() / new_tokens as f64);
        }
    }
    Ok(median(times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_matches_the_perf_notes_for_the_tiny_shape() {
        // PERF-NOTES: tiny at batch 16, 128/32 tokens: 27.7 GFLOP forward.
        let cfg: T5Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 8192, "d_model": 256, "d_kv": 32, "d_ff": 1024,
            "num_layers": 4, "num_heads": 8, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false
        }))
        .unwrap();
        let f = forward_flops(&cfg, 16, 128, 32) / 1e9;
        assert!((f - 27.7).abs() < 0.2, "{f} GFLOP");
    }
}
