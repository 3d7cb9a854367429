"""FeatureL2 references in float64, written with plain torch ops.

feature_l2.json holds the inputs (student/teacher hidden states, projection weights, mask) and,
for each normalisation (none / l2 / standardize), the loss, its per-pair values and the gradients
w.r.t. the student features and the projection parameters. The projections are written as
F.linear on [B, L, D] features and F.conv2d with a 1x1 kernel on [B, C, H, W] features; padded
positions are dropped by boolean indexing; L2 normalisation is F.normalize and standardisation is
F.layer_norm without affine parameters. Also: a pair-weighting case (weights from cosine
similarity x a sigmoid layer prior, detached) and an adaptive-pooling case.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(0)
dt = torch.float64

# Student hidden states: [B,L,D]=[2,3,4], [B,C,H,W]=[2,3,4,4], [B,D]=[2,5]
hs = [torch.randn(2, 3, 4, dtype=dt), torch.randn(2, 3, 4, 4, dtype=dt), torch.randn(2, 5, dtype=dt)]
# Teacher hidden states: [2,5], [2,3,6], [2,7] (unused), [2,5,4,4]
ht = [torch.randn(2, 5, dtype=dt), torch.randn(2, 3, 6, dtype=dt), torch.randn(2, 7, dtype=dt),
      torch.randn(2, 5, 4, 4, dtype=dt)]
W0, b0 = torch.randn(6, 4, dtype=dt), torch.randn(6, dtype=dt)   # pair 0: 4 -> 6, linear
W1, b1 = torch.randn(5, 3, dtype=dt), torch.randn(5, dtype=dt)   # pair 1: 3 -> 5, 1x1 conv
mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=dt)
# pairs: (teacher, student, weight): (1, 0, 0.7) proj, (-1, 1, 1.3) proj, (0, -1, 0.5) same width
weights = [0.7, 1.3, 0.5]
teacher_layers = [1, 3, 0]


def norm(x, mode):
    if mode == "none":
        return x
    if mode == "l2":
        return F.normalize(x, dim=1 if x.dim() == 4 else -1)
    if x.dim() == 4:  # standardise over channels: layer norm on the channels-last view
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-5).permute(0, 3, 1, 2)
    return F.layer_norm(x, (x.shape[-1],), eps=1e-5)


def pair_tensors(leaves, mode):
    s0 = F.linear(leaves["hs0"], leaves["W0"], leaves["b0"])
    s1 = F.conv2d(leaves["hs1"], leaves["W1"].reshape(5, 3, 1, 1), leaves["b1"])
    s2 = leaves["hs2"]
    return [norm(s0, mode), norm(s1, mode), norm(s2, mode)], [norm(ht[1], mode), norm(ht[3], mode), norm(ht[0], mode)]


def pair_losses(ss, ts):
    keep = mask.bool()
    l0 = ((ss[0] - ts[0])[keep] ** 2).mean()   # [N_real, D] -> mean over the real elements
    l1 = F.mse_loss(ss[1], ts[1])
    l2 = F.mse_loss(ss[2], ts[2])
    return [l0, l1, l2]


def leaves_fresh():
    return {"hs0": hs[0].clone().requires_grad_(), "hs1": hs[1].clone().requires_grad_(),
            "hs2": hs[2].clone().requires_grad_(), "W0": W0.clone().requires_grad_(),
            "b0": b0.clone().requires_grad_(), "W1": W1.clone().requires_grad_(), "b1": b1.clone().requires_grad_()}


names = ["hs0", "hs1", "hs2", "W0", "b0", "W1", "b1"]
res = dict(hs0=hs[0], hs1=hs[1], hs2=hs[2], ht0=ht[0], ht1=ht[1], ht2=ht[2], ht3=ht[3],
           W0=W0, b0=b0, W1=W1, b1=b1, mask=mask)
for mode in ["none", "l2", "standardize"]:
    lv = leaves_fresh()
    ss, ts = pair_tensors(lv, mode)
    ls = pair_losses(ss, ts)
    total = sum(w * l for w, l in zip(weights, ls))
    grads = torch.autograd.grad(total, [lv[n] for n in names])
    res[mode + "_total"] = total
    res[mode + "_pairs"] = torch.stack(ls)
    for n, g in zip(names, grads):
        res[mode + "_g_" + n] = g

# Pair weighting: w_i = (1 + cos(s_i, t_i)) / 2 * 1 / (1 + exp(-0.5 (l_i - 1))), as constants; the hook
# sees padded positions of the [B, L, D] pair as zeros on both sides.
lv = leaves_fresh()
ss, ts = pair_tensors(lv, "none")
with torch.no_grad():
    pad = ~mask.bool().unsqueeze(-1)
    seen_s = [ss[0].masked_fill(pad, 0), ss[1], ss[2]]
    seen_t = [ts[0].masked_fill(pad, 0), ts[1], ts[2]]
    pw = torch.stack([(1 + F.cosine_similarity(s.reshape(-1), t.reshape(-1), dim=0)) / 2 *
                      torch.sigmoid(torch.tensor(0.5 * (l - 1), dtype=dt))
                      for s, t, l in zip(seen_s, seen_t, teacher_layers)])
ls = pair_losses(ss, ts)
total = sum(w * p * l for w, p, l in zip(weights, pw, ls))
grads = torch.autograd.grad(total, [lv[n] for n in names])
res["hook_w"] = pw
res["hook_total"] = total
for n, g in zip(names, grads):
    res["hook_g_" + n] = g

# Adaptive pooling: student [2,3,4,2] vs teacher [2,3,2,4] -> both pooled to [2,3,2,2].
ps = torch.randn(2, 3, 4, 2, dtype=dt, requires_grad=True)
pt = torch.randn(2, 3, 2, 4, dtype=dt)
pool = F.mse_loss(F.adaptive_avg_pool2d(ps, (2, 2)), F.adaptive_avg_pool2d(pt, (2, 2)))
res.update(pool_s=ps, pool_t=pt, pool_total=pool, pool_g_s=torch.autograd.grad(pool, ps)[0])

kdref.save(os.path.join(out, "feature_l2.json"), **res)
