//! `t5-tui bench`: training throughput of a model shape on random tokens.

use std::io::Write;

use clap::Args;

use super::{write_out, Overrides};
use crate::config::{DeviceChoice, Experiment};
use crate::error::{Error, Result};
use crate::train::bench::{run_bench, BenchOptions};
use crate::train::worker::select_device;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A preset (t5-tiny, t5-small, …) or an experiment file.
    #[arg(long, default_value = "t5-tiny", value_name = "PRESET_OR_CONFIG")]
    pub preset: String,
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch: usize,
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub input_len: usize,
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub target_len: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warmup: usize,
    /// Time the forward pass alone as well.
    #[arg(long)]
    pub forward: bool,
    /// Also time greedy decoding of N new tokens at batch 1 (a prompt of
    /// --input-len tokens), per token.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub generate: usize,
    /// auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn bench(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    let path = std::path::Path::new(&args.preset);
    let exp = if path.is_file() || args.preset.ends_with(".toml") {
        crate::config::load_with_overrides(path, &args.overrides.set)?
    } else {
        Experiment::from_preset(&args.preset, None, &args.overrides.set)?
    };
    let choice: DeviceChoice = args.device.parse().map_err(Error::Invalid)?;
    let device = select_device(choice)?;
    if args.batch == 0 || args.input_len == 0 || args.target_len == 0 || args.steps == 0 {
        return Err(Error::Invalid(
            "--batch, --input-len, --target-len and --steps must each be at least 1".into(),
        ));
    }
    let report = run_bench(
        &BenchOptions {
            model: exp.model.clone(),
            batch_size: args.batch,
            input_length: args.input_len,
            target_length: args.target_len,
            warmup_steps: args.warmup,
            steps: args.steps,
            forward: args.forward,
            generate_tokens: args.generate,
        },
        &device,
    )?;
    if args.json {
        let text = serde_json::to_string(&report).map_err(|e| Error::Other(e.to_string()))?;
        return write_out(out, &format!("{text}\n"));
    }
    let mut s = format!(
        "{} ({} parameters) on {}, batch {} x ({} + {}) tokens, median of {} steps\n",
        exp.name,
        super::group_digits(report.params),
        report.device,
        report.batch_size,
        report.input_length,
        report.target_length,
        report.steps
    );
    s.push_str(&format!(
        "  step time      {:.3} s (fastest {:.3} s)\n",
        report.step_seconds, report.step_seconds_min
    ));
    s.push_str(&format!("  tokens/s       {:.0}\n", report.tokens_per_sec));
    s.push_str(&format!(
        "  model FLOP/s   {:.2} GFLOP/s ({:.1} GFLOP a forward pass, 3x for a step)\n",
        report.train_flops_per_sec / 1e9,
        report.forward_flops / 1e9
    ));
    if let Some(f) = report.forward_seconds {
        s.push_str(&format!("  forward        {f:.3} s\n"));
    }
    if let Some(g) = report.generate_seconds_per_token {
        s.push_str(&format!(
            "  generation     {:.2} ms a token (greedy, batch 1, {} new tokens)\n",
            g * 1e3,
            args.generate
        ));
    }
    if let Some(rss) = report.peak_rss_bytes {
        s.push_str(&format!(
            "  peak RSS       {:.2} GiB\n",
            rss as f64 / (1u64 << 30) as f64
        ));
    }
    write_out(out, &s)
}
