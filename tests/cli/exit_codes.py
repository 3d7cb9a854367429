"""kd-train's exit status and streams for bad input: every mistake on the command line or in a config exits 2
with its message on stderr (naming the flag or the JSON path), nothing of it on stdout; --help exits 0.
A saved model of another architecture exits 2 too, naming the file, the tensor, both shapes and the config
section to fix (LibTorch would take the file's shapes and fail at the first forward, exit 3).

usage: exit_codes.py KD_TRAIN OUT_DIR
"""
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
cases = [
    ("an unknown flag", ["distill", "--bogus"], "--bogus"),
    ("no subcommand", [], "subcommand"),
    ("a flag's value out of range", ["--nproc", "0", "distill"], "--nproc"),
    ("a misspelt config key", ["distill", "--out", os.path.join(out, "a"), "--set", "stages.0.epoch=1"],
     "'stages[0].epoch' is not a stage key; did you mean 'epochs'?"),
    ("a negative weight", ["distill", "--out", os.path.join(out, "b"), "--set", "stages.2.losses.2.weight=-5"],
     "'stages[2].losses[2].weight' must be >= 0"),
    ("a missing config file", ["distill", "--config", os.path.join(out, "none.json")], "none.json"),
]
for name, args, needle in cases:
    run = subprocess.run([kd_train] + args, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, f"{name}: exit {run.returncode}, expected 2:\n{run.stdout}{run.stderr}"
    assert needle in run.stderr, f"{name}: stderr does not say '{needle}':\n{run.stderr}"
    assert needle not in run.stdout and "error" not in run.stdout, f"{name}: the error went to stdout:\n{run.stdout}"
    print(f"ok: {name}: exit 2, on stderr")

# A student saved with other widths, evaluated under the config's: refused before it is loaded.
kl = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "fashion_mnist_kl.json")
narrow = os.path.join(out, "narrow")
tiny = ["--threads", "1", "--set", "data.limit=64", "--set", "teacher.steps=1", "--set", "stages.0.steps=1"]
run = subprocess.run([kd_train, "distill", "--config", kl, "--out", narrow, "--set", "student.width1=8"] + tiny,
                     capture_output=True, text=True, timeout=300)
assert run.returncode == 0, run.stdout + run.stderr
student = os.path.join(narrow, "student.pt")
run = subprocess.run([kd_train, "eval", "--config", kl, "--out", narrow, "--model", student] + tiny,
                     capture_output=True, text=True, timeout=300)
assert run.returncode == 2, f"a student of other widths: exit {run.returncode}, expected 2:\n{run.stdout}{run.stderr}"
for needle in [student, "'conv1.weight': the file holds shape [8, 1, 3, 3], the model's parameter has [32, 1, 3, 3]",
               "\"student\" section"]:
    assert needle in run.stderr, f"a student of other widths: stderr does not say '{needle}':\n{run.stderr}"
print("ok: a saved student of another architecture: exit 2, naming the file, the tensor and both shapes")
helped = subprocess.run([kd_train, "--help"], capture_output=True, text=True, timeout=60)
assert helped.returncode == 0 and "distill" in helped.stdout, helped
print("ok: --help exits 0")
