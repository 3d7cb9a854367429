"""Helpers for parity scripts: write named tensors as exact JSON for the C++ tests.

Each script is run as `/usr/bin/python3 tests/parity/<script>.py OUT_DIR [args]`
(Debian's python3-torch, the same LibTorch as the library) and writes
OUT_DIR/<name>.json. Values are float64 written with repr(), so they round-trip
exactly.
"""
import json
import os
import sys

import torch


def out_dir():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    return d


def save(path, **tensors):
    obj = {}
    for name, t in tensors.items():
        t = torch.as_tensor(t).detach().cpu()
        if t.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.int16, torch.int8):
            obj[name] = {"shape": list(t.shape), "dtype": "int64",
                         "data": [int(v) for v in t.reshape(-1).tolist()]}
        else:
            obj[name] = {"shape": list(t.shape), "dtype": "float64",
                         "data": [float(v) for v in t.double().reshape(-1).tolist()]}
    with open(path, "w") as f:
        json.dump(obj, f)
