"""LayerSimilarityWeighting references in float64, written with plain torch ops.

weighting_layer_similarity.json holds three pairs of features ([4, 6], [4, 3, 5], [4, 2, 3, 3]) with
teacher layers 2, 6, 11 and, for the default options (slope 0.5, midpoint 6, clamp, sum-to-count)
and for (slope 0.8, midpoint 3, no clamp, raw):
  c_i   = mean_b F.cosine_similarity(s_i[b].flatten(), t_i[b].flatten(), eps=1e-8), clamped at 0 or not,
  raw_i = c_i * torch.sigmoid(slope * (l_i - midpoint)),
  w_i   = P * raw_i / sum(raw)  (default) or raw_i.
Pair 1 is anti-aligned (s = -t + noise) so the clamp matters.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(0)
dt = torch.float64

shapes = [(4, 6), (4, 3, 5), (4, 2, 3, 3)]
teacher_layers = [2, 6, 11]
t = [torch.randn(*s, dtype=dt) for s in shapes]
s = [t[0] + 0.5 * torch.randn(*shapes[0], dtype=dt),
     -t[1] + 0.7 * torch.randn(*shapes[1], dtype=dt),
     0.3 * t[2] + torch.randn(*shapes[2], dtype=dt)]


def cos(a, b):
    return F.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1, eps=1e-8).mean()


def weights(slope, midpoint, clamp, normalize):
    c = torch.stack([cos(a, b) for a, b in zip(s, t)])
    if clamp:
        c = c.clamp(min=0)
    prior = torch.sigmoid(slope * (torch.tensor(teacher_layers, dtype=dt) - midpoint))
    raw = c * prior
    return raw * len(raw) / raw.sum() if normalize else raw, c


w_default, c_default = weights(0.5, 6.0, True, True)
w_custom, c_custom = weights(0.8, 3.0, False, False)
kdref.save(os.path.join(out, "weighting_layer_similarity.json"),
           s0=s[0], s1=s[1], s2=s[2], t0=t[0], t1=t[1], t2=t[2],
           layers=torch.tensor(teacher_layers),
           w_default=w_default, c_default=c_default, w_custom=w_custom, c_custom=c_custom)
