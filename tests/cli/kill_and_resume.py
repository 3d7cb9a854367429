"""kd-train distill killed with SIGKILL at random points, several times per trial, then resumed with
--resume until it finishes: the student equals the one an uninterrupted run produced, bit for bit (CPU),
and no half-written file is left behind.

A kill can land anywhere: in a step, in an evaluation, in the middle of writing a checkpoint (one is
written after every step here), between runs' start-up and the first step. Kill points are drawn from
a seeded RNG, so a failure can be replayed with the same seed.

With --options, the same trials run for each named set of trainer options (each against its own
uninterrupted run): `--options all` is the campaign over every option of the trainer kd-train exposes.

usage: kill_and_resume.py KD_TRAIN OUT_DIR [TRIALS] [SEED] [--options all | NAME ...]
prints: "kill-and-resume: N trials, K kills, all resumed runs identical" (the figure in docs/RESULTS.md),
and with --options one such line per option set and a total.
"""
import argparse
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

# Trainer options kd-train exposes, each a set of --set overrides on the tiny run below.
OPTIONS = {
    "defaults": [],
    "accumulation": ["train.batch_size=16", "train.accumulation=2"],
    "sgd_nesterov": ['train.optimizer="sgd"', "train.nesterov=true"],
    "warmup": ["train.warmup_steps=5"],
    "ema": ["train.ema_decay=0.9", "train.eval_on_ema=true"],
    "hard_examples_by_teacher_entropy": ["train.hard_example_mix=0.5"],
    "hard_examples_by_disagreement": ["train.hard_example_mix=0.5", 'train.hardness="disagreement"'],
    "cutmix": ['train.augment="cutmix"'],
    "adversarial_examples": ["train.adversarial_epsilon=0.05"],
    "lower_lr_policy_and_clipping": ['train.nonfinite="lower_lr"', "train.clip_norm=0.5"],
    "teacher_cache": ["teacher.cache.enabled=true"],
    "qat": ['stages.2.hooks=["qat"]'],
    "lora": ['student.model="cnn"', 'stages.2.hooks=["lora"]'],
}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("kd_train")
p.add_argument("out")
p.add_argument("trials", type=int, nargs="?", default=3)
p.add_argument("seed", type=int, nargs="?", default=2026)
p.add_argument("--options", nargs="+", default=["defaults"], metavar="NAME",
               help="option sets to run the trials under: " + ", ".join(OPTIONS) + ", or all")
a = p.parse_args()
kd_train, out, trials = a.kd_train, a.out, a.trials
rng = random.Random(a.seed)
names = list(OPTIONS) if a.options == ["all"] else a.options
for name in names:
    if name not in OPTIONS:
        p.error(f"unknown option set '{name}'; known: {', '.join(OPTIONS)}, all")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)


def args(run_dir, overrides=()):
    extra = [x for o in overrides for x in ("--set", o)]
    return [kd_train, "distill", "--out", run_dir, "--threads", "1", "--set", "data.limit=512",
            "--set", "teacher.epochs=1", "--set", "stages.0.steps=6", "--set", "stages.1.steps=6",
            "--set", "stages.2.steps=12", "--set", "stages.2.eval_every=5", "--set", "train.batch_size=32",
            "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"] + extra


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


def campaign(name, overrides, teacher):
    """The trials under one option set; the number of kills. `teacher`: a teacher.pt to reuse, or None."""
    base = os.path.join(out, name)
    # The uninterrupted run (its teacher is reused, so every trial distils from the same teacher).
    ref = os.path.join(base, "reference")
    os.makedirs(ref)
    if teacher:
        shutil.copy(teacher, os.path.join(ref, "teacher.pt"))
    run = subprocess.run(args(ref, overrides), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{name}: " + run.stdout + run.stderr
    want = digest(os.path.join(ref, "student.pt"))
    teacher = os.path.join(ref, "teacher.pt")
    total_steps = 24
    kills = 0
    for trial in range(trials):
        run_dir = os.path.join(base, f"trial{trial}")
        os.makedirs(run_dir)
        shutil.copy(teacher, os.path.join(run_dir, "teacher.pt"))
        resume = []
        for attempt in range(12):
            # Kill after a random number of further steps (0: during start-up or the first step), at a
            # random moment within that step.
            target = steps_logged(run_dir) + rng.randint(0, 6)
            proc = subprocess.Popen(args(run_dir, overrides) + resume, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
                raise AssertionError(f"{name}, trial {trial}: a resumed run failed (exit {proc.returncode}):\n{log}")
            resume = ["--resume"]
            assert proc.returncode == -signal.SIGKILL, proc.returncode
            # Whatever the kill interrupted, what is on disk is whole: checkpoints only under their final names.
            ckpt_dir = os.path.join(run_dir, "checkpoints")
            if os.path.isdir(ckpt_dir):
                for entry in os.listdir(ckpt_dir):
                    if not entry.startswith("ckpt-"):
                        continue  # a staging file: removed when the next run opens the folder (checked below)
                    with zipfile.ZipFile(os.path.join(ckpt_dir, entry)) as z:
                        assert z.testzip() is None, f"{name}: checkpoint {entry} is damaged"
        else:
            raise AssertionError(f"{name}, trial {trial}: did not finish")
        # Each step logged once (a step line carries the steps done before it), however many kills and resumes.
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            logged = [json.loads(line)["global_step"] for line in f if '"event":"step"' in line]
        assert logged == list(range(total_steps)), f"{name}, trial {trial}: steps logged {logged}"
        got = digest(os.path.join(run_dir, "student.pt"))
        assert got == want, f"{name}, trial {trial}: resumed student differs from the uninterrupted one"
        leftovers = [f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if not f.startswith("ckpt-")]
        leftovers += [f for f in os.listdir(run_dir) if ".tmp." in f or f.startswith(".staging")]
        assert not leftovers, f"{name}, trial {trial}: half-written files left behind: {leftovers}"

    assert kills >= trials, f"{name}: only {kills} kills in {trials} trials: the runs finished too fast to be interrupted"
    print(f"kill-and-resume{'' if name == 'defaults' and len(names) == 1 else ' (' + name + ')'}: {trials} trials, "
          f"{kills} kills, all resumed runs identical to the uninterrupted run", flush=True)
    return kills


teacher, total = None, 0
for name in names:
    total += campaign(name, OPTIONS[name], teacher)
    # Every option set distils from the first one's teacher (the teacher's options are not under test).
    teacher = teacher or os.path.join(out, name, "reference", "teacher.pt")
if len(names) > 1:
    print(f"kill-and-resume over {len(names)} option sets: {len(names) * trials} trials, {total} kills, "
          f"all resumed runs identical to their uninterrupted runs")
