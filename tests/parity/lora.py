"""LoRA reference in float64, written from the definition (Hu et al. 2021, as PEFT computes it):
y = x W0^T + b + s * (x A^T) B^T with s = alpha / r, and the gradients of sum(y * g) w.r.t. A and B.
The update is formed as PEFT's unmerged forward does (through x A^T), not as the merged weight."""
import os

import torch
import kdref

out = kdref.out_dir()
torch.manual_seed(11)
dt = torch.float64
x = torch.randn(5, 6, dtype=dt)
w0 = torch.randn(4, 6, dtype=dt)
b = torch.randn(4, dtype=dt)
a = torch.randn(2, 6, dtype=dt, requires_grad=True)
bb = torch.randn(4, 2, dtype=dt, requires_grad=True)
g = torch.randn(5, 4, dtype=dt)
alpha, r = 3.0, 2
y = x @ w0.T + b + (alpha / r) * (x @ a.T) @ bb.T
(y * g).sum().backward()
kdref.save(os.path.join(out, "lora.json"), x=x, w0=w0, b=b, a=a.detach(), bb=bb.detach(), g=g, y=y.detach(),
           grad_a=a.grad, grad_b=bb.grad)
