"""HardLabelCE references in float64: torch.nn.functional.cross_entropy itself.

hard_label_ce.json holds, for each label smoothing eps in {0, 0.1, 0.35}:
- "bc":  logits [B, C] = [6, 5], targets [6] with one target = -100 (ignored);
- "seq": logits [B, L, V] = [2, 3, 7] (classes last, permuted to torch's [B, V, L] for
         cross_entropy), targets [2, 3] with -100 at two positions;
- "custom": the [B, C] case with ignore_index = 2 instead of -100 (rows with target 2 ignored,
         the -100 row is changed to class 0);
the loss (reduction "mean") and its gradient w.r.t. the logits; and
- "soft": the [B, C] logits against probability targets soft_targets [6, 5] (what CutMix makes),
         cross_entropy's probability-target form.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(3)
dt = torch.float64
res = {}

bc_logits = torch.randn(6, 5, dtype=dt) * 2
bc_targets = torch.tensor([0, 4, -100, 2, 1, 2])
seq_logits = torch.randn(2, 3, 7, dtype=dt) * 2
seq_targets = torch.tensor([[3, -100, 6], [0, 1, -100]])
custom_targets = torch.tensor([0, 4, 0, 2, 1, 2])
res.update(bc_logits=bc_logits, bc_targets=bc_targets, seq_logits=seq_logits, seq_targets=seq_targets,
           custom_targets=custom_targets)

for eps_name, eps in (("e0", 0.0), ("e10", 0.1), ("e35", 0.35)):
    x = bc_logits.clone().requires_grad_()
    loss = F.cross_entropy(x, bc_targets, ignore_index=-100, label_smoothing=eps)
    loss.backward()
    res[f"bc_{eps_name}_loss"], res[f"bc_{eps_name}_grad"] = loss, x.grad

    x = seq_logits.clone().requires_grad_()
    loss = F.cross_entropy(x.permute(0, 2, 1), seq_targets, ignore_index=-100, label_smoothing=eps)
    loss.backward()
    res[f"seq_{eps_name}_loss"], res[f"seq_{eps_name}_grad"] = loss, x.grad

    x = bc_logits.clone().requires_grad_()
    loss = F.cross_entropy(x, custom_targets, ignore_index=2, label_smoothing=eps)
    loss.backward()
    res[f"custom_{eps_name}_loss"], res[f"custom_{eps_name}_grad"] = loss, x.grad

soft_targets = torch.softmax(torch.randn(6, 5, dtype=dt), -1)
res.update(soft_targets=soft_targets)
for eps_name, eps in (("e0", 0.0), ("e10", 0.1), ("e35", 0.35)):
    x = bc_logits.clone().requires_grad_()
    loss = F.cross_entropy(x, soft_targets, label_smoothing=eps)
    loss.backward()
    res[f"soft_{eps_name}_loss"], res[f"soft_{eps_name}_grad"] = loss, x.grad

kdref.save(os.path.join(out, "hard_label_ce.json"), **res)
