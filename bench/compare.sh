#!/usr/bin/env bash
# Training throughput against PyTorch + transformers, in one run, on this
# machine: for each preset, `t5-tui bench` and the same step in PyTorch
# (random init, same config and batch shape, AdamW, same threads; warm-up
# excluded, median of 10 steps), then tokens/s, step time, peak RSS and the
# ratio. Not part of CI: it installs torch and transformers into a venv.
#
#   bench/compare.sh [PRESET ...]        (default: t5-tiny t5-small)
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(t5-tiny t5-small)
threads=${THREADS:-2}
# Greedy decoding per token at batch 1 (0 skips it).
gen=${GENERATE:-64}
venv=${VENV:-.venv-bench}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers
fi
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%-10s %-9s %8s %10s %10s %7s %14s %7s\n' preset side "s/step" "tokens/s" "peak RSS" ratio "gen ms/token" ratio
for p in "${presets[@]}"; do
    # The preset's [model] section is a transformers T5Config as it is.
    cfg="$work/$p.json"
    "$venv/bin/python" - "$p" "$cfg" <<'PY'
import json, sys, tomllib, pathlib
name, out = sys.argv[1], sys.argv[2]
model = tomllib.loads(pathlib.Path(f"configs/{name}.toml").read_text())["model"]
model.pop("preset", None)
json.dump(model, open(out, "w"))
PY
    # Dropout off on both sides: the baseline trains without it.
    ours=$(target/release/t5-tui bench --preset "$p" --batch 16 --input-len 128 --target-len 32 \
        --steps 10 --warmup 2 --device cpu --generate "$gen" --set model.dropout_rate=0.0 --json)
    theirs=$("$venv/bin/python" bench/hf_baseline.py --config "$cfg" --batch 16 --input-len 128 \
        --target-len 32 --steps 10 --warmup 2 --threads "$threads" --generate "$gen")
    "$venv/bin/python" - "$p" "$ours" "$theirs" <<'PY'
import json, sys
p, ours, theirs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
gib = lambda b: f"{b / 2**30:.2f} GiB" if b else "-"
ms = lambda s: f"{s * 1e3:.2f}" if s else "-"
og, tg = ours.get("generate_seconds_per_token"), theirs.get("generate_seconds_per_token")
for side, r in (("t5-tui", ours), ("pytorch", theirs)):
    line = f"{p:<10} {side:<9} {r['step_seconds']:>8.3f} {r['tokens_per_sec']:>10.0f} {gib(r.get('peak_rss_bytes')):>10}"
    if side == "t5-tui":
        line += f" {ours['tokens_per_sec'] / theirs['tokens_per_sec']:>6.2f}x"
    else:
        line += " " * 8
    line += f" {ms(r.get('generate_seconds_per_token')):>14}"
    if side == "t5-tui" and og and tg:
        # Speed ratio: their time per token over ours.
        line += f" {tg / og:>6.2f}x"
    print(line)
PY
done
