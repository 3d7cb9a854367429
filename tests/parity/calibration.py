"""Expected calibration error references, written from Guo et al. (ICML 2017), eq. 3, in float64:
confidences max softmax fall into M equal-width bins ((m-1)/M, m/M]; ECE = sum_m |B_m|/n |acc(B_m) - conf(B_m)|.
The bins are formed here by an explicit loop over the bin edges (not by the library's ceil rule).

calibration.json: logits [40, 5] (some very confident rows, some flat), targets [40], ece for M = 15 and M = 4.
"""
import os

import torch
import kdref

out = kdref.out_dir()
torch.manual_seed(3)
dt = torch.float64
logits = torch.randn(40, 5, dtype=dt) * torch.tensor([0.1, 1.0, 3.0, 8.0] * 10, dtype=dt).unsqueeze(1)
targets = torch.randint(0, 5, (40,))
targets[:10] = logits[:10].argmax(-1)  # some right, most wrong by chance


def ece(logits, targets, bins):
    p = torch.softmax(logits, -1)
    conf, pred = p.max(-1)
    right = (pred == targets).to(dt)
    total = torch.zeros((), dtype=dt)
    for m in range(1, bins + 1):
        lo, hi = (m - 1) / bins, m / bins
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.sum().to(dt) / len(conf) * (right[in_bin].mean() - conf[in_bin].mean()).abs()
    return total


kdref.save(os.path.join(out, "calibration.json"), logits=logits, targets=targets, ece15=ece(logits, targets, 15),
           ece4=ece(logits, targets, 4))
