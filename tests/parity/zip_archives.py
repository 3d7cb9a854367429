"""Zip archives for the kd::find_archive_damage tests, written by Python's zipfile and torch.jit.save.

  scripted.pt           torch.jit.save of a small scripted module (stored entries, as LibTorch writes)
  deflated.zip          two entries compressed with deflate
  zip64.zip             two stored entries with zip64 size fields (force_zip64)
  commented.zip         a stored entry and a 1000-byte archive comment
  flipped_code.pt       scripted.pt with one byte of its code/ entry changed (its CRC no longer matches)
  flipped_deflate.zip   deflated.zip with one byte of the compressed data changed
  truncated.pt          scripted.pt without its last 100 bytes
  damaged.json          {file: name of the damaged entry}, found here by zipfile's own CRC check
"""
import io
import json
import os
import sys
import zipfile
import zlib

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return torch.relu(self.fc(x))


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]


def entry_data_offset(data: bytes, name: str) -> int:
    """Where the named entry's bytes start: after its local header, name and extra field."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    local = info.header_offset
    name_len = int.from_bytes(data[local + 26:local + 28], "little")
    extra_len = int.from_bytes(data[local + 28:local + 30], "little")
    return local + 30 + name_len + extra_len


def first_bad_entry(data: bytes):
    """The first entry zipfile cannot read back intact (CRC mismatch or a broken deflate stream)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            try:
                z.read(name)
            except (zipfile.BadZipFile, zlib.error):
                return name
    return None


def main(out):
    torch.manual_seed(0)
    path = os.path.join(out, "scripted.pt")
    torch.jit.save(torch.jit.script(Net()), path)
    scripted = open(path, "rb").read()

    payload_a = bytes(range(256)) * 40
    payload_b = b"kdistill " * 500
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/a.bin", payload_a)
        z.writestr("archive/b.txt", payload_b)
    deflated = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, payload in (("archive/a.bin", payload_a), ("archive/b.txt", payload_b)):
            with z.open(name, "w", force_zip64=True) as f:
                f.write(payload)
    zip64 = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/a.bin", payload_a)
        z.comment = b"c" * 1000
    commented = buf.getvalue()

    code = next(n for n in zipfile.ZipFile(io.BytesIO(scripted)).namelist() if "/code/" in n and n.endswith(".py"))
    flipped_code = flip(scripted, entry_data_offset(scripted, code) + 10)
    flipped_deflate = flip(deflated, entry_data_offset(deflated, "archive/b.txt") + 5)

    files = {"deflated.zip": deflated, "zip64.zip": zip64, "commented.zip": commented,
             "flipped_code.pt": flipped_code, "flipped_deflate.zip": flipped_deflate,
             "truncated.pt": scripted[:-100]}
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    for name in ("scripted.pt", "deflated.zip", "zip64.zip", "commented.zip"):
        assert first_bad_entry(open(os.path.join(out, name), "rb").read()) is None, name
    damaged = {"flipped_code.pt": first_bad_entry(flipped_code),
               "flipped_deflate.zip": first_bad_entry(flipped_deflate)}
    assert damaged == {"flipped_code.pt": code, "flipped_deflate.zip": "archive/b.txt"}, damaged
    with open(os.path.join(out, "damaged.json"), "w") as f:
        json.dump(damaged, f)


if __name__ == "__main__":
    main(sys.argv[1])
