"""Loads the student kd-train distilled (OUT/student.ts.pt) back into PyTorch and scores it on the test split
make_inputs.py wrote: its accuracy, the teacher's, and how often the two agree.

    /usr/bin/python3 examples/custom_task/check_student.py INPUTS OUT [--min-accuracy 0.5]

Exits 1 when the student's test accuracy is below --min-accuracy (an untrained student scores about 0.10).
"""
import argparse
import json
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
          "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        blob = bytearray(data[8 + n + begin:8 + n + end])
        out[name] = torch.frombuffer(blob, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", help="the folder make_inputs.py wrote")
    p.add_argument("out", help="kd-train's --out folder")
    p.add_argument("--min-accuracy", type=float, default=0.5)
    a = p.parse_args()
    test = read_safetensors(os.path.join(a.inputs, "test.safetensors"))
    teacher = torch.jit.load(os.path.join(a.inputs, "teacher.pt")).eval()
    student = torch.jit.load(os.path.join(a.out, "student.ts.pt")).eval()
    with torch.no_grad():
        t = teacher(test["inputs"])["logits"].argmax(1)
        out = student(test["inputs"])  # the user's own module returns its dict; a library student, the logits
        s = (out["logits"] if isinstance(out, dict) else out).argmax(1)
    y = test["targets"]
    student_accuracy = (s == y).float().mean().item()
    params = sum(p.numel() for p in student.parameters())
    print(f"student.ts.pt loaded in PyTorch {torch.__version__}: {params} parameters; test accuracy "
          f"{100 * student_accuracy:.2f} % (teacher {100 * (t == y).float().mean().item():.2f} %), agrees with the "
          f"teacher on {100 * (s == t).float().mean().item():.2f} % of {len(y)} test images")
    if student_accuracy < a.min_accuracy:
        sys.exit(f"check_student.py: the student's test accuracy {student_accuracy:.4f} is below {a.min_accuracy}")


if __name__ == "__main__":
    main()
