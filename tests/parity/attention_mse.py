"""AttentionMSE references in float64, written with plain torch ops.

Attention maps are softmax probabilities with padded keys masked to -inf, as a real model makes
them; the padded query rows hold arbitrary values. The reference keeps only real (query, key)
positions by boolean indexing and averages the squared differences over them. Head mappings:
grouped (teacher heads [B, Hs, Ht/Hs, L, L] averaged over the group) and mean over heads; the log
variant compares log(clamp(p, min=1e-8)) after the head averaging. The row-sum reduction is written
as an explicit loop over the real query rows.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(1)
dt = torch.float64
B, L = 2, 5
mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=dt)
keep = mask.bool()
valid = keep[:, :, None] & keep[:, None, :]  # [B, L(query), L(key)]


def attention(h):
    scores = torch.randn(B, h, L, L, dtype=dt)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, -1)
    # padded query rows: arbitrary junk, must not matter
    return torch.where(keep[:, None, :, None], p, torch.rand(B, h, L, L, dtype=dt))


s_att = [attention(2), attention(2)]             # student layers 0, 1 (2 heads)
t_att = [attention(4), attention(2), attention(4)]  # teacher layers 0, 1 (4 and 2 heads), 2 (4 heads)


def masked_mse(a, b, use_mask=True):
    if not use_mask:
        return F.mse_loss(a, b)
    sel = valid[:, None, :, :].expand(a.shape)
    return ((a - b)[sel] ** 2).mean()


def compare(s, t, mode, log, use_mask=True):
    hs, ht = s.shape[1], t.shape[1]
    if mode == "mean":
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    else:
        t = t.reshape(B, hs, ht // hs, L, L).mean(2)
    if log:
        s, t = torch.log(torch.clamp(s, min=1e-8)), torch.log(torch.clamp(t, min=1e-8))
    return masked_mse(s, t, use_mask)


res = dict(s0=s_att[0], s1=s_att[1], t0=t_att[0], t1=t_att[1], t2=t_att[2], mask=mask)
# Single pair (teacher 0 with 4 heads, student 0 with 2 heads), each mode.
for mode in ["grouped", "mean"]:
    for log in [False, True]:
        key = mode + ("_log" if log else "")
        s = s_att[0].clone().requires_grad_()
        val = compare(s, t_att[0], mode, log)
        res[key] = val
        res["g_" + key] = torch.autograd.grad(val, s)[0]
# No mask: mean over everything (rows of junk included).
s = s_att[0].clone().requires_grad_()
val = compare(s, t_att[0], "grouped", False, use_mask=False)
res["nomask"], res["g_nomask"] = val, torch.autograd.grad(val, s)[0]
# Two pairs: (teacher 1, student 0, w 0.5) equal heads -> head by head; (teacher -1, student -1, w 2).
s0, s1 = s_att[0].clone().requires_grad_(), s_att[1].clone().requires_grad_()
l0 = masked_mse(s0, t_att[1])
l1 = compare(s1, t_att[2], "grouped", False)
total = 0.5 * l0 + 2.0 * l1
g0, g1 = torch.autograd.grad(total, [s0, s1])
res.update(multi_total=total, multi_l0=l0, multi_l1=l1, multi_g0=g0, multi_g1=g1)
# Row-sum reduction: for each real query row, the squared L2 distance between the two (grouped)
# key distributions over the real keys; averaged over the real query rows and the heads.
s = s_att[0].clone().requires_grad_()
t = t_att[0].reshape(B, 2, 2, L, L).mean(2)
rows = []
for b in range(B):
    for h in range(2):
        for q in range(L):
            if keep[b, q]:
                rows.append(((s[b, h, q] - t[b, h, q])[keep[b]] ** 2).sum())
val = torch.stack(rows).mean()
res["rowsum"], res["g_rowsum"] = val, torch.autograd.grad(val, s)[0]
s = s_att[0].clone().requires_grad_()
val = ((s - t) ** 2).sum(-1).mean()
res["rowsum_nomask"], res["g_rowsum_nomask"] = val, torch.autograd.grad(val, s)[0]
kdref.save(os.path.join(out, "attention_mse.json"), **res)
