"""kd-train export, checked from the outside: tiny Fashion-MNIST and spam runs, then
- --format torchscript: Python (torch.jit.load) runs the file over the whole Fashion-MNIST test set,
  read here from the IDX files with gzip + numpy; its accuracy must be what `kd-train eval` reports
  for student.pt, and for the spam student its logits must be finite [N, 2];
- --format int8 (post-training calibration of a float student): `kd-train eval` of the int8 file must
  report the accuracy export printed for it, and the int8 file exported again as TorchScript must
  score the same in Python;
- --compact on a spam student whose fc1 channels were pruned to half: Python runs the compact and the dense
  TorchScript files on the same tokens and gets the same logits, from fc1 layers of half the rows;
- bad requests (an int8 teacher, --to over the model, --compact with int8) are refused with exit status 2 and a message
  that names the fix.

usage: export.py KD_TRAIN OUT_DIR   (run with /usr/bin/python3: needs torch and numpy)
"""
import gzip
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import torch

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
fm = ["--out", os.path.join(out, "fm"), "--threads", "1", "--set", "data.limit=512", "--set", "teacher.epochs=1",
      "--set", "stages.0.steps=2", "--set", "stages.1.steps=2", "--set", "stages.2.steps=6",
      "--set", "train.batch_size=64"]


def kd(*args, expect=0):
    run = subprocess.run([kd_train, *args], capture_output=True, text=True)
    log = run.stdout + run.stderr
    assert run.returncode == expect, f"exit {run.returncode} (expected {expect}): {' '.join(args)}\n{log}"
    return log


def number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in:\n{text}"
    return float(m.group(1))


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


# Fashion-MNIST test images as kd::data::load_fashion_mnist documents them: (x / 255 − 0.2860) / 0.3530, [N, 1, 28, 28].
root = "/usr/share/datasets/fashion-mnist"
images = ((torch.from_numpy(idx(f"{root}/t10k-images-idx3-ubyte.gz").astype(np.float32)) / 255.0 - 0.2860) / 0.3530).unsqueeze(1)
labels = torch.from_numpy(idx(f"{root}/t10k-labels-idx1-ubyte.gz").astype(np.int64))


def python_accuracy(path):
    m = torch.jit.load(path)
    m.eval()
    with torch.no_grad():
        predictions = torch.cat([m(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return 100.0 * (predictions == labels).double().mean().item()


kd("distill", *fm)
full = ["--set", "data.limit=0"]  # data.limit caps the test split too: score all 10 000 images as Python does
reported = number(r"test accuracy ([0-9.]+)%", kd("eval", *fm, *full))

log = kd("export", *fm)
assert "read back with torch::jit::load, largest logit difference" in log, log
assert number(r"largest logit difference on 8 test inputs ([0-9.e+-]+)", log) < 1e-4, log
ts = os.path.join(out, "fm", "student.ts.pt")
got = python_accuracy(ts)
assert abs(got - reported) < 1e-6, f"Python {got} vs kd-train eval {reported}"
print(f"ok: TorchScript student in Python: {got:.2f}% == kd-train eval {reported:.2f}%")

# The teacher with its layers, so the file can serve as a teacher elsewhere (kd::ScriptModel).
log = kd("export", *fm, "--which", "teacher", "--with-layers")
t = torch.jit.load(os.path.join(out, "fm", "teacher.ts.pt"))
logits, hidden, attentions = t(images[:3])
assert logits.shape == (3, 10) and len(hidden) == 2 and len(attentions) == 2, (logits.shape, len(hidden))
assert hidden[1].shape == (3, 64, 7, 7), hidden[1].shape

# int8 after calibration, scored by kd-train eval and (as TorchScript) by Python.
log = kd("export", *fm, "--format", "int8", "--calibration-batches", "4")
assert "calibrated on 4 training batch(es) of 64" in log, log
printed = number(r"int8 file accuracy ([0-9.]+)%", log)
i8 = os.path.join(out, "fm", "student.int8.pt")
assert abs(printed - number(r"test accuracy ([0-9.]+)%", kd("eval", *fm, "--model", i8))) < 1e-6, printed
evaluated = number(r"test accuracy ([0-9.]+)%", kd("eval", *fm, *full, "--model", i8))
ts8 = os.path.join(out, "fm", "student_int8.ts.pt")
kd("export", *fm, "--model", i8, "--to", ts8)
got8 = python_accuracy(ts8)
assert abs(got8 - evaluated) < 1e-6, f"Python {got8} vs kd-train eval {evaluated} (int8 file)"
print(f"ok: int8 file {os.path.getsize(i8)} bytes: {evaluated:.2f}% in kd-train eval and as TorchScript in Python")

# Refusals: exit status 2 and what to do instead.
log = kd("export", *fm, "--which", "teacher", "--format", "int8", expect=2)
assert "--format int8 exports students only" in log, log
log = kd("export", *fm, "--to", os.path.join(out, "fm", "student.pt"), expect=2)
assert "is the model being exported; choose another file" in log, log
log = kd("export", *fm, "--model", i8, "--format", "int8", expect=2)
assert "is an int8 file already" in log, log

# A token model: the spam encoder, traced on a full-length input (padding is data, not control flow).
spam = ["--out", os.path.join(out, "spam"), "--threads", "1", "--set", "task=spam", "--set", "data.limit=32",
        "--set", "data.max_len=48", "--set", "teacher.steps=1", "--set", "stages.0.steps=1",
        "--set", "stages.1.steps=1", "--set", "stages.2.steps=1", "--set", "train.batch_size=16"]
kd("distill", *spam)
log = kd("export", *spam)
assert number(r"largest logit difference on 8 test inputs ([0-9.e+-]+)", log) < 1e-4, log
m = torch.jit.load(os.path.join(out, "spam", "student.ts.pt"))
tokens = torch.randint(1, 256, (5, 48))
tokens[:, 30:] = 0  # padding
with torch.no_grad():
    logits = m(tokens)
assert logits.shape == (5, 2) and torch.isfinite(logits).all(), logits
print("ok: spam student exported and run in Python:", tuple(logits.shape))

# --compact: half of each block's fc1 channels pruned (configs/spam_pruned.json), then removed from the file.
pruned = ["--config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "spam_pruned.json"),
          "--out", os.path.join(out, "spam_pruned"), "--threads", "1", "--set", "data.limit=32",
          "--set", "data.max_len=48", "--set", "teacher.steps=1", "--set", "stages.0.steps=1",
          "--set", "stages.1.steps=1", "--set", "stages.2.steps=4", "--set", "prune.update_every=1",
          "--set", "train.batch_size=16"]
kd("distill", *pruned)
dense_ts = os.path.join(out, "spam_pruned", "dense.ts.pt")
kd("export", *pruned, "--to", dense_ts)
log = kd("export", *pruned, "--compact")
assert "parameters 116610 -> 83586" in log and "blocks.1 heads 2 -> 2, ffn 256 -> 128" in log, log
assert number(r"largest logit difference compact vs dense on 8 test inputs ([0-9.e+-]+)", log) < 1e-4, log
compact = torch.jit.load(os.path.join(out, "spam_pruned", "student.ts.pt"))
dense = torch.jit.load(dense_ts)
assert tuple(compact.state_dict()["blocks.0.fc1.weight"].shape) == (128, 64), compact.state_dict().keys()
assert sum(p.numel() for p in compact.parameters()) == 83586
with torch.no_grad():
    a, b = compact(tokens), dense(tokens)
assert torch.allclose(a, b, atol=1e-5), (a, b)
assert os.path.getsize(os.path.join(out, "spam_pruned", "student.ts.pt")) < 0.8 * os.path.getsize(dense_ts)
log = kd("export", *pruned, "--compact", "--format", "int8", expect=2)
assert "--compact writes a TorchScript file" in log, log
log = kd("export", *fm, "--compact")  # a CNN: nothing to remove, said, and the file is still written
assert "nothing to remove" in log and "convolutions are not compacted" in log, log
print("ok: compact spam student: 83586 of 116610 parameters, same logits in Python as the dense file")
