"""kd-train's exit status and streams for bad input: every mistake on the command line or in a config exits 2
with its message on stderr (naming the flag or the JSON path), nothing of it on stdout; --help exits 0.

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
helped = subprocess.run([kd_train, "--help"], capture_output=True, text=True, timeout=60)
assert helped.returncode == 0 and "distill" in helped.stdout, helped
print("ok: --help exits 0")
