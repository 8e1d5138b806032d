"""test_checkpoint_kill.py — checkpoints against real process deaths, on a tiny random model:
1. a run SIGKILLed in the middle of writing a checkpoint (debug.checkpoint_pause_s holds it there)
   leaves the previous checkpoint usable: the next run warns about the partial one, resumes from the
   complete one and finishes with the losses of an uninterrupted run, digit for digit;
2. SIGTERM finishes the current step, saves a complete checkpoint and exits 0; SIGINT the same, exit 130;
3. a run resumed after SIGTERM goes on from the step it saved;
4. non-finite steps through the CLI: skipped, then an abort with exit status 1; 5. `fairy2 plot`.
Fresh fixture data and seeds each run (seed printed; F2_TEST_SEED replays)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("F2_BIN", "build/fairy2")
SRC = os.environ.get("F2_SOURCE_DIR", os.getcwd())
passed = failed = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAILED {what}\n{detail}", file=sys.stderr)


seed = int(os.environ.get("F2_TEST_SEED", int(time.time()) % 1000003))
print(f"seed {seed} (F2_TEST_SEED to replay)")
rng = random.Random(seed)
tmp = tempfile.mkdtemp(prefix="f2kill")
subprocess.run([BIN, os.path.join(SRC, "tests", "lua", "train_fixture.lua"), tmp, str(seed)], check=True, cwd=SRC,
               capture_output=True)
recipe = os.path.join(tmp, "tiny.lua")
with open(recipe, "w") as f:
    f.write(f"local fx = dofile({json.dumps(os.path.join(SRC, 'tests', 'lua', 'train_fixture.lua'))})\n"
            f"return fx.recipe({json.dumps(tmp)})\n")
data_seed = rng.randint(1, 10**6)
common = [f"data.seed={data_seed}", "eval.baselines=false", "train.eval_every=0"]


def start(out, *overrides):
    return subprocess.Popen([BIN, recipe, f"out={out}", *common, *overrides], cwd=SRC, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(p, timeout=120):
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def wait_for(pred, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def losses(out):
    """step -> loss text (as metrics.jsonl holds it) of the train records."""
    got = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                got[rec["step"]] = repr(rec["loss"])
    return got


# The uninterrupted run.
steps = 8
straight = os.path.join(tmp, "straight")
rc, text = finish(start(straight, f"train.steps={steps}", "train.checkpoint_every=2"))
check(rc == 0 and "checkpoints/step_000008" in text, "the straight run finishes", text)
want = losses(straight)

# 1. Killed while writing the checkpoint of step 4: the one of step 2 must carry the run.
run = os.path.join(tmp, "killed")
ckpts = os.path.join(run, "checkpoints")
rc, text = finish(start(run, f"train.steps={steps}", "train.checkpoint_every=2", "train.stop_at_step=2"))
check(rc == 0 and os.path.exists(os.path.join(ckpts, "step_000002", "DONE")), "a complete checkpoint at step 2", text)
p = start(run, f"train.steps={steps}", "train.checkpoint_every=2", "debug.checkpoint_pause_s=60")
partial = os.path.join(ckpts, "step_000004.tmp", "model.safetensors")
midway = wait_for(lambda: os.path.exists(partial))
p.send_signal(signal.SIGKILL)
rc, text = finish(p)
check(midway and rc == -signal.SIGKILL, "the process is killed midway through writing step 4", text)
check(not os.path.exists(os.path.join(ckpts, "step_000004")), "step 4 never got its final name")
check(os.path.exists(os.path.join(ckpts, "step_000004.tmp")) and
      not os.path.exists(os.path.join(ckpts, "step_000004.tmp", "state.json")), "what was left is a partial .tmp")
rc, text = finish(start(run, f"train.steps={steps}", "train.checkpoint_every=2"))
check(rc == 0, "the next run succeeds", text)
check("warning: skipping checkpoint " + os.path.join(ckpts, "step_000004.tmp") in text,
      "it warns about the partial checkpoint", text)
check("resuming from " + os.path.join(ckpts, "step_000002") + " (step 2)" in text, "it resumes from step 2", text)
got = losses(run)
check(sorted(got) == list(range(1, steps + 1)), "metrics.jsonl has each step once", str(sorted(got)))
check(got == want, "the losses equal the uninterrupted run's", f"{got}\n{want}")
check(os.path.exists(os.path.join(ckpts, "step_000008", "DONE")) and
      not os.path.exists(os.path.join(ckpts, "step_000004.tmp")), "the run ends complete, the partial one replaced")


# 2. SIGTERM and SIGINT: finish the step, save, exit 0 / 130.
def interrupted(sig, status, name):
    out = os.path.join(tmp, name)
    p = start(out, "train.steps=100000", "train.checkpoint_every=0", "train.log_every=1")
    lines = []
    k = rng.randint(2, 5)
    for line in p.stdout:
        lines.append(line)
        if line.startswith(f"step {k:>6}/"):
            p.send_signal(sig)
            break
    rest, _ = p.communicate(timeout=120)
    text = "".join(lines) + rest
    stopped = [int(x.split()[1].split("/")[0]) for x in text.splitlines() if x.startswith("step ")]
    last = stopped[-1] if stopped else -1
    ck = os.path.join(out, "checkpoints", f"step_{last:06d}")
    check(p.returncode == status, f"{name}: exit status {status}", f"rc={p.returncode}\n{text}")
    check(f"caught {name}: finished step {last}, saving" in text and last >= k, f"{name}: finishes the step", text)
    check(os.path.exists(os.path.join(ck, "DONE")), f"{name}: a complete checkpoint of step {last}", text)
    state = json.load(open(os.path.join(ck, "state.json"))) if os.path.exists(os.path.join(ck, "state.json")) else {}
    check(state.get("step") == last and state.get("optimizer_step") == last, f"{name}: state.json says step {last}")
    return out, last


out, last = interrupted(signal.SIGTERM, 0, "SIGTERM")
interrupted(signal.SIGINT, 130, "SIGINT")

# 3. Resuming after SIGTERM goes on from the saved step (and stops at the new stop_at_step).
rc, text = finish(start(out, "train.steps=100000", "train.checkpoint_every=0", f"train.stop_at_step={last + 2}"))
check(rc == 0 and f"(step {last})" in text and f"step {last + 1:>6}/100000" in text and
      f"stopped after step {last + 2}" in text, "the run resumes after SIGTERM", text)

# 4. Non-finite steps through the CLI: skipped, then the run aborts with one line and exit status 1.
bad = os.path.join(tmp, "nan")
rc, text = finish(start(bad, "train.steps=10", "train.max_bad_steps=2", "debug.nan_steps=[2,3]"))
check(rc == 1 and "SKIPPED (non-finite)" in text and
      text.strip().splitlines()[-1].startswith("fairy2: training aborted at step 3: 2 steps in a row"),
      "two non-finite steps in a row abort with exit status 1", text)

# 5. fairy2 plot redraws a run's picture from its metrics.jsonl.
svg = os.path.join(tmp, "straight.svg")
p = subprocess.run([BIN, "plot", straight, "--out", svg], cwd=SRC, capture_output=True, text=True)
body = open(svg).read() if os.path.exists(svg) else ""
check(p.returncode == 0 and body.startswith("<svg") and body.count("<polyline") >= 1 and "optimizer step" in body,
      "fairy2 plot RUN_DIR --out FILE writes the loss curves", p.stdout + p.stderr)
p = subprocess.run([BIN, "plot", os.path.join(tmp, "no_such_run")], cwd=SRC, capture_output=True, text=True)
check(p.returncode == 1 and "cannot read" in p.stderr, "fairy2 plot on a missing run says so", p.stderr)

shutil.rmtree(tmp)
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
