"""kd-train distill --resume under a changed list of stages: the stages a checkpoint has finished may not
change (exit 2, naming the stage, the run folder untouched), stages not yet begun may change or be added; a
finished run with one more stage resumes, trains only that stage, and ends with the student a run that had
the stage from the start would have, bit for bit.

usage: changed_stages.py KD_TRAIN OUT_DIR
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
run_dir = os.path.join(out, "run")
tiny = ["--threads", "1", "--set", "data.limit=128", "--set", "teacher.epochs=1", "--set", "stages.0.steps=2",
        "--set", "stages.1.steps=2", "--set", "stages.2.steps=2", "--set", "train.batch_size=32"]


def kd(*args):
    return subprocess.run([kd_train, *args], capture_output=True, text=True, timeout=600)


def digest(path):
    """The saved module's tensors, as raw bytes in name order."""
    with zipfile.ZipFile(path) as z:
        return hashlib.sha256(b"".join(z.read(n) for n in sorted(z.namelist()) if "/data/" in n)).hexdigest()


first = kd("distill", "--out", run_dir, *tiny)
assert first.returncode == 0, first.stdout + first.stderr
config_before = open(os.path.join(run_dir, "config.json")).read()

# A finished stage changed: refused, naming it; nothing in the folder changes.
changed = kd("distill", "--out", run_dir, *tiny, "--set", "stages.2.losses.2.temperature=2", "--resume")
assert changed.returncode == 2, f"exit {changed.returncode}:\n{changed.stdout}{changed.stderr}"
assert "stage 3/3 'logits' changed since checkpoint" in changed.stderr, changed.stderr
assert "has finished it" in changed.stderr, changed.stderr
assert open(os.path.join(run_dir, "config.json")).read() == config_before, "a refused resume rewrote config.json"
print("ok: a finished stage changed: exit 2, naming the stage, config.json as it was")

# One more stage: the resolved config with a fourth stage appended, as a file.
resolved = kd("distill", "--out", run_dir, *tiny, "--print-config")
assert resolved.returncode == 0, resolved.stderr
config = json.loads(resolved.stdout)
config["stages"].append({"name": "more_logits", "steps": 3,
                         "losses": [{"type": "temperature_kl", "name": "kl", "weight": 1.0, "temperature": 2.0}]})
longer = os.path.join(out, "longer.json")
json.dump(config, open(longer, "w"))

more = kd("distill", "--config", longer, "--resume")
log = more.stdout + more.stderr
assert more.returncode == 0, log
assert "stage 4/4 'more_logits' changed or added since checkpoint" in log, log
assert "stage 1/4" not in log and "stage 2/4" not in log, "the finished stages were trained again:\n" + log
summary = json.load(open(os.path.join(run_dir, "summary.json")))
assert [(s["stage"], s["steps"]) for s in summary["stages"]] == [
    ("features", 2), ("attention", 2), ("logits", 2), ("more_logits", 3)], summary["stages"]

straight_dir = os.path.join(out, "straight")
config["out"] = straight_dir
straight_config = os.path.join(out, "straight.json")
json.dump(config, open(straight_config, "w"))
straight = kd("distill", "--config", straight_config)
assert straight.returncode == 0, straight.stdout + straight.stderr
assert digest(os.path.join(run_dir, "student.pt")) == digest(os.path.join(straight_dir, "student.pt")), \
    "the run extended by a stage differs from a run that had the stage from the start"
print("ok: a stage added to a finished run: only it trains, and the student equals the straight run's")
