"""GradientMatching (R1) references in float64, written with plain torch ops.

Tiny models with fixed random weights, defined identically in the C++ test:

image case   student: x[3,1,5,5] -> conv(1->2, 3x3, pad 1) -> tanh -> flatten -> linear(50->4)
             teacher: x          -> conv(1->3, 3x3, pad 1) -> tanh -> flatten -> linear(75->4)
             L = lam * mse(g_s, g_t) + (1 - lam) * KL_T(p_t || p_s) * T^2 (batchmean),
             lam = 0.8 + (0.3 - 0.8) * 0.25 (default schedule at progress 0.25), T = 2,
             g = d/dx of the SUMMED cross-entropy (create_graph on the student side only).
token case   emb = E[tokens]; h_l = tanh(W1 (mean_{j<=l} emb_j) + b1); logits_l = W2 h_l + b2
             student width 3 (hidden 4), teacher width 5 (hidden 6), 3 classes, B=2, L=4,
             the last token of example 1 is padding (target -100, mask 0);
             g w.r.t. the embeddings, compared as per-token norms over real tokens; lam = 1.
token case 2 the same models, lam = 0.6, T = 2, and a second padded position [0, 3] that only the
             mask marks (its target is a real class): the task loss, the gradient MSE and the KL
             all leave out positions with mask 0 or target -100; the KL is the per-token mean
             T^2 / N * sum over counted positions of KL(p_t || p_s).
Saved: weights, inputs, targets, expected loss and parts, and the gradients of the loss
w.r.t. every student parameter and w.r.t. the student's inputs (images) or input embeddings
(tokens).
"""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(2)
dt = torch.float64
res = {}

# ---- image case
x = torch.randn(3, 1, 5, 5, dtype=dt)
y = torch.tensor([0, 3, 1])
S = {"conv_w": torch.randn(2, 1, 3, 3, dtype=dt) * 0.5, "conv_b": torch.randn(2, dtype=dt) * 0.1,
     "fc_w": torch.randn(4, 50, dtype=dt) * 0.3, "fc_b": torch.randn(4, dtype=dt) * 0.1}
Tw = {"conv_w": torch.randn(3, 1, 3, 3, dtype=dt) * 0.5, "conv_b": torch.randn(3, dtype=dt) * 0.1,
      "fc_w": torch.randn(4, 75, dtype=dt) * 0.3, "fc_b": torch.randn(4, dtype=dt) * 0.1}


def image_model(p, inp):
    h = torch.tanh(F.conv2d(inp, p["conv_w"], p["conv_b"], padding=1))
    return F.linear(h.flatten(1), p["fc_w"], p["fc_b"])


Sp = {k: v.clone().requires_grad_() for k, v in S.items()}
xs = x.clone().requires_grad_()
xt = x.clone().requires_grad_()
zs = image_model(Sp, xs)
zt = image_model(Tw, xt)
g_s, = torch.autograd.grad(F.cross_entropy(zs, y, reduction="sum"), xs, create_graph=True)
g_t, = torch.autograd.grad(F.cross_entropy(zt, y, reduction="sum"), xt)
lam = 0.8 + (0.3 - 0.8) * 0.25
T = 2.0
grad_mse = F.mse_loss(g_s, g_t.detach())
kl = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt.detach() / T, -1), reduction="batchmean",
              log_target=True) * T * T
loss = lam * grad_mse + (1 - lam) * kl
names = list(S)
*grads, grad_x = torch.autograd.grad(loss, [Sp[n] for n in names] + [xs])
res.update(img_grad_x=grad_x, img_x=x, img_y=y, img_lambda=torch.tensor(lam, dtype=dt), img_loss=loss, img_grad_mse=grad_mse, img_kl=kl,
           img_g_s=g_s, img_g_t=g_t)
for n in names:
    res["img_s_" + n] = S[n]
    res["img_t_" + n] = Tw[n]
for n, g in zip(names, grads):
    res["img_grad_" + n] = g

# ---- token case
V, B, L, C = 7, 2, 4, 3
tokens = torch.randint(0, V, (B, L))
targets = torch.randint(0, C, (B, L))
targets[1, 3] = -100
mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=dt)
St = {"emb": torch.randn(V, 3, dtype=dt), "w1": torch.randn(4, 3, dtype=dt) * 0.5, "b1": torch.randn(4, dtype=dt) * 0.1,
      "w2": torch.randn(C, 4, dtype=dt) * 0.5, "b2": torch.randn(C, dtype=dt) * 0.1}
Tt = {"emb": torch.randn(V, 5, dtype=dt), "w1": torch.randn(6, 5, dtype=dt) * 0.5, "b1": torch.randn(6, dtype=dt) * 0.1,
      "w2": torch.randn(C, 6, dtype=dt) * 0.5, "b2": torch.randn(C, dtype=dt) * 0.1}


def token_model(p, emb):
    counts = torch.arange(1, L + 1, dtype=dt).view(1, L, 1)
    h = torch.tanh(F.linear(emb.cumsum(1) / counts, p["w1"], p["b1"]))
    return F.linear(h, p["w2"], p["b2"])


Sp = {k: v.clone().requires_grad_() for k, v in St.items()}
emb_s = Sp["emb"][tokens]
emb_t = Tt["emb"][tokens].clone().requires_grad_()
zs = token_model(Sp, emb_s)
zt = token_model(Tt, emb_t)
ce = lambda z: F.cross_entropy(z.reshape(-1, C), targets.reshape(-1), reduction="sum", ignore_index=-100)
g_s, = torch.autograd.grad(ce(zs), emb_s, create_graph=True)
g_t, = torch.autograd.grad(ce(zt), emb_t)
n_s = torch.linalg.vector_norm(g_s, dim=-1)
n_t = torch.linalg.vector_norm(g_t, dim=-1)
keep = mask.bool()
loss = ((n_s - n_t)[keep] ** 2).mean()
names = list(St)
*grads, grad_emb = torch.autograd.grad(loss, [Sp[n] for n in names] + [emb_s])
res.update(tok_tokens=tokens, tok_targets=targets, tok_mask=mask, tok_loss=loss, tok_grad_embeddings=grad_emb)
for n in names:
    res["tok_s_" + n] = St[n]
    res["tok_t_" + n] = Tt[n]
for n, g in zip(names, grads):
    res["tok_grad_" + n] = g

# ---- token case 2: lam < 1, a position padded by the mask alone
lam2, T2 = 0.6, 2.0
mask2 = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=dt)
counted = mask2.bool() & (targets != -100)          # what every part counts
targets2 = targets.masked_fill(~counted, -100)     # the task loss ignores the rest
Sp = {k: v.clone().requires_grad_() for k, v in St.items()}
emb_s = Sp["emb"][tokens]
emb_t = Tt["emb"][tokens].clone().requires_grad_()
zs = token_model(Sp, emb_s)
zt = token_model(Tt, emb_t)
ce2 = lambda z: F.cross_entropy(z.reshape(-1, C), targets2.reshape(-1), reduction="sum", ignore_index=-100)
g_s, = torch.autograd.grad(ce2(zs), emb_s, create_graph=True)
g_t, = torch.autograd.grad(ce2(zt), emb_t)
n_s = torch.linalg.vector_norm(g_s, dim=-1)
n_t = torch.linalg.vector_norm(g_t, dim=-1)
grad_mse2 = ((n_s - n_t)[mask2.bool()] ** 2).mean()
kl2 = F.kl_div(F.log_softmax(zs[counted] / T2, -1), F.log_softmax(zt.detach()[counted] / T2, -1),
               reduction="sum", log_target=True) / counted.sum() * T2 * T2
loss2 = lam2 * grad_mse2 + (1 - lam2) * kl2
*grads, grad_emb = torch.autograd.grad(loss2, [Sp[n] for n in names] + [emb_s])
res.update(tok2_mask=mask2, tok2_lambda=torch.tensor(lam2, dtype=dt), tok2_loss=loss2, tok2_grad_mse=grad_mse2,
           tok2_kl=kl2, tok2_grad_embeddings=grad_emb)
for n, g in zip(names, grads):
    res["tok2_grad_" + n] = g



# ---- the scale-free distance: D = mean_b (1 - cos(a_b, c_b)), a_b, c_b the example's compared gradient,
# flattened, masked positions zeroed; written with vector norms, not with the C++ side's sum-of-squares form.
def cosine_distance(a, c):
    a, c = a.flatten(1), c.flatten(1)
    return (1 - (a * c).sum(1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(c, dim=1))).mean()


# image case, cosine
Sp = {k: v.clone().requires_grad_() for k, v in S.items()}
xs = x.clone().requires_grad_()
xt = x.clone().requires_grad_()
zs = image_model(Sp, xs)
zt = image_model(Tw, xt)
g_s, = torch.autograd.grad(F.cross_entropy(zs, y, reduction="sum"), xs, create_graph=True)
g_t, = torch.autograd.grad(F.cross_entropy(zt, y, reduction="sum"), xt)
dist = cosine_distance(g_s, g_t.detach())
kl = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt.detach() / T, -1), reduction="batchmean",
              log_target=True) * T * T
loss = lam * dist + (1 - lam) * kl
img_names = list(S)
*grads, grad_x = torch.autograd.grad(loss, [Sp[n] for n in img_names] + [xs])
res.update(imgcos_loss=loss, imgcos_distance=dist, imgcos_share=lam * dist / loss, imgcos_grad_x=grad_x)
for n, g in zip(img_names, grads):
    res["imgcos_grad_" + n] = g

# token case 2, cosine: per-token gradient norms [B, L], padded positions zeroed in both
names = list(St)
Sp = {k: v.clone().requires_grad_() for k, v in St.items()}
emb_s = Sp["emb"][tokens]
emb_t = Tt["emb"][tokens].clone().requires_grad_()
zs = token_model(Sp, emb_s)
zt = token_model(Tt, emb_t)
g_s, = torch.autograd.grad(ce2(zs), emb_s, create_graph=True)
g_t, = torch.autograd.grad(ce2(zt), emb_t)
n_s = torch.linalg.vector_norm(g_s, dim=-1) * mask2
n_t = torch.linalg.vector_norm(g_t, dim=-1) * mask2
dist2 = cosine_distance(n_s, n_t.detach())
kl2 = F.kl_div(F.log_softmax(zs[counted] / T2, -1), F.log_softmax(zt.detach()[counted] / T2, -1),
               reduction="sum", log_target=True) / counted.sum() * T2 * T2
loss2 = lam2 * dist2 + (1 - lam2) * kl2
grads = torch.autograd.grad(loss2, [Sp[n] for n in names])
res.update(tok2cos_loss=loss2, tok2cos_distance=dist2)
for n, g in zip(names, grads):
    res["tok2cos_grad_" + n] = g

# token case 3, cosine: a padded position in the middle ([0, 1]); its embedding feeds the counted positions
# after it (the running mean), so its gradient is not zero and the padding must be left out of the distance.
mask3 = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=dt)
counted3 = mask3.bool() & (targets != -100)
targets3 = targets.masked_fill(~counted3, -100)
ce3 = lambda z: F.cross_entropy(z.reshape(-1, C), targets3.reshape(-1), reduction="sum", ignore_index=-100)
Sp = {k: v.clone().requires_grad_() for k, v in St.items()}
emb_s = Sp["emb"][tokens]
emb_t = Tt["emb"][tokens].clone().requires_grad_()
zs = token_model(Sp, emb_s)
zt = token_model(Tt, emb_t)
g_s, = torch.autograd.grad(ce3(zs), emb_s, create_graph=True)
g_t, = torch.autograd.grad(ce3(zt), emb_t)
n_s = torch.linalg.vector_norm(g_s, dim=-1)
n_t = torch.linalg.vector_norm(g_t, dim=-1)
assert n_s[0, 1] > 1e-6 and n_t[0, 1] > 1e-6  # the case only tests something when the padded gradient is not 0
dist3 = cosine_distance(n_s * mask3, (n_t * mask3).detach())
res.update(tok3_mask=mask3, tok3cos_distance=dist3)

kdref.save(os.path.join(out, "gradient_matching.json"), **res)
