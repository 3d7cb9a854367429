"""kd-train distill killed with SIGKILL at random points, several times per trial, then resumed with
--resume until it finishes: the student equals the one an uninterrupted run produced, bit for bit (CPU),
and no half-written file is left behind.

A kill can land anywhere: in a step, in an evaluation, in the middle of writing a checkpoint (one is
written after every step here), between runs' start-up and the first step. Kill points are drawn from
a seeded RNG, so a failure can be replayed with the same seed.

usage: kill_and_resume.py KD_TRAIN OUT_DIR [TRIALS] [SEED]
prints: "kill-and-resume: N trials, K kills, all resumed runs identical" (the figure in docs/RESULTS.md)
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile

kd_train, out = sys.argv[1:3]
trials = int(sys.argv[3]) if len(sys.argv) > 3 else 3
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 2026)
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)


def args(run_dir):
    return [kd_train, "distill", "--out", run_dir, "--threads", "1", "--set", "data.limit=512",
            "--set", "teacher.epochs=1", "--set", "stages.0.steps=6", "--set", "stages.1.steps=6",
            "--set", "stages.2.steps=12", "--set", "stages.2.eval_every=5", "--set", "train.batch_size=32",
            "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"]


def tensors(path):
    """The tensors of a saved module, by name, as raw bytes (an archive's data/ records)."""
    with zipfile.ZipFile(path) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist() if "/data/" in n}


def digest(path):
    return hashlib.sha256(b"".join(v for _, v in sorted(tensors(path).items()))).hexdigest()


def steps_logged(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, errors="replace") as f:
        return sum('"event":"step"' in line for line in f)


# The uninterrupted run (its teacher is reused, so every trial distils from the same teacher).
ref = os.path.join(out, "reference")
run = subprocess.run(args(ref), capture_output=True, text=True, timeout=600)
assert run.returncode == 0, run.stdout + run.stderr
want = digest(os.path.join(ref, "student.pt"))
total_steps = 24

kills = 0
for trial in range(trials):
    run_dir = os.path.join(out, f"trial{trial}")
    os.makedirs(run_dir)
    shutil.copy(os.path.join(ref, "teacher.pt"), os.path.join(run_dir, "teacher.pt"))
    resume = []
    for attempt in range(12):
        # Kill after a random number of further steps (0: during start-up or the first step), at a
        # random moment within that step.
        target = steps_logged(run_dir) + rng.randint(0, 6)
        proc = subprocess.Popen(args(run_dir) + resume, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while proc.poll() is None and steps_logged(run_dir) < target and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None and attempt < 11:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
        else:
            log = proc.communicate(timeout=300)[0]
            if proc.returncode == 0:
                break
            raise AssertionError(f"trial {trial}: a resumed run failed (exit {proc.returncode}):\n{log}")
        resume = ["--resume"]
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        # Whatever the kill interrupted, what is on disk is whole: checkpoints only under their final names.
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        if os.path.isdir(ckpt_dir):
            for name in os.listdir(ckpt_dir):
                if not name.startswith("ckpt-"):
                    continue  # a staging file: removed when the next run opens the folder (checked below)
                with zipfile.ZipFile(os.path.join(ckpt_dir, name)) as z:
                    assert z.testzip() is None, f"checkpoint {name} is damaged"
    else:
        raise AssertionError(f"trial {trial}: did not finish")
    # Each step logged once (a step line carries the steps done before it), however many kills and resumes.
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        logged = [json.loads(line)["global_step"] for line in f if '"event":"step"' in line]
    assert logged == list(range(total_steps)), f"trial {trial}: steps logged {logged}"
    got = digest(os.path.join(run_dir, "student.pt"))
    assert got == want, f"trial {trial}: resumed student differs from the uninterrupted one"
    leftovers = [f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if not f.startswith("ckpt-")]
    leftovers += [f for f in os.listdir(run_dir) if ".tmp." in f or f.startswith(".staging")]
    assert not leftovers, f"trial {trial}: half-written files left behind: {leftovers}"

assert kills >= trials, f"only {kills} kills in {trials} trials: the runs finished too fast to be interrupted"
print(f"kill-and-resume: {trials} trials, {kills} kills, all resumed runs identical to the uninterrupted run")
