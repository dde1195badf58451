#!/usr/bin/env bash
# Soak test, outside CI: for SECS seconds (default 600), trains tiny runs
# headless and kill -9s them at random moments, resuming each time, with a
# full disk injected now and then (T5_TUI_FAULT_DISK_FULL, honoured by debug
# builds) and a bad input fed to another command between kills. After each
# kill it checks the run: crashed, its event log parses (a torn last line
# is allowed), its newest checkpoint loads, and that checkpoint is never
# older than the one before the kill. Prints kills survived, bad inputs
# tried, and runs or checkpoints lost (which must be 0).
#
#   bench/soak.sh               # 10 minutes
#   SECS=3600 bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
export T5_TUI_BIN="$PWD/target/debug/t5-tui"
export T5_TUI_BAD_INPUTS="$PWD/tests/bad_inputs"
export SOAK_SECS=${SECS:-600}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python3 - <<'PY'
import json, os, random, shutil, signal, subprocess, sys, time

BIN = os.environ["T5_TUI_BIN"]
BAD = os.environ["T5_TUI_BAD_INPUTS"]
SECS = float(os.environ["SOAK_SECS"])
HOME = os.path.abspath("home")
FULL = os.path.abspath("disk-is-full")
env = dict(os.environ, T5_TUI_HOME=HOME, T5_TUI_FAULT_DISK_FULL=FULL)
rng = random.Random(int(os.environ.get("SEED", "7")))

with open("corpus.txt", "w") as f:
    for i in range(300):
        f.write(f"the {i % 7} cat sees the {i % 11} dog on day {i}.\n")
with open("exp.toml", "w") as f:
    f.write("""name = "soak"
[model]
vocab_size = 128
d_model = 32
d_ff = 64
num_layers = 1
num_heads = 2
[tokenizer]
vocab_size = 50
extra_ids = 10
[data]
sources = ["corpus.txt"]
[objective]
input_length = 24
[train]
device = "cpu"
batch_size = 4
steps = 1500
[eval]
every_steps = 0
samples_every_steps = 0
[checkpoint]
every_steps = 7
keep_last = 2
""")
with open("bad_utf8.tsv", "wb") as f:
    f.write(b"in\tout\ncaf\xe9\tx\n")
with open("nul.tsv", "wb") as f:
    f.write(b"in\tout\nin\x00put\tx\n")

def cli(*args, timeout=120):
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)

def show(run):
    r = cli("runs", "show", run, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def start(args):
    p = subprocess.Popen([BIN, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    return p

kills = bad_tried = lost_runs = lost_checkpoints = problems = 0
runs = []          # every run started
best = {}          # run -> newest checkpoint step seen
finished = 0
deadline = time.time() + SECS

def bad_input(good):
    """One bad input against a copy of a finished run, or an eval file."""
    global bad_tried, problems
    kind = rng.choice(["truncated", "not-st", "no-state", "config", "eval-utf8",
                       "eval-nul", "eval-notab", "tokenizer"])
    if kind.startswith("eval"):
        data = {"eval-utf8": "bad_utf8.tsv", "eval-nul": "nul.tsv",
                "eval-notab": os.path.join(BAD, "pairs_no_tabs.tsv")}[kind]
        r = cli("eval", good, "--data", data)
    elif kind == "tokenizer":
        with open("exp.toml") as f:
            text = f.read()
        tok = os.path.join(BAD, rng.choice(["tokenizer_not_json.json", "tokenizer_no_sentinels.json"]))
        with open("tok.toml", "w") as f:
            f.write(text.replace("[tokenizer]\n", f"[tokenizer]\npath = {json.dumps(tok)}\n"))
        r = cli("train", "tok.toml", "--headless")
        # A failed new run is the command's own; remove it from the count.
        for line in r.stdout.splitlines()[:1]:
            shutil.rmtree(os.path.join(HOME, "runs", line.strip()), ignore_errors=True)
    else:
        copy = f"20260101-000000-bad-{bad_tried}"
        dst = os.path.join(HOME, "runs", copy)
        shutil.copytree(os.path.join(HOME, "runs", good), dst)
        step = show(copy)["last_checkpoint"]
        ck = os.path.join(dst, "checkpoints", f"step-{step}")
        if kind == "truncated":
            p = os.path.join(ck, "model.safetensors")
            data = open(p, "rb").read()
            open(p, "wb").write(data[: len(data) // 3])
        elif kind == "not-st":
            shutil.copy(os.path.join(BAD, "not_safetensors.safetensors"), os.path.join(ck, "model.safetensors"))
        elif kind == "no-state":
            os.remove(os.path.join(ck, "state.json"))
        else:
            with open(os.path.join(dst, "config.toml"), "a") as f:
                f.write(open(os.path.join(BAD, "config_not_toml.toml")).read())
        # generate needs no state.json: only resume must refuse that one.
        if kind == "no-state" or rng.random() < 0.5:
            r = cli("resume", copy)
        else:
            r = cli("generate", copy, "the cat")
        shutil.rmtree(dst)
    bad_tried += 1
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0 or "panicked" in r.stderr or len(lines) != 1 or not lines[0].startswith("error: "):
        problems += 1
        print(f"bad input {kind}: exit {r.returncode}: {r.stderr.strip()}", file=sys.stderr)

def check_after_kill(run):
    global lost_checkpoints, problems
    s = show(run)
    prob = s["problem"] or ""
    if prob and "cut short" not in prob:
        problems += 1
        print(f"{run}: {prob}", file=sys.stderr)
    step = s["last_checkpoint"]
    if step is not None:
        if step < best.get(run, 0):
            lost_checkpoints += 1
            print(f"{run}: newest checkpoint went from {best[run]} to {step}", file=sys.stderr)
        best[run] = max(best.get(run, 0), step)
        g = cli("generate", run, "the cat", "--max-tokens", "2")
        if g.returncode != 0:
            lost_checkpoints += 1
            print(f"{run}: checkpoint {step} does not load: {g.stderr.strip()}", file=sys.stderr)

good = None
while time.time() < deadline:
    p = start(["train", "exp.toml", "--headless"])
    run = p.stdout.readline().strip()
    runs.append(run)
    while time.time() < deadline:
        time.sleep(rng.uniform(0.05, 0.6))
        if rng.random() < 0.1:
            # A full disk for a moment: the run pauses (headless: stops).
            open(FULL, "w").close()
            time.sleep(rng.uniform(0.0, 0.2))
            os.remove(FULL)
        if p.poll() is None:
            p.kill()
            kills += 1
        p.wait()
        check_after_kill(run)
        if show(run)["status"] == "finished":
            finished += 1
            good = run
            break
        if good and rng.random() < 0.5:
            bad_input(good)
        p = start(["resume", run])
        p.stdout.readline()
    else:
        p.kill()
        p.wait()

for run in runs:
    s = show(run)
    if s["status"] == "failed" or (s["last_checkpoint"] is None and s["steps"] > 7):
        lost_runs += 1
        print(f"{run}: lost: {s}", file=sys.stderr)
listed = {r["id"] for r in json.loads(cli("runs", "--json").stdout)}
lost_runs += sum(1 for r in runs if r not in listed)
print(f"soak: {SECS:.0f}s, {len(runs)} runs ({finished} trained to the end), "
      f"{kills} kill -9s survived, {bad_tried} bad inputs tried, "
      f"{lost_runs} runs lost, {lost_checkpoints} checkpoints lost, {problems} other problems")
sys.exit(1 if lost_runs or lost_checkpoints or problems else 0)
PY
