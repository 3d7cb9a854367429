"""kd-train distill with configs/qat.json, tiny: the int8 file is written, loaded into a fresh student
and scored by kd-train; here we check what it reported against the files it wrote.

usage: qat_tiny.py KD_TRAIN CONFIG OUT_DIR
"""
import json
import os
import shutil
import subprocess
import sys

kd_train, config, out = sys.argv[1:4]
shutil.rmtree(out, ignore_errors=True)  # a fresh run: an earlier run's checkpoints there would be refused
run = subprocess.run(
    [kd_train, "distill", "--config", config, "--out", out, "--threads", "1", "--set", "data.limit=256",
     "--set", "teacher.epochs=1", "--set", "stages.0.steps=1", "--set", "stages.1.steps=1",
     "--set", "stages.2.steps=1", "--set", "stages.3.steps=4", "--set", "train.batch_size=64",
     # the QAT stage's own settings (a stage's "qat" object): observers frozen from its step 2
     "--set", "stages.3.qat.freeze_observers_at_step=2"],
    capture_output=True, text=True)
log = run.stdout + run.stderr
assert run.returncode == 0, log
# The depthwise student: conv1, depthwise, pointwise and fc are quantized; its 4 activation points observed.
assert "QAT int8: 4 weight sites (per-channel, [-127, 127]), 4 activation points" in log, log
assert "fake quantization on, observers freeze at step 2 of the stage" in log, log

summary = json.load(open(os.path.join(out, "summary.json")))
rows = {r["model"]: r for r in summary["models"]}
fake = rows["DepthwiseCnnStudent (fake-quant)"]
int8 = rows["DepthwiseCnnStudent (int8 file)"]
assert "DepthwiseCnnStudent (float, before QAT)" in rows, rows.keys()
assert "DepthwiseCnnStudent (float, QAT weights)" in rows, rows.keys()
# The int8 file reproduces the fake-quant model's predictions, so its scores are the same.
assert int8["test_accuracy"] == fake["test_accuracy"], (int8, fake)
assert int8["test_macro_f1"] == fake["test_macro_f1"], (int8, fake)

path = os.path.join(out, "student.int8.pt")
size = os.path.getsize(path)
assert summary["int8"]["file_bytes"] == size, (summary["int8"], size)
# float32 state of the 16,650 parameters (+ BatchNorm running stats) is 67 KB; the int8 file (int8 weights,
# float32 scales and remainder, a small index) is at most 0.30 of it.
assert summary["int8"]["float32_bytes"] == 67032, summary["int8"]
assert size <= 0.30 * summary["int8"]["float32_bytes"], summary["int8"]
print(f"ok: int8 file {size} bytes, accuracy {int8['test_accuracy']} == fake-quant {fake['test_accuracy']}")
