"""TeacherMixtureKL in float64, written from its formula with PyTorch autograd:

  w = softmax(theta), pT = sum_k w_k softmax(z_k / T), p1 = sum_k w_k softmax(z_k)
  L = T^2 * KL(stopgrad(pT) || softmax(zs / T)) (batchmean) + lam * mean_i(-log p1_i(y_i))

as torch.nn.functional.kl_div(log_softmax(zs / T), pT.detach(), reduction="batchmean") + lam * nll.
teacher_mixture_kl.json: inputs, the loss, its parts, and the gradients w.r.t. zs and theta.
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(11)
dt = torch.float64
B, C, K = 6, 5, 3
T, lam = 2.5, 0.7
zs = torch.randn(B, C, dtype=dt) * 2
zk = torch.randn(K, B, C, dtype=dt) * 3
y = torch.tensor([0, 4, 2, 2, 1, 3])
theta0 = torch.tensor([0.3, -0.2, 0.5], dtype=dt)

s = zs.clone().requires_grad_()
theta = theta0.clone().requires_grad_()
w = torch.softmax(theta, 0)
pT = sum(w[k] * torch.softmax(zk[k] / T, -1) for k in range(K))
p1 = sum(w[k] * torch.softmax(zk[k], -1) for k in range(K))
kl = F.kl_div(torch.log_softmax(s / T, -1), pT.detach(), reduction="batchmean") * T * T
ce = -torch.log(p1.gather(1, y.view(B, 1))).mean()
loss = kl + lam * ce
loss.backward()
kdref.save(os.path.join(out, "teacher_mixture_kl.json"), zs=zs, zk=zk, y=y, theta=theta0, T=torch.tensor(T, dtype=dt),
           lam=torch.tensor(lam, dtype=dt), loss=loss, kl=kl, ce=ce, w=w, grad_zs=s.grad, grad_theta=theta.grad)
