#!/usr/bin/env bash
# Runs the parser property tests (tests/fuzz_parsers.rs: experiment TOML,
# TSV/JSONL corpora, events.jsonl) with many more cases than CI does, over
# and over with fresh seeds, for a bounded time. Not part of CI.
#
#   bench/fuzz.sh              # 10 minutes, 20000 cases a property a round
#   SECS=3600 CASES=100000 bench/fuzz.sh
#
# A failure prints proptest's minimal failing input and stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-600}
CASES=${CASES:-20000}
cargo test --test fuzz_parsers --no-run >/dev/null 2>&1
end=$((SECONDS + SECS))
rounds=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
while [ "$SECONDS" -lt "$end" ]; do
    # proptest draws a new seed every run, so every round tries new inputs.
    left=$((end - SECONDS))
    set +e
    PROPTEST_CASES=$CASES timeout "$left" cargo test -q --test fuzz_parsers >"$log" 2>&1
    rc=$?
    set -e
    # 124: the time ran out in the middle of a round.
    [ "$rc" -eq 124 ] && break
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz: a property failed in round $((rounds + 1))" >&2
        exit 1
    fi
    rounds=$((rounds + 1))
done
echo "fuzz: $rounds rounds of $CASES cases for each of 5 properties, no failure, in ${SECS}s"
