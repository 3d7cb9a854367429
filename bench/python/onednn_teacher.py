#!/usr/bin/python3
"""Prototype: W2/W3's frozen teacher forward with its linear layers on oneDNN, against the plain one.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        /usr/bin/python3 bench/python/onednn_teacher.py [--rounds 5] [--reps 5]

The question bench/RESULTS.md leaves open: W2/W3 spend two thirds of a step in OpenBLAS GEMMs, and
oneDNN runs the same float32 shapes about twice as fast on this CPU, so how much of that does a
frozen teacher keep once activations have to cross between oneDNN's layout and dense tensors?
The oneDNN teacher prepacks every weight once (q, k, v fused into one [3D, D] weight), runs
fc1 → GELU → fc2 without leaving oneDNN's layout, and goes dense only where the next operation
needs it (LayerNorm, the heads' reshape, RoPE, softmax, residual adds). Both teachers are the
kd_bench.py twins' TokenModel with the same weights; the script checks their logits, hidden states
and attention maps agree, then times the two forwards alternately under no_grad (median of
--rounds rounds of --reps forwards each) and prints the ratio. Not used by kd-bench: a prototype.
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_bench import TokenModel, rope_tables, rotate  # noqa: E402

linear = torch._C._nn.mkldnn_linear


class OneDnnTeacher:
    def __init__(self, model):
        self.m, self.heads, self.causal = model, model.heads, model.causal
        self.blocks = []
        for b in model.blocks:
            a = b.attn
            qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach()
            self.blocks.append(dict(
                ln1=b.ln1, ln2=b.ln2, qkv=(qkv_w.to_mkldnn(), qkv_b),
                o=(a.o_proj.weight.detach().to_mkldnn(), a.o_proj.bias.detach()),
                fc1=(b.fc1.weight.detach().to_mkldnn(), b.fc1.bias.detach()),
                fc2=(b.fc2.weight.detach().to_mkldnn(), b.fc2.bias.detach())))

    def forward(self, tokens):
        B, L = tokens.shape
        D = self.m.embed.embedding_dim
        H, dh = self.heads, D // self.heads
        rope = rope_tables(L, dh)
        mask = torch.ones(L, L, dtype=torch.bool).triu(1) if self.causal else None
        x = self.m.embed(tokens).reshape(B * L, D)
        hidden, attn = [], []
        for blk in self.blocks:
            qkv = linear(blk["ln1"](x).to_mkldnn(), *blk["qkv"]).to_dense().view(B, L, 3, H, dh)
            q = rotate(qkv[:, :, 0].transpose(1, 2), *rope)
            k = rotate(qkv[:, :, 1].transpose(1, 2), *rope)
            v = qkv[:, :, 2].transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            p = scores.softmax(-1)
            ctx = (p @ v).transpose(1, 2).reshape(B * L, D)
            h = x + linear(ctx.to_mkldnn(), *blk["o"]).to_dense()
            f = linear(F.gelu(linear(blk["ln2"](h).to_mkldnn(), *blk["fc1"])), *blk["fc2"]).to_dense()
            x = h + f
            hidden.append(x.view(B, L, D))
            attn.append(p)
        hl = self.m.ln_f(x).view(B, L, D)
        return self.m.head(hl if self.causal else hl.mean(1)), hidden, attn


def timed(fn, reps):
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = {"w2 teacher (6 x 256, 4 heads, ffn 1024; 32 x 128 tokens)": (TokenModel(6, 256, 4, 1024, causal=False), (32, 128)),
             "w3 teacher (6 x 384, 6 heads, ffn 1536; 8 x 256 tokens, causal)": (TokenModel(6, 384, 6, 1536, causal=True), (8, 256))}
    with torch.no_grad():
        for name, (model, (B, L)) in cases.items():
            model.eval()
            fast = OneDnnTeacher(model)
            x = torch.randint(0, 256, (B, L))
            ref, out = model(x), fast.forward(x)
            err = max((a - b).abs().max().item() for a, b in
                      [(ref[0], out[0])] + list(zip(ref[1], out[1])) + list(zip(ref[2], out[2])))
            plain, onednn = [], []
            for r in range(args.rounds):
                pair = [(plain, lambda: model(x)), (onednn, lambda: fast.forward(x))]
                for acc, fn in (pair if r % 2 == 0 else pair[::-1]):
                    fn()
                    acc.append(timed(fn, args.reps))
            a, b = statistics.median(plain) * 1e3, statistics.median(onednn) * 1e3
            print(f"{name}: plain {a:.1f} ms, oneDNN {b:.1f} ms per forward, plain/oneDNN {a / b:.2f}x; "
                  f"max |difference| {err:.1e}")


if __name__ == "__main__":
    main()
