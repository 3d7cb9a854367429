"""Writes a tiny byte language model teacher (trained here), an untrained smaller student (TorchScript) and
next-byte data ([N, L] token targets) as safetensors, for the custom task's language-model path.

usage: custom_lm_inputs.py TEXT_FILE OUT_DIR
"""
import json
import os
import struct
import sys
from typing import Dict

import torch
from torch import nn


class ByteLM(nn.Module):
    """Embedding -> tanh -> Linear over 256 byte values; its hidden state is the embedding [N, L, width]."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(256, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 256)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = torch.tanh(self.mix(self.emb(x)))
        return {"logits": self.head(h), "hidden_states.0": h}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    names = {torch.int64: "I64", torch.uint8: "U8", torch.float32: "F32"}
    for name in sorted(tensors):
        blob = tensors[name].contiguous().numpy().tobytes()
        header[name] = {"dtype": names[tensors[name].dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


text_file, out = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
data = torch.frombuffer(bytearray(open(text_file, "rb").read()), dtype=torch.uint8).long()
L = 32
windows = data[: (len(data) - 1) // L * L + 1]
n = (len(windows) - 1) // L
inputs = windows[:-1][: n * L].reshape(n, L)
targets = windows[1:][: n * L].reshape(n, L)
cut = n * 9 // 10
# Token ids as uint8 in the training file (the reader widens them), int64 in the validation file.
write_safetensors(os.path.join(out, "train.safetensors"), {"inputs": inputs[:cut].to(torch.uint8), "targets": targets[:cut]})
write_safetensors(os.path.join(out, "validation.safetensors"), {"inputs": inputs[cut:], "targets": targets[cut:]})
teacher = ByteLM(64)
opt = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
for step in range(200):
    idx = torch.randint(0, cut, (32,))
    loss = nn.functional.cross_entropy(teacher(inputs[idx])["logits"].flatten(0, 1), targets[idx].flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.jit.save(torch.jit.script(teacher.eval()), os.path.join(out, "teacher.pt"))
torch.jit.save(torch.jit.script(ByteLM(16)), os.path.join(out, "student.pt"))
print(f"byte LM teacher: {n} windows of {L}, final training loss {loss.item():.3f} nats")
