#!/usr/bin/env python3
"""The same training step as `t5-tui bench`, in PyTorch + transformers:
random init from the same config, the same batch shape, AdamW, the same
thread count; warm-up steps excluded, the median of the timed ones. Prints
one JSON object (step time, tokens/s, peak RSS). Used by bench/compare.sh.

    python bench/hf_baseline.py --config config.json --batch 16 --input-len 128 --target-len 32
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a Hugging Face T5 config.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--target-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", type=int, default=0,
                    help="also time greedy generate() of N new tokens at batch 1, per token")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.config) as f:
        cfg = T5Config(**json.load(f))
    cfg.dropout_rate = 0.0
    model = T5ForConditionalGeneration(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.input_len), generator=g)
    labels = torch.randint(3, cfg.vocab_size, (args.batch, args.target_len), generator=g)
    mask = torch.ones_like(ids)
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    gen = None
    if args.generate > 0:
        # As t5-tui bench --generate: one random prompt of --input-len tokens
        # ending in </s>, batch 1, greedy with the key/value cache, exactly N
        # new tokens (min_new_tokens keeps </s> from ending it early),
        # median of 5 runs after one warm-up.
        model.eval()
        prompt = torch.randint(3, cfg.vocab_size, (1, args.input_len), generator=g)
        prompt[0, -1] = cfg.eos_token_id
        per_token = []
        with torch.no_grad():
            for run in range(6):
                t = time.perf_counter()
                model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                               max_new_tokens=args.generate, min_new_tokens=args.generate,
                               do_sample=False, num_beams=1)
                if run > 0:
                    per_token.append((time.perf_counter() - t) / args.generate)
        gen = statistics.median(per_token)
    tokens = args.batch * (args.input_len + args.target_len)
    json.dump(
        {
            "params": sum(p.numel() for p in model.parameters()),
            "step_seconds": step,
            "step_seconds_min": min(times),
            "tokens_per_sec": tokens / step,
            "generate_seconds_per_token": gen,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
