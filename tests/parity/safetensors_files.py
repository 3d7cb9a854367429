"""Safetensors files for the kd::data safetensors tests, written and read by hand (struct + json: the
`safetensors` package is not installed), with torch's own tensors as the reference.

  safetensors_files.py OUT_DIR            writes OUT_DIR/python.safetensors (every dtype kd reads, a zero-size
                                          and a scalar tensor, metadata) and OUT_DIR/python.json (the values)
  safetensors_files.py OUT_DIR check FILE reads FILE (written by kd::data::write_safetensors from what it read
                                          of python.safetensors) and exits 1 unless it holds the same values,
                                          U16 and U32 widened to I32 and I64, and the same metadata

Layout as the reference writer: 8-byte little-endian header length, compact JSON ("__metadata__" first,
then the tensors by name, data offsets back to back), padded with spaces to a multiple of 8 bytes.
"""
import json
import struct
import sys

import numpy as np
import torch

import kdref

METADATA = {"format": "pt", "note": "written by tests/parity/safetensors_files.py"}


def tensors():
    """name -> (dtype string, torch tensor of the values, raw little-endian bytes)."""
    g = torch.Generator().manual_seed(0)
    out = {}

    def add(name, dtype, t, raw=None):
        out[name] = (dtype, t, raw if raw is not None else t.contiguous().numpy().tobytes())

    add("bool", "BOOL", torch.tensor([True, False, True, True]))
    add("u8", "U8", torch.tensor([0, 7, 255], dtype=torch.uint8))
    add("i8", "I8", torch.tensor([-128, -1, 127], dtype=torch.int8))
    add("i16", "I16", torch.tensor([[-32768, 2], [3, 32767]], dtype=torch.int16))
    add("i32", "I32", torch.tensor([-2**31, 5, 2**31 - 1], dtype=torch.int32))
    add("i64", "I64", torch.tensor([-2**63, 0, 2**63 - 1], dtype=torch.int64))
    add("f16", "F16", torch.randn(2, 3, generator=g).half())
    bf16 = torch.randn(5, generator=g).bfloat16()
    add("bf16", "BF16", bf16, bf16.view(torch.int16).numpy().astype("<i2").tobytes())
    add("f32", "F32", torch.randn(3, 4, generator=g))
    add("f64", "F64", torch.randn(2, 2, generator=g, dtype=torch.float64))
    add("empty", "F32", torch.zeros(0, 3))
    add("scalar", "F64", torch.tensor(2.5, dtype=torch.float64))
    u16 = [0, 1, 40000, 65535]
    add("u16", "U16", torch.tensor(u16, dtype=torch.int64), np.array(u16, dtype="<u2").tobytes())
    u32 = [0, 1, 3000000000, 4294967295]
    add("u32", "U32", torch.tensor(u32, dtype=torch.int64), np.array(u32, dtype="<u4").tobytes())
    return out


def write(path, ts):
    header = {"__metadata__": METADATA}
    data = b""
    for name in sorted(ts):
        dtype, t, raw = ts[name]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


DECODE = {"BOOL": np.bool_, "U8": "<u1", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "F16": "<f2",
          "F32": "<f4", "F64": "<f8", "U16": "<u2", "U32": "<u4"}


def check(path, ts):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode())
    data = blob[8 + n:]
    assert n % 8 == 0, f"header length {n} is not a multiple of 8"
    assert header.pop("__metadata__") == METADATA, "metadata differs"
    assert sorted(header) == sorted(ts), f"names differ: {sorted(header)}"
    widened = {"U16": "I32", "U32": "I64"}
    end = 0
    for name in sorted(header):  # back to back, in name order
        e = header[name]
        dtype, t, _ = ts[name]
        assert e["dtype"] == widened.get(dtype, dtype), f"{name}: dtype {e['dtype']}"
        assert e["shape"] == list(t.shape), f"{name}: shape {e['shape']}"
        begin, stop = e["data_offsets"]
        assert begin == end, f"{name}: data_offsets {e['data_offsets']} do not follow on {end}"
        end = stop
        raw = data[begin:stop]
        if e["dtype"] == "BF16":
            got = torch.from_numpy(np.frombuffer(raw, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            got = torch.from_numpy(np.frombuffer(raw, dtype=DECODE[e["dtype"]]).copy())
        got = got.reshape(t.shape)
        ok = torch.equal(got.to(torch.int64), t.to(torch.int64)) if not t.is_floating_point() else torch.equal(got, t)
        assert ok, f"{name}: values differ: {got} against {t}"
    assert end == len(data), f"data buffer of {len(data)} bytes, tensors cover {end}"


def main():
    assert sys.byteorder == "little", "numpy's tobytes() gives the machine's order; safetensors is little-endian"
    d = kdref.out_dir()
    ts = tensors()
    if len(sys.argv) > 2 and sys.argv[2] == "check":
        check(sys.argv[3], ts)
        return
    write(f"{d}/python.safetensors", ts)
    kdref.save(f"{d}/python.json", **{name: t for name, (_, t, _) in ts.items()})


if __name__ == "__main__":
    main()
