#!/usr/bin/env bash
# Data benchmark (not a test): prepares a generated corpus of at least
# 100 MB with `t5-tui data prepare` and reports MB/s and peak RSS.
#
#   bench/data_prepare.sh [SIZE_MB]
#
# The corpus mixes English-like and Japanese-like lines, with duplicates,
# control characters, full-width forms and a few invalid UTF-8 lines, so
# that every cleaning rule has work. Peak RSS must stay below 1 GiB however
# large the corpus: reading is streaming and duplicates are kept as hashes.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-110}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
python3 - "$work/corpus.txt" "$size_mb" <<'PY'
import random, sys
path, size_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(5000)]
kana = [chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x4e00, 0x4e00 + 800)]
target = size_mb * 1_000_000
written = 0
with open(path, 'wb') as f:
    while written < target:
        r = rng.random()
        if r < 0.55:
            line = ' '.join(rng.choice(words) for _ in range(rng.randint(5, 40))).capitalize() + '.'
        elif r < 0.9:
            line = ''.join(rng.choice(kana) for _ in range(rng.randint(8, 60))) + '。'
        elif r < 0.95:
            line = 'Ｆｕｌｌ ｗｉｄｔｈ\t  spaces\x07 ' + rng.choice(words)
        else:
            line = 'a duplicate line that repeats'
        data = line.encode() + b'\n'
        if rng.random() < 0.0005:
            data = b'bad \xff\xfe bytes\n'
        f.write(data)
        written += len(data)
PY
cat > "$work/bench.toml" <<TOML
name = "data-bench"
[model]
preset = "t5-tiny"
[data]
sources = ["$work/corpus.txt"]
TOML
echo "corpus: $(du -m "$work/corpus.txt" | cut -f1) MB"
T5_TUI_HOME="$work/home" /usr/bin/time -v target/release/t5-tui data prepare "$work/bench.toml" \
  --out "$work/prepared" 2> "$work/time.txt"
grep -E "Maximum resident set size|Elapsed" "$work/time.txt"
rss_kb=$(grep "Maximum resident set size" "$work/time.txt" | awk '{print $NF}')
echo "peak RSS: $((rss_kb / 1024)) MiB (limit 1024 MiB)"
[ "$rss_kb" -lt $((1024 * 1024)) ] || { echo "peak RSS over 1 GiB"; exit 1; }
