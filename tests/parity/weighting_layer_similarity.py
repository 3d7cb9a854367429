"""LayerSimilarityWeighting references in float64, written with plain torch ops.

weighting_layer_similarity.json holds three pairs of features ([4, 6], [4, 3, 5], [4, 2, 3, 3]) with
teacher layers 2, 6, 11 and, for the default options (slope 0.5, midpoint 6, clamp, sum-to-count)
and for (slope 0.8, midpoint 3, no clamp, raw):
  c_i   = mean_b F.cosine_similarity(s_i[b].flatten(), t_i[b].flatten(), eps=1e-8), clamped at 0 or not,
  raw_i = c_i * torch.sigmoid(slope * (l_i - midpoint)),
  w_i   = P * raw_i / sum(raw)  (default) or raw_i.
Pair 1 is anti-aligned (s = -t + noise) so the clamp matters.

weighting_layer_similarity_policy.json: LayerSimilarityPolicy over a WeightedSum of four terms on
student hidden states hs0 [4, 3, 5], hs1 [4, 3, 6], teacher hidden states ht0..ht8 [4, 3, 6] and a
[4, 3] mask (example 1's and example 3's last position padded):
  "f3": FeatureL2 pair (teacher 3, student 0) with a linear projection 5 -> 6 (W, b);
  "f8": FeatureL2 pairs (teacher 8, student 1) and (teacher 5, student 1), the second anti-aligned;
  "h7": a user loss mean((hs1 - ht7)^2) weighed through options.layers {"h7": (teacher 7, student 1)};
  "kl": TemperatureKL T = 2 on logits [4, 5] with term weight 0.5, not weighed (w = 1).
Cosines use the features with padded positions zeroed, raw_k = mean over the term's pairs of
max(0, c) * sigmoid(0.5 (l - 6)), w = 3 raw / sum(raw) over the three weighed terms, and the total
sum_k c_k w_k L_k. Gradients w.r.t. hs0, hs1, W, b and the student logits.
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

# ---- the WeightedSum policy
torch.manual_seed(1)
B, Lq = 4, 3
hs0 = torch.randn(B, Lq, 5, dtype=dt)
hs1 = torch.randn(B, Lq, 6, dtype=dt)
W = torch.randn(6, 5, dtype=dt) * 0.4
bias = torch.randn(6, dtype=dt) * 0.1
mask = torch.ones(B, Lq, dtype=dt)
mask[1, 2] = 0
mask[3, 2] = 0
ht = [torch.randn(B, Lq, 6, dtype=dt) for _ in range(9)]
ht[3] = F.linear(hs0, W, bias) + 0.8 * torch.randn(B, Lq, 6, dtype=dt)
ht[8] = hs1 + 0.5 * torch.randn(B, Lq, 6, dtype=dt)
ht[5] = -hs1 + 0.5 * torch.randn(B, Lq, 6, dtype=dt)
ht[7] = 0.5 * hs1 + torch.randn(B, Lq, 6, dtype=dt)
zs = torch.randn(B, 5, dtype=dt)
zt = torch.randn(B, 5, dtype=dt)
keep = mask.bool()
pad = ~keep.unsqueeze(-1)


def masked_mse(a, b):
    return ((a - b)[keep] ** 2).mean()


def prior(l):
    return torch.sigmoid(torch.tensor(0.5 * (l - 6.0), dtype=dt))


leaves = {"hs0": hs0.clone().requires_grad_(), "hs1": hs1.clone().requires_grad_(),
          "W": W.clone().requires_grad_(), "b": bias.clone().requires_grad_(), "zs": zs.clone().requires_grad_()}
s0 = F.linear(leaves["hs0"].masked_fill(pad, 0), leaves["W"], leaves["b"])
s1 = leaves["hs1"]
with torch.no_grad():
    zero = lambda x: x.masked_fill(pad, 0)
    c_f3 = cos(zero(s0), zero(ht[3]))
    c_f8a = cos(zero(s1), zero(ht[8]))
    c_f8b = cos(zero(s1), zero(ht[5]))
    c_h7 = cos(zero(s1), zero(ht[7]))
    raw = torch.stack([c_f3.clamp(min=0) * prior(3),
                       (c_f8a.clamp(min=0) * prior(8) + c_f8b.clamp(min=0) * prior(5)) / 2,
                       c_h7.clamp(min=0) * prior(7)])
    w = 3 * raw / raw.sum()
L_f3 = masked_mse(s0, ht[3])
L_f8 = masked_mse(s1, ht[8]) + masked_mse(s1, ht[5])
L_h7 = ((s1 - ht[7]) ** 2).mean()
T = 2.0
L_kl = F.kl_div(F.log_softmax(leaves["zs"] / T, -1), F.log_softmax(zt / T, -1), reduction="batchmean",
                log_target=True) * T * T
total = w[0] * L_f3 + w[1] * L_f8 + w[2] * L_h7 + 0.5 * L_kl
names = list(leaves)
grads = torch.autograd.grad(total, [leaves[n] for n in names])
res = dict(hs0=hs0, hs1=hs1, W=W, b=bias, mask=mask, zs=zs, zt=zt,
           w=w, cos=torch.stack([c_f3, (c_f8a + c_f8b) / 2, c_h7]), L=torch.stack([L_f3, L_f8, L_h7, L_kl]),
           total=total)
for i, t in enumerate(ht):
    res["ht%d" % i] = t
for n, g in zip(names, grads):
    res["g_" + n] = g
kdref.save(os.path.join(out, "weighting_layer_similarity_policy.json"), **res)
