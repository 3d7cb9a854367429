"""Writes what kd-train's "custom" task reads: a teacher trained here in PyTorch, an untrained student (both
TorchScript), and Fashion-MNIST train / validation / test splits as safetensors files.

    /usr/bin/python3 examples/custom_task/make_inputs.py --out runs/custom_inputs
    kd-train distill --set task=custom --set teacher.torchscript=runs/custom_inputs/teacher.pt \
        --set student.torchscript=runs/custom_inputs/student.pt \
        --set data.train=runs/custom_inputs/train.safetensors \
        --set data.validation=runs/custom_inputs/validation.safetensors \
        --set data.test=runs/custom_inputs/test.safetensors --out runs/custom
    /usr/bin/python3 examples/custom_task/check_student.py runs/custom_inputs runs/custom

Both models return a dict: "logits" and "hidden_states.N" (kd::ScriptModel's convention), so feature terms can
pair their layers (teacher_layers / student_layers; kd-train finds the widths by running both once).
Needs Debian's python3-torch and the Fashion-MNIST files of dataset-fashion-mnist (scripts/setup installs both).
"""
import argparse
import gzip
import json
import os
import struct
import time
from typing import Dict

import torch
from torch import nn

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and standard deviation (kd::data's normalisation)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32",
                      torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}


def write_safetensors(path, tensors: Dict[str, torch.Tensor]):
    """The safetensors layout: u64 little-endian header length, a JSON header, then the raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        blob = t.numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


class Mlp(nn.Module):
    """784 -> widths... -> 10; forward returns the logits and every hidden layer's activations."""

    def __init__(self, widths):
        super().__init__()
        sizes = [784] + list(widths)
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nn.Linear(sizes[-1], 10)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        h = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            h = torch.relu(layer(h))
            out["hidden_states." + str(i)] = h
        out["logits"] = self.head(h)
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for teacher.pt, student.pt and the three .safetensors files")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX .gz files")
    p.add_argument("--train", type=int, default=20000, help="training images (the rest of the 60000: not used)")
    p.add_argument("--validation", type=int, default=5000, help="validation images, from the end of the training file")
    p.add_argument("--test", type=int, default=10000, help="test images")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(a.out, exist_ok=True)

    def load(split):
        images = read_idx(os.path.join(a.data, f"{split}-images-idx{3}-ubyte.gz")).float().div_(255)
        labels = read_idx(os.path.join(a.data, f"{split}-labels-idx1-ubyte.gz")).long()
        return ((images - MEAN) / STD).unsqueeze(1), labels

    x, y = load("train")
    xt, yt = load("t10k")
    splits = {"train": (x[:a.train], y[:a.train]), "validation": (x[-a.validation:], y[-a.validation:]),
              "test": (xt[:a.test], yt[:a.test])}
    for name, (inputs, targets) in splits.items():
        write_safetensors(os.path.join(a.out, f"{name}.safetensors"), {"inputs": inputs, "targets": targets})

    teacher = Mlp([512, 256])
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    t0 = time.time()
    inputs, targets = splits["train"]
    for epoch in range(a.teacher_epochs):
        order = torch.randperm(len(inputs))
        for i in range(0, len(inputs), 128):
            idx = order[i:i + 128]
            loss = nn.functional.cross_entropy(teacher(inputs[idx])["logits"], targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.eval()
    with torch.no_grad():
        accuracy = (teacher(xt[:a.test])["logits"].argmax(1) == yt[:a.test]).float().mean().item()
    torch.jit.save(torch.jit.script(teacher), os.path.join(a.out, "teacher.pt"))
    torch.jit.save(torch.jit.script(Mlp([64])), os.path.join(a.out, "student.pt"))
    print(f"teacher: MLP 784-512-256-10, {a.teacher_epochs} epochs on {a.train} images in {time.time() - t0:.0f} s, "
          f"test accuracy {100 * accuracy:.2f} %")
    print(f"written: {a.out}/{{teacher.pt, student.pt, train.safetensors, validation.safetensors, test.safetensors}}")


if __name__ == "__main__":
    main()
