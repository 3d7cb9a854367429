"""Reference outputs of kd::models::TransformerEncoder and kd::models::CausalLM, in float64,
written from the formulas in plain PyTorch tensor ops (no nn.Transformer, nothing from kdistill).

Per block (pre-LN):  h = x + Attn(LN1(x));  out = h + fc2(GELU(fc1(LN2(h))))
Attn:  q, k, v = x Wq^T + bq, ...;  split into H heads of size d;  q, k rotated by RoPE
       (pair (q_i, q_{i+d/2}) of position p turned by the angle p * base^(-2i/d));
       P = softmax(q k^T / sqrt(d)) with blocked keys at -inf;  out = concat(P v) Wo^T + bo
Encoder: e = E[tokens]; blocks; LN_f; masked mean over non-pad positions; head.
         Keys equal to the pad token are blocked (a row that is all padding blocks nothing).
CausalLM: keys j > t blocked for query t; logits = LN_f(x) W_lm^T (no bias).
LN: (x - mean) / sqrt(var_biased + 1e-5) * w + b.  GELU: x/2 * (1 + erf(x / sqrt 2)).

Parameters are named as the C++ modules name theirs; the JSON holds them under "<case>.p.<name>",
the inputs, every hidden state "<case>.h<l>" (block l+1's output), attention map "<case>.a<l>",
logits, and the gradient of sum(logits * g) with respect to the embedding output.
"""
import math
import os

import torch

import kdref

out = kdref.out_dir()
torch.manual_seed(1234)
dt = torch.float64


def rope(x, base):
    # x [B, H, L, d]: rotate each pair (x_i, x_{i+d/2}) by p * theta_i.
    d, L = x.shape[-1], x.shape[-2]
    theta = torch.tensor([base ** (-2.0 * i / d) for i in range(d // 2)], dtype=dt)
    ang = torch.arange(L, dtype=dt)[:, None] * theta[None, :]
    c, s = torch.cos(ang), torch.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x, p, name, bias=True):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if bias else y


def block(x, p, pre, heads, base, blocked):
    B, L, D = x.shape
    d = D // heads
    n = layer_norm(x, p[pre + "ln1.weight"], p[pre + "ln1.bias"])
    split = lambda t: t.reshape(B, L, heads, d).permute(0, 2, 1, 3)
    q = rope(split(linear(n, p, pre + "attn.q_proj")), base)
    k = rope(split(linear(n, p, pre + "attn.k_proj")), base)
    v = split(linear(n, p, pre + "attn.v_proj"))
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
    scores = scores.masked_fill(blocked, float("-inf"))
    probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)
    ctx = torch.einsum("bhqk,bhkd->bhqd", probs, v).permute(0, 2, 1, 3).reshape(B, L, D)
    h = x + linear(ctx, p, pre + "attn.o_proj")
    n2 = layer_norm(h, p[pre + "ln2.weight"], p[pre + "ln2.bias"])
    return h + linear(gelu(linear(n2, p, pre + "fc1")), p, pre + "fc2"), probs


def make_params(vocab, D, F, layers, head=None, lm_head=False):
    p = {"embed.weight": torch.randn(vocab, D, dtype=dt)}
    for l in range(layers):
        pre = f"blocks.{l}."
        for ln in ("ln1", "ln2"):
            p[pre + ln + ".weight"] = 1.0 + 0.2 * torch.randn(D, dtype=dt)
            p[pre + ln + ".bias"] = 0.2 * torch.randn(D, dtype=dt)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            p[pre + "attn." + proj + ".weight"] = torch.randn(D, D, dtype=dt) / math.sqrt(D)
            p[pre + "attn." + proj + ".bias"] = 0.1 * torch.randn(D, dtype=dt)
        p[pre + "fc1.weight"] = torch.randn(F, D, dtype=dt) / math.sqrt(D)
        p[pre + "fc1.bias"] = 0.1 * torch.randn(F, dtype=dt)
        p[pre + "fc2.weight"] = torch.randn(D, F, dtype=dt) / math.sqrt(F)
        p[pre + "fc2.bias"] = 0.1 * torch.randn(D, dtype=dt)
    p["ln_f.weight"] = 1.0 + 0.2 * torch.randn(D, dtype=dt)
    p["ln_f.bias"] = 0.2 * torch.randn(D, dtype=dt)
    if head:
        p["head.weight"] = torch.randn(head, D, dtype=dt) / math.sqrt(D)
        p["head.bias"] = 0.1 * torch.randn(head, dtype=dt)
    if lm_head:
        p["lm_head.weight"] = torch.randn(vocab, D, dtype=dt) / math.sqrt(D)
    return p


tensors = {}


def record(case, p, tokens, logits, hidden, attn, emb, extra=None):
    g = torch.randn(logits.shape, dtype=dt, generator=torch.Generator().manual_seed(99))
    (grad,) = torch.autograd.grad((logits * g).sum(), emb)
    tensors[case + ".tokens"] = tokens
    tensors[case + ".num_params"] = torch.tensor(float(len(p)))
    tensors[case + ".logits"] = logits.detach()
    tensors[case + ".g"] = g
    tensors[case + ".grad_embeddings"] = grad
    for l, (h, a) in enumerate(zip(hidden, attn)):
        tensors[f"{case}.h{l}"] = h.detach()
        tensors[f"{case}.a{l}"] = a.detach()
    for name, t in p.items():
        tensors[f"{case}.p.{name}"] = t
    for name, t in (extra or {}).items():
        tensors[f"{case}.{name}"] = t.detach()


# ---- encoder: vocab 20, d 16, 2 heads, ffn 24, 3 layers, 3 classes, pad 0, RoPE base 10000
V, D, H, F, NL, C, PAD = 20, 16, 2, 24, 3, 3, 0
p = make_params(V, D, F, NL, head=C)
tokens = torch.randint(1, V, (3, 7))
tokens[1, 4:] = PAD          # right padding
tokens[2, 2] = PAD           # a pad token in the middle
tokens[2, 5:] = PAD
real = tokens != PAD
blocked = (~real)[:, None, None, :]
emb = p["embed.weight"][tokens].clone().requires_grad_(True)
x, hidden, attn = emb, [], []
for l in range(NL):
    x, a = block(x, p, f"blocks.{l}.", H, 10000.0, blocked)
    hidden.append(x)
    attn.append(a)
hf = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
m = real.to(dt)[..., None]
pooled = (hf * m).sum(1) / m.sum(1)
logits = linear(pooled, p, "head")
record("enc", p, tokens, logits, hidden, attn, emb, {"pooled": pooled})

# ---- causal LM: vocab 20, d 12, 3 heads, ffn 20, 2 layers, RoPE base 100
V, D, H, F, NL = 20, 12, 3, 20, 2
p = make_params(V, D, F, NL, lm_head=True)
tokens = torch.randint(0, V, (2, 6))
L = tokens.shape[1]
blocked = torch.ones(L, L, dtype=torch.bool).triu(1)[None, None]
emb = p["embed.weight"][tokens].clone().requires_grad_(True)
x, hidden, attn = emb, [], []
for l in range(NL):
    x, a = block(x, p, f"blocks.{l}.", H, 100.0, blocked)
    hidden.append(x)
    attn.append(a)
logits = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"]) @ p["lm_head.weight"].T
record("lm", p, tokens, logits, hidden, attn, emb)

kdref.save(os.path.join(out, "transformer.json"), **tensors)
