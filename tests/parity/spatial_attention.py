"""spatial_attention reference in float64, written out from its definition with einsum:
A[b, 0, i, j] = softmax_j( sum_c x[b, c, i] x[b, c, j] / sqrt(C) ) over flattened positions."""
import math
import os

import torch
import kdref

out = kdref.out_dir()
torch.manual_seed(5)
x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
f = x.reshape(2, 6, 12)
scores = torch.einsum("bci,bcj->bij", f, f) / math.sqrt(6)
kdref.save(os.path.join(out, "spatial_attention.json"), x=x, attention=torch.softmax(scores, dim=-1).unsqueeze(1))
