"""The same config and seed give the same teacher, whether `kd-train teacher` trains it or `kd-train distill`
trains it first (checking the stages must not draw from the random stream the run seeded).

usage: same_teacher.py KD_TRAIN OUT_DIR
"""
import hashlib
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
common = ["--seed", "3", "--threads", "1", "--set", "data.limit=256", "--set", "teacher.epochs=1"]
alone = subprocess.run([kd_train, "teacher", "--out", os.path.join(out, "teacher")] + common, capture_output=True,
                       text=True, timeout=300)
assert alone.returncode == 0, alone.stdout + alone.stderr
within = subprocess.run([kd_train, "distill", "--out", os.path.join(out, "distill")] + common +
                        ["--set", "stages.0.steps=1", "--set", "stages.1.steps=1", "--set", "stages.2.steps=1"],
                        capture_output=True, text=True, timeout=300)
assert within.returncode == 0, within.stdout + within.stderr
digest = lambda d: hashlib.sha256(open(os.path.join(out, d, "teacher.pt"), "rb").read()).hexdigest()
assert digest("teacher") == digest("distill"), "kd-train teacher and kd-train distill trained different teachers"
print("ok: kd-train teacher and distill's own teacher are the same bytes")
