"""kd-train distill with data.student_labels, tiny: the student's hard-label terms see a quarter of the labels
(the rest are -100), the teacher trained in the same run sees all of them, and the student alone with fewer
labels differs from the one with all labels.

usage: student_labels.py KD_TRAIN OUT_DIR
"""
import json
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
alone = ["--set", 'stages=[{"name": "alone", "steps": 6, "losses": [{"type": "hard_label_ce", "name": "ce"}]}]']
tiny = ["--threads", "1", "--set", "data.limit=512", "--set", "teacher.epochs=1", "--set", "train.batch_size=64"]


def distill(folder, *extra):
    run = subprocess.run([kd_train, "distill", "--out", os.path.join(out, folder)] + tiny + list(extra),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr, json.load(open(os.path.join(out, folder, "summary.json")))


log, few = distill("few", "--set", "data.student_labels=0.25", *alone)
assert "student: labels of 128 of the 512 training examples (data.student_labels 0.25); the rest are -100" in log, log
# The teacher was trained in this run, on all 512 labels: the same teacher as a run with every label.
log_all, every = distill("all", "--set", "data.student_labels=1", *alone)
assert "student: labels of" not in log_all, log_all
assert few["models"][0] == every["models"][0], (few["models"][0], every["models"][0])
assert few["models"][1]["test_accuracy"] != every["models"][1]["test_accuracy"] or \
    few["models"][1]["test_macro_f1"] != every["models"][1]["test_macro_f1"], (few["models"][1], every["models"][1])

bad = subprocess.run([kd_train, "distill", "--out", os.path.join(out, "bad"), "--set", "data.student_labels=0"] + tiny,
                     capture_output=True, text=True)
assert bad.returncode == 2 and "data.student_labels" in bad.stdout + bad.stderr, (bad.returncode, bad.stdout, bad.stderr)
print("ok")
