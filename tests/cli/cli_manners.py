"""kd-train's command-line manners: --version names kdistill, LibTorch (the version Debian's python3-torch
reports, the same LibTorch) and the build, and summary.json records the same; --print-config prints the
resolved config and exits; --quiet keeps the log to warnings and errors while the results are still printed;
metrics.jsonl step lines carry their stage and wall time; `eval --json` prints one JSON object and nothing else
on stdout, with the scores the text report shows; --dry-run checks everything and writes nothing; a mistake in
the last stage stops the run before anything trains.

usage: cli_manners.py KD_TRAIN OUT_DIR   (run with /usr/bin/python3: needs Debian's python3-torch)
"""
import json
import re
import os
import shutil
import subprocess
import sys
import time

import torch

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)

version = subprocess.run([kd_train, "--version"], capture_output=True, text=True, timeout=60)
assert version.returncode == 0, version
libtorch = re.match(r"\d+\.\d+\.\d+", torch.__version__).group(0)  # "1.13.0a0" (Debian), "2.5.1+cu124" (pip)
assert version.stdout.startswith("kd-train (kdistill ") and f"LibTorch {libtorch}," in version.stdout, version.stdout
print("ok: --version:", version.stdout.strip())

printed = subprocess.run([kd_train, "distill", "--set", "stages.2.epochs=5", "--seed", "4", "--print-config"],
                         capture_output=True, text=True, timeout=60)
assert printed.returncode == 0, printed.stdout + printed.stderr
config = json.loads(printed.stdout)
assert config["stages"][2]["epochs"] == 5 and config["train"]["seed"] == 4 and config["task"] == "fashion_mnist", config
print("ok: --print-config prints the resolved config")

run_dir = os.path.join(out, "quiet")
started = time.time()
quiet = subprocess.run([kd_train, "--quiet", "distill", "--out", run_dir, "--threads", "1", "--set", "data.limit=256",
                        "--set", "teacher.epochs=1", "--set", "stages.0.steps=2", "--set", "stages.1.steps=2",
                        "--set", "stages.2.steps=3", "--set", "train.log_every=1"],
                       capture_output=True, text=True, timeout=300)
assert quiet.returncode == 0, quiet.stdout + quiet.stderr
assert "[info]" not in quiet.stdout + quiet.stderr, quiet.stdout + quiet.stderr
assert "test accuracy" in quiet.stdout or "accuracy" in quiet.stdout, quiet.stdout  # the results table
summary = json.load(open(os.path.join(run_dir, "summary.json")))
assert summary["kd_train"]["libtorch"] == libtorch and summary["kd_train"]["kdistill"] in version.stdout, summary["kd_train"]
print("ok: --quiet: no info lines, results printed; summary.json names the build")

stage, times = None, []
for line in open(os.path.join(run_dir, "metrics.jsonl")):
    e = json.loads(line)
    if e["event"] == "stage_begin":
        stage = e["stage"]
    elif e["event"] == "step":
        assert e["stage"] == stage, (e, stage)
        times.append(e["time"])
assert len(times) == 7 and times == sorted(times) and started - 1 <= times[0] <= time.time(), times
print("ok: step lines carry their stage and wall time")

# eval --json: stdout is one JSON object, its scores those of the text report (printed to 4 decimals / 2 of a
# per cent), and macro-F1 the mean of its per-class F1.
eval_args = [kd_train, "eval", "--out", run_dir, "--threads", "1", "--set", "data.limit=256"]
text = subprocess.run(eval_args, capture_output=True, text=True, timeout=120)
as_json = subprocess.run(eval_args + ["--json"], capture_output=True, text=True, timeout=120)
assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
report = json.loads(as_json.stdout)
assert report["model"].startswith("DepthwiseCnnStudent") and report["test_examples"] == 256, report
accuracy = float(re.search(r"accuracy (\d+\.\d+)%", text.stdout).group(1))
macro_f1 = float(re.search(r"macro-F1 (\d\.\d+)", text.stdout).group(1))
assert abs(100 * report["scores"]["accuracy"] - accuracy) < 0.006, (report, accuracy)
assert abs(report["scores"]["macro_f1"] - macro_f1) < 6e-5, (report, macro_f1)
assert len(report["per_class_f1"]) == 10, report
assert abs(sum(report["per_class_f1"]) / 10 - report["scores"]["macro_f1"]) < 1e-9, report
print("ok: eval --json: one JSON object on stdout, the text report's scores")

# --dry-run: the config, the data and every stage checked on two examples with untrained models; nothing
# trained, nothing written, not even the run folder.
dry_dir = os.path.join(out, "dry")
dry = subprocess.run([kd_train, "distill", "--dry-run", "--baseline", "--out", dry_dir, "--threads", "1",
                      "--set", "data.limit=256"], capture_output=True, text=True, timeout=120)
assert dry.returncode == 0, dry.stdout + dry.stderr
assert re.search(r"dry run: the config, the data \(\d+ / \d+ / \d+ examples\) and the 3 stage\(s\) check out on "
                 r"\S+; nothing was trained or written", dry.stdout), dry.stdout
assert not os.path.exists(dry_dir), os.listdir(dry_dir)
print("ok: --dry-run checks and writes nothing")

# A layer the teacher lacks in the LAST stage: refused before the teacher or any stage trains, naming the stage,
# with or without --dry-run; the run folder holds nothing but the lock a real run takes first.
for extra in (["--dry-run"], []):
    bad = subprocess.run([kd_train, "distill", *extra, "--out", dry_dir, "--threads", "1", "--set", "data.limit=256",
                          "--set", "stages.2.losses.0.teacher_layers=[0,7]"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, (extra, bad.returncode, bad.stdout + bad.stderr)
    assert "stage 3/3 'logits' (checked on the first training examples, before training)" in bad.stderr, bad.stderr
    assert "teacher" in bad.stderr and "7" in bad.stderr, bad.stderr
    assert "teacher: training" not in bad.stdout + bad.stderr, bad.stdout
    left = set(os.listdir(dry_dir)) if os.path.exists(dry_dir) else set()
    assert left <= ({".kd-train.lock"} if not extra else set()), (extra, left)
print("ok: a bad layer index in stage 3 stops the run before anything trains or is written")
