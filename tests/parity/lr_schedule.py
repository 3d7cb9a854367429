"""PyTorch's own schedulers, stepped as a training loop steps them: lr used at each step."""
import os

import torch
import kdref

out = kdref.out_dir()
cases = {
    "a": dict(base=3e-5, total=40, warmup=5, start=1.0 / 3.0, min_lr=1e-6),
    "b": dict(base=0.1, total=30, warmup=0, start=1.0, min_lr=0.0),
    "c": dict(base=1e-3, total=25, warmup=10, start=0.01, min_lr=1e-4),
}
res = {}
for name, c in cases.items():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=c["base"])
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c["total"] - c["warmup"], eta_min=c["min_lr"])
    if c["warmup"] > 0:
        lin = torch.optim.lr_scheduler.LinearLR(opt, start_factor=c["start"], total_iters=c["warmup"])
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [lin, cos], milestones=[c["warmup"]])
    else:
        sched = cos
    lrs = []
    for step in range(c["total"] + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    res[name + "_lrs"] = torch.tensor(lrs, dtype=torch.float64)
    res[name + "_cfg"] = torch.tensor([c["base"], c["total"], c["warmup"], c["start"], c["min_lr"]], dtype=torch.float64)
kdref.save(os.path.join(out, "lr.json"), **res)
