"""TemperatureKL references in float64, written with plain torch ops.

temperature_kl.json holds, for three cases, the inputs and, for every mode, the loss and its
gradients w.r.t. the student logits and the teacher logits (or top-k teacher values):

- "bc":   classifier logits [B, C] = [5, 7], all rows counted, T = 2.5;
- "seq":  sequence logits [B, L, V] = [3, 4, 11] with a [B, L] mask (1 = real) and targets
          where -100 marks ignored positions; counted = mask & (targets != -100), T = 1.7;
- "topk": the same sequence student against a sparse teacher that kept k = 4 classes per
          position (values = teacher logits at the indices, indices in arbitrary order), T = 2.0.

Modes: fwd = KL(p_t || p_s); rev = KL(p_s || p_t); jsd<b> = generalized JSD as in TRL's
GKDTrainer.generalized_jsd_loss (m = b*p_t + (1-b)*p_s, b*KL(p_t||m) + (1-b)*KL(p_s||m), with
b = 0 -> forward KL and b = 1 -> reverse KL). Every loss is scaled by T^2 and summed over the
counted rows, divided by their number.

KLs are torch.nn.functional.kl_div(input=log q, target=log p, log_target=True) = KL(p || q),
summed over the class dimension. The top-k rule: teacher p = softmax(values / T) on the kept set S;
forward KL (and jsd0) uses the student's full log_softmax(z_s / T) gathered at S (unnormalised),
written here as kl_div against a dense teacher distribution that is 0 outside S (kl_div's target 0
contributes 0); reverse KL and JSD (b > 0) renormalise the student on S: log_softmax(z_s[S] / T).
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(7)
dt = torch.float64
MODES = {"fwd": ("fwd", None), "rev": ("rev", None), "jsd50": ("jsd", 0.5), "jsd30": ("jsd", 0.3),
         "jsd0": ("jsd", 0.0), "jsd100": ("jsd", 1.0)}


def kl_rows(log_p, log_q):
    """KL(p || q) per row, over the last dimension."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def divergence_rows(log_pt, log_ps, kind, beta):
    if kind == "fwd" or (kind == "jsd" and beta == 0.0):
        return kl_rows(log_pt, log_ps)
    if kind == "rev" or (kind == "jsd" and beta == 1.0):
        return kl_rows(log_ps, log_pt)
    b = torch.tensor(beta, dtype=dt)
    log_m = torch.logsumexp(torch.stack([log_ps + torch.log(1 - b), log_pt + torch.log(b)]), dim=0)
    return b * kl_rows(log_pt, log_m) + (1 - b) * kl_rows(log_ps, log_m)


def reduce(rows, counted, T):
    return rows[counted].sum() / counted.sum() * T * T


def dense_case(name, zs, zt, counted, T):
    res = {f"{name}_zs": zs, f"{name}_zt": zt, f"{name}_T": torch.tensor(T, dtype=dt)}
    for mode, (kind, beta) in MODES.items():
        s = zs.clone().requires_grad_()
        t = zt.clone().requires_grad_()
        rows = divergence_rows(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1), kind, beta)
        loss = reduce(rows, counted, T)
        loss.backward()
        res[f"{name}_{mode}_loss"] = loss
        res[f"{name}_{mode}_gs"] = s.grad
        res[f"{name}_{mode}_gt"] = t.grad
    return res


res = {}
# [B, C]
zs = torch.randn(5, 7, dtype=dt) * 2
zt = torch.randn(5, 7, dtype=dt) * 2
res.update(dense_case("bc", zs, zt, torch.ones(5, dtype=torch.bool), 2.5))

# [B, L, V] with mask and ignore_index
B, L, V = 3, 4, 11
zs = torch.randn(B, L, V, dtype=dt) * 3
zt = torch.randn(B, L, V, dtype=dt) * 3
mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=dt)
targets = torch.randint(0, V, (B, L))
targets[0, 1] = -100
targets[2, 3] = -100
targets[1, 3] = -100  # also masked: counted once as excluded
counted = mask.bool() & (targets != -100)
res.update(dense_case("seq", zs, zt, counted, 1.7))
res.update(seq_mask=mask, seq_targets=targets)

# Sparse top-k teacher, k = 4, indices in a scrambled order.
k, T = 4, 2.0
values, indices = zt.topk(k, dim=-1)
perm = torch.randperm(k)
values, indices = values[..., perm].contiguous(), indices[..., perm].contiguous()
res.update(topk_values=values, topk_indices=indices, topk_T=torch.tensor(T, dtype=dt))
for mode, (kind, beta) in MODES.items():
    s = zs.clone().requires_grad_()
    v = values.clone().requires_grad_()
    log_pt = F.log_softmax(v / T, -1)  # [B, L, k], teacher renormalised on S
    if kind == "fwd" or (kind == "jsd" and beta == 0.0):
        p_dense = torch.zeros(B, L, V, dtype=dt).scatter(-1, indices, log_pt.exp())
        rows = F.kl_div(F.log_softmax(s / T, -1), p_dense, reduction="none").sum(-1)
    else:
        log_ps = F.log_softmax(s.gather(-1, indices) / T, -1)
        rows = divergence_rows(log_pt, log_ps, kind, beta)
    loss = reduce(rows, counted, T)
    loss.backward()
    res[f"topk_{mode}_loss"] = loss
    res[f"topk_{mode}_gs"] = s.grad
    res[f"topk_{mode}_gt"] = v.grad

kdref.save(os.path.join(out, "temperature_kl.json"), **res)
