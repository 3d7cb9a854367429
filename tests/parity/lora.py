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

# Dropout on the adapter's input (PEFT: lora_B(lora_A(lora_dropout(x))) * scaling), p = 0.25, s = 4/2.
# Eval mode: no dropout. Train mode: the mask torch's own dropout draws right after manual_seed(123),
# which is what the C++ forward draws (the base matmul draws nothing); the adapter gradients of
# sum(y * g) through that mask.
p = 0.25
s2 = 4.0 / 2
a2 = torch.randn(2, 6, dtype=dt, requires_grad=True)
b2 = torch.randn(4, 2, dtype=dt, requires_grad=True)
y_eval = x @ w0.T + b + s2 * (x @ a2.T) @ b2.T
torch.manual_seed(123)
xd = torch.nn.functional.dropout(x, p, training=True)
y_train = x @ w0.T + b + s2 * (xd @ a2.T) @ b2.T
(y_train * g).sum().backward()
kdref.save(os.path.join(out, "lora_dropout.json"), a=a2.detach(), bb=b2.detach(), y_eval=y_eval.detach(),
           y_train=y_train.detach(), kept=(xd != 0).to(torch.int64), grad_a=a2.grad, grad_b=b2.grad)
