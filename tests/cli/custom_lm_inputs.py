"""Writes a tiny byte language model teacher (trained here), an untrained smaller student (TorchScript) and
next-byte data ([N, L] token targets) as safetensors, for the custom task's language-model path.

usage: custom_lm_inputs.py TEXT_FILE OUT_DIR
"""
import os
import sys
from typing import Dict

import torch
from torch import nn

# The example's writer: the same file layout the custom task's users write.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "examples", "custom_task"))
from make_inputs import write_safetensors  # noqa: E402


class ByteLM(nn.Module):
    """Embedding -> Linear -> tanh -> Linear over 256 byte values; the tanh output [N, L, width] is its hidden state."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(256, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 256)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = torch.tanh(self.mix(self.emb(x)))
        return {"logits": self.head(h), "hidden_states.0": h}


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
