"""DKD and logit-standardized KD references in float64, written from the papers' formulas.

Decoupled KD (Zhao et al., CVPR 2022, eq. 1-4): with p = softmax(z / T), g the target class,
b = [p_g, 1 - p_g] and p_hat the softmax over the classes other than g,
    TCKD = KL(b_t || b_s),   NCKD = KL(p_hat_t || p_hat_s),   DKD = alpha*TCKD + beta*NCKD,
each averaged over the counted rows and scaled by T^2. Here b and p_hat are formed the textbook way
(probabilities first, then the binary sums and the renormalisation), not the log-space way the
library uses, so the two are independent.

Logit standardization (Sun et al., CVPR 2024, Algorithm 1): Z(z) = (z - mean(z)) / std(z) per row
(torch.std, unbiased; 1e-7 added to the std), then the KD loss KL(softmax(Z(z_t)/T) || softmax(Z(z_s)/T)) T^2.

dkd.json holds, for each case, the inputs, the two terms, the losses and the student gradients:
- "bc":  [6, 5] classifier logits, integer targets, T = 4, alpha = 1, beta = 8;
- "seq": [2, 3, 7] sequence logits with a [2, 3] mask and -100 targets, T = 2, alpha = 0.5, beta = 2;
- "std": the "bc" logits with standardization, DKD (T = 2, alpha = 1, beta = 8) and forward KL (T = 2);
- "big": a confident teacher (target logits raised by 200) at T = 1: p_t,g rounds to 1 and the other
          classes hold ~1e-87 of the mass, still representable in float64, so the textbook form stays exact.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(11)
dt = torch.float64


def kl(p, q):
    """KL(p || q) per row from probabilities (0 * log 0 = 0)."""
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def dkd_terms(zs, zt, g, T):
    ps, pt = F.softmax(zs / T, -1), F.softmax(zt / T, -1)
    onehot = F.one_hot(g, zs.shape[-1]).bool()
    bs = torch.stack([ps[onehot], (ps * ~onehot).sum(-1)], -1)
    bt = torch.stack([pt[onehot], (pt * ~onehot).sum(-1)], -1)
    C = zs.shape[-1]
    hs = ps[~onehot].view(-1, C - 1)
    ht = pt[~onehot].view(-1, C - 1)
    hs = hs / hs.sum(-1, keepdim=True)
    ht = ht / ht.sum(-1, keepdim=True)
    return kl(bt, bs), kl(ht, hs)


def standardize(z):
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + 1e-7)


def case(name, zs, zt, g, counted, T, alpha, beta, standard=False):
    res = {f"{name}_zs": zs, f"{name}_zt": zt, f"{name}_T": torch.tensor(T, dtype=dt),
           f"{name}_alpha": torch.tensor(alpha, dtype=dt), f"{name}_beta": torch.tensor(beta, dtype=dt)}
    s = zs.clone().requires_grad_()
    a, b = (standardize(s), standardize(zt)) if standard else (s, zt)
    C = zs.shape[-1]
    rows = counted.reshape(-1)
    tckd, nckd = dkd_terms(a.reshape(-1, C)[rows], b.reshape(-1, C)[rows], g.reshape(-1)[rows], T)
    n = rows.sum()
    tckd, nckd = tckd.sum() / n * T * T, nckd.sum() / n * T * T
    loss = alpha * tckd + beta * nckd
    loss.backward()
    res.update({f"{name}_tckd": tckd, f"{name}_nckd": nckd, f"{name}_loss": loss, f"{name}_gs": s.grad})
    return res


res = {}
B, C = 6, 5
zs = torch.randn(B, C, dtype=dt) * 2
zt = torch.randn(B, C, dtype=dt) * 3
g = torch.randint(0, C, (B,))
res.update(case("bc", zs, zt, g, torch.ones(B, dtype=torch.bool), 4.0, 1.0, 8.0))
res["bc_targets"] = g

# Hinton's KD equals TCKD + (1 - p_t,g) * NCKD row by row (the paper's eq. 4): stored for a closed-form check.
pt = F.softmax(zt / 4.0, -1)
res["bc_kd_rows"] = kl(pt, F.softmax(zs / 4.0, -1)) * 16.0
res["bc_one_minus_ptg"] = 1 - pt.gather(1, g.unsqueeze(1)).squeeze(1)

Bs, L, V = 2, 3, 7
zs_seq = torch.randn(Bs, L, V, dtype=dt) * 2
zt_seq = torch.randn(Bs, L, V, dtype=dt) * 2
targets = torch.randint(0, V, (Bs, L))
targets[0, 2] = -100
mask = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=dt)
counted = mask.bool() & (targets != -100)
safe = targets.clamp(min=0)
res.update(case("seq", zs_seq, zt_seq, safe, counted, 2.0, 0.5, 2.0))
res.update(seq_targets=targets, seq_mask=mask)

res.update(case("std", zs, zt, g, torch.ones(B, dtype=torch.bool), 2.0, 1.0, 8.0, standard=True))
s = zs.clone().requires_grad_()
T = 2.0
kl_std = kl(F.softmax(standardize(zt) / T, -1), F.softmax(standardize(s) / T, -1)).mean() * T * T
kl_std.backward()
res.update(std_kl_loss=kl_std, std_kl_gs=s.grad, std_z=standardize(zs))

zt_big = torch.randn(B, C, dtype=dt)
zt_big[torch.arange(B), g] += 200.0
res.update(case("big", zs, zt_big, g, torch.ones(B, dtype=torch.bool), 1.0, 1.0, 8.0))

kdref.save(os.path.join(out, "dkd.json"), **res)
