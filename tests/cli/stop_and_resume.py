"""kd-train distill stopped by SIGTERM mid-stage: it finishes the step, writes a checkpoint, says how to
continue and ends by SIGTERM (a shell shows 143); `--resume` then finishes the run from that checkpoint.

usage: stop_and_resume.py KD_TRAIN OUT_DIR
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
args = [kd_train, "distill", "--out", out, "--threads", "1", "--set", "data.limit=256", "--set", "teacher.epochs=1",
        "--set", "stages.0.steps=1", "--set", "stages.1.steps=1", "--set", "stages.2.steps=400",
        "--set", "train.batch_size=16", "--set", "train.checkpoint_every=0", "--set", "train.log_every=1"]



def steps_in_last_stage(path):
    """Step lines of metrics.jsonl (one per step, flushed) after the last stage began."""
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    begin = [i for i, line in enumerate(lines) if '"event":"stage_begin","stage":"logits"' in line]
    return sum('"event":"step"' in line for line in lines[begin[0]:]) if begin else 0


# Signal once the last stage has taken a few of its 400 steps.
run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
metrics = os.path.join(out, "metrics.jsonl")
deadline = time.time() + 240
while time.time() < deadline and run.poll() is None and steps_in_last_stage(metrics) < 3:
    time.sleep(0.02)
assert run.poll() is None, "kd-train ended before it could be signalled:\n" + run.communicate()[0]
run.send_signal(signal.SIGTERM)
log = run.communicate(timeout=120)[0]
assert run.returncode == -signal.SIGTERM, f"exit status {run.returncode}, expected death by SIGTERM:\n{log}"
assert "run the same command with --resume to continue" in log, log
assert not os.path.exists(os.path.join(out, "student.pt")), "a stopped run must not write the final student"
leftovers = [f for f in os.listdir(os.path.join(out, "checkpoints")) if not f.startswith("ckpt-")]
assert not leftovers, f"half-written files were left behind: {leftovers}"
checkpoints = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.pt")))
assert checkpoints, "no checkpoint after the stop:\n" + log

rest = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
log2 = rest.stdout + rest.stderr
assert rest.returncode == 0, log2
assert "resuming from " + checkpoints[-1] in log2, log2
assert os.path.exists(os.path.join(out, "student.pt")), log2
# Stopped within a few steps of the signal: at step 2 (stages 1 and 2) + 3..400 of the last stage.
step = int(os.path.basename(checkpoints[-1]).split("-")[1])
assert 5 <= step < 402, checkpoints
print(f"ok: stopped at {os.path.basename(checkpoints[-1])}, resumed to the end")

# The summary describes the whole run, the stages the first process trained included, and stays so when the
# finished run is resumed again (nothing left to train).
import json  # noqa: E402

for attempt in ("after the resume", "after resuming the finished run"):
    summary = json.load(open(os.path.join(out, "summary.json")))
    stages = [(s["stage"], s["steps"]) for s in summary["stages"]]
    assert stages == [("features", 1), ("attention", 1), ("logits", 400)], f"{attempt}: {summary['stages']}"
    assert all("validation_accuracy" in s and s["seconds"] > 0 for s in summary["stages"]), summary["stages"]
    assert abs(summary["student_seconds"] - sum(s["seconds"] for s in summary["stages"])) < 1e-6, summary
    if attempt == "after the resume":
        first_seconds = summary["student_seconds"]
        again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
assert summary["student_seconds"] >= first_seconds, summary
print("ok: summary.json holds every stage of the run across resumes")
