#!/usr/bin/python3
"""Plain-PyTorch twin of kd-bench: issue 7's workloads W1, W2, W3 as a competent PyTorch user writes them.

    /usr/bin/python3 bench/python/kd_bench.py --workload w1|w2|w3 --steps N [--mode online|cached]
                                              [--warmup W] [--threads T] [--inference-mode] [--profile FILE]

Prints one JSON line with the same fields as kd-bench (bench/kd_bench/main.cpp). The models are
the same architectures as kdistill's (CnnTeacher / DepthwiseCnnStudent, TransformerEncoder and
CausalLM: pre-LN blocks, RoPE, exact GELU), the losses and optimizer (AdamW, lr 1e-3) the same,
data synthetic of the stated shapes. The teacher runs in eval mode under torch.no_grad() (the
idiom; --inference-mode uses torch.inference_mode() and clones what the losses save).
FLOPs: the analytic count of bench/kd_bench/flops.h (see bench/RESULTS.md).
"""
import argparse
import contextlib
import json
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- FLOPs (bench/kd_bench/flops.h)
def conv_flops(cin, cout, h, w, k, groups=1):
    return 2.0 * cout * h * w * (cin // groups) * k * k


def mm_flops(m, n, k):
    return 2.0 * m * n * k


def block_flops(B, L, D, Fw):
    N = B * L
    return 4 * mm_flops(N, D, D) + mm_flops(N, Fw, D) + mm_flops(N, D, Fw) + 4.0 * B * L * L * D


W1_TEACHER = (conv_flops(1, 32, 28, 28, 3) + conv_flops(32, 32, 28, 28, 3) + conv_flops(32, 64, 14, 14, 3)
              + conv_flops(64, 64, 14, 14, 3) + mm_flops(1, 256, 3136) + mm_flops(1, 10, 256))
W1_STUDENT = (conv_flops(1, 16, 28, 28, 3) + conv_flops(16, 16, 14, 14, 3, 16) + conv_flops(16, 32, 14, 14, 1)
              + mm_flops(1, 10, 1568) + conv_flops(32, 64, 7, 7, 1))


# ---------------------------------------------------------------- W1 models
def conv_bn(cin, cout, k=3, groups=1):
    return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]


class CnnTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(*conv_bn(1, 32), *conv_bn(32, 32), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*conv_bn(32, 64), *conv_bn(64, 64), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(3136, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        h1 = self.block1(x)
        h2 = self.block2(h1)
        return self.fc2(F.relu(self.fc1(h2.flatten(1)))), h2


class DepthwiseCnnStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(*conv_bn(1, 16), nn.MaxPool2d(2))
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.block2 = nn.Sequential(*conv_bn(16, 32, k=1), nn.MaxPool2d(2))
        self.fc = nn.Linear(1568, 10)

    def forward(self, x):
        h2 = self.block2(self.depthwise(self.block1(x)))
        return self.fc(h2.flatten(1)), h2


# ---------------------------------------------------------------- token models
def rope_tables(L, d, base=10000.0):
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(L, dtype=torch.float64), inv)
    full = torch.cat([ang, ang], -1)
    return full.cos().float(), full.sin().float()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, rope, mask):
        B, L, D = x.shape
        split = lambda t: t.view(B, L, self.h, D // self.h).transpose(1, 2)
        q = rotate(split(self.q_proj(x)), *rope)
        k = rotate(split(self.k_proj(x)), *rope)
        v = split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.h)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        p = scores.softmax(-1)
        return self.o_proj((p @ v).transpose(1, 2).reshape(B, L, D)), p


class Block(nn.Module):
    """Pre-LN: h = x + attn(LN1 x); out = h + fc2(gelu(fc1(LN2 h)))."""

    def __init__(self, d, heads, ffn):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x, rope, mask):
        a, p = self.attn(self.ln1(x), rope, mask)
        h = x + a
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h)))), p


class TokenModel(nn.Module):
    """Encoder (mean-pooled 2-class head) or causal LM (lm_head over the vocabulary)."""

    def __init__(self, layers, d, heads, ffn, causal, classes=2, vocab=256):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)  # as kdistill's token models
        self.blocks = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False) if causal else nn.Linear(d, classes)

    def forward(self, tokens):
        L = tokens.shape[1]
        rope = rope_tables(L, self.embed.embedding_dim // self.heads)
        mask = torch.ones(L, L, dtype=torch.bool).triu(1) if self.causal else None
        x = self.embed(tokens)
        hidden, attn = [], []
        for b in self.blocks:
            x, p = b(x, rope, mask)
            hidden.append(x)
            attn.append(p)
        h = self.ln_f(x)
        return self.head(h if self.causal else h.mean(1)), hidden, attn


def soft_kl(student, teacher, T):
    V = student.shape[-1]
    s = F.log_softmax(student.reshape(-1, V) / T, -1)
    t = F.log_softmax(teacher.reshape(-1, V) / T, -1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * (T * T)


# ---------------------------------------------------------------- workloads
class Workload:
    def __init__(self, args):
        self.args = args
        self.teacher_ctx = torch.inference_mode if args.inference_mode else torch.no_grad
        self.cache = None

    def teacher_outputs(self, b, x):
        if self.cache is not None:
            return [c[b] for c in self.cache]
        with self.teacher_ctx():
            out = self.run_teacher(x)
        return [t.clone() for t in out] if self.args.inference_mode else out

    def step(self, i, times):
        b = i % self.args.pool
        batch = self.batch(b)
        t0 = time.perf_counter()
        teacher = self.teacher_outputs(b, batch[0])
        t1 = time.perf_counter()
        student = self.student_forward(batch[0])
        t2 = time.perf_counter()
        loss = self.loss(student, teacher, batch)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        for k, dt in zip(("teacher", "student_forward", "loss", "backward", "optimizer"),
                         (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[k] += dt
        return loss.item()

    def build_cache(self):
        """Epoch 1: the teacher's outputs for every pool batch, kept in memory for epochs 2+."""
        start = time.perf_counter()
        outs = [self.teacher_outputs(b, self.batch(b)[0]) for b in range(self.args.pool)]
        self.cache = [list(c) for c in zip(*outs)]
        self.cache_build_s = time.perf_counter() - start


class W1(Workload):
    batch_size = 128

    def __init__(self, args):
        super().__init__(args)
        self.teacher = CnnTeacher().eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = DepthwiseCnnStudent().train()
        self.proj = nn.Conv2d(32, 64, 1)  # 1×1-conv projection of the student's 7×7 feature
        self.opt = torch.optim.AdamW(list(self.student.parameters()) + list(self.proj.parameters()), lr=1e-3)
        n = args.pool * self.batch_size
        self.images = torch.randn(n, 1, 28, 28)
        self.labels = torch.randint(0, 10, (n,))
        self.cache_build_s = 0.0
        if args.mode == "cached":
            self.build_cache()
        self.flops = self.batch_size * ((0.0 if self.cache else W1_TEACHER) + 3.0 * W1_STUDENT)

    def batch(self, b):
        s = slice(b * self.batch_size, (b + 1) * self.batch_size)
        return self.images[s], self.labels[s]

    def run_teacher(self, x):
        return list(self.teacher(x))

    def student_forward(self, x):
        return self.student(x)

    def loss(self, student, teacher, batch):
        (zs, hs), (zt, ht) = student, teacher
        return 0.9 * soft_kl(zs, zt, 4.0) + 0.1 * F.cross_entropy(zs, batch[1]) + F.mse_loss(self.proj(hs), ht)


class W2(Workload):
    batch_size, length = 32, 128
    pairs = ((2, 0), (5, 1))  # (teacher, student) 0-based: student layer i ↔ teacher layer 3i, from 1

    def __init__(self, args):
        super().__init__(args)
        self.teacher = TokenModel(6, 256, 4, 1024, causal=False).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = TokenModel(2, 128, 2, 512, causal=False).train()
        self.proj = nn.ModuleList(nn.Linear(128, 256) for _ in self.pairs)
        self.opt = torch.optim.AdamW(list(self.student.parameters()) + list(self.proj.parameters()), lr=1e-3)
        self.tokens = torch.randint(0, 256, (args.pool * self.batch_size, self.length))
        B, L = self.batch_size, self.length
        self.flops = (6 * block_flops(B, L, 256, 1024) + mm_flops(B, 2, 256)
                      + 3.0 * (2 * block_flops(B, L, 128, 512) + mm_flops(B, 2, 128) + 2 * mm_flops(B * L, 256, 128)))

    def batch(self, b):
        return (self.tokens[b * self.batch_size:(b + 1) * self.batch_size],)

    def run_teacher(self, x):
        z, hidden, attn = self.teacher(x)
        return [z] + [hidden[t] for t, _ in self.pairs] + [attn[t] for t, _ in self.pairs]

    def student_forward(self, x):
        return self.student(x)

    def loss(self, student, teacher, batch):
        zs, hidden, attn = student
        zt, ht, at = teacher[0], teacher[1:3], teacher[3:5]
        loss = soft_kl(zs, zt, 2.0)
        for i, (_, s) in enumerate(self.pairs):
            loss = loss + F.mse_loss(self.proj[i](hidden[s]), ht[i]) + F.mse_loss(attn[s].mean(1), at[i].mean(1))
        return loss


class W3(Workload):
    batch_size, length = 8, 256

    def __init__(self, args):
        super().__init__(args)
        self.teacher = TokenModel(6, 384, 6, 1536, causal=True).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = TokenModel(2, 192, 3, 768, causal=True).train()
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-3)
        self.tokens = torch.randint(0, 256, (args.pool * self.batch_size, self.length))
        B, L, N = self.batch_size, self.length, self.batch_size * self.length
        self.flops = (6 * block_flops(B, L, 384, 1536) + mm_flops(N, 256, 384)
                      + 3.0 * (2 * block_flops(B, L, 192, 768) + mm_flops(N, 256, 192)))

    def batch(self, b):
        return (self.tokens[b * self.batch_size:(b + 1) * self.batch_size],)

    def run_teacher(self, x):
        return [self.teacher(x)[0]]

    def student_forward(self, x):
        return self.student(x)[0]

    def loss(self, student, teacher, batch):
        return soft_kl(student, teacher[0], 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=["w1", "w2", "w3"], default="w1")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mode", choices=["online", "cached"], default="online")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inference-mode", action="store_true")
    ap.add_argument("--profile", metavar="FILE",
                    help="write the timed steps' operator trace (legacy profiler, Chrome trace) to FILE")
    args = ap.parse_args()
    if args.mode == "cached" and args.workload != "w1":
        ap.error("cached mode is W1's only")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    w = {"w1": W1, "w2": W2, "w3": W3}[args.workload](args)
    setup = time.perf_counter() - start
    ignored = dict.fromkeys(("teacher", "student_forward", "loss", "backward", "optimizer"), 0.0)
    times = dict(ignored)
    for i in range(args.warmup):
        loss = w.step(i, ignored)
    # The legacy profiler, as kd-bench's --profile uses: bench/profile_ops.py reads both traces alike.
    prof = torch.autograd.profiler.profile(use_kineto=False) if args.profile else contextlib.nullcontext()
    with prof:
        t = time.perf_counter()
        for i in range(args.steps):
            loss = w.step(args.warmup + i, times)
        elapsed = time.perf_counter() - t
    if args.profile:
        prof.export_chrome_trace(args.profile)
    print(json.dumps({
        "workload": args.workload, "mode": args.mode, "impl": "python", "threads": torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "batch": w.batch_size, "seconds": elapsed,
        "steps_per_s": args.steps / elapsed, "samples_per_s": args.steps * w.batch_size / elapsed,
        "flops_per_step": w.flops, "achieved_gflops": w.flops * args.steps / elapsed / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "loss": loss,
        "setup_s": setup, "cache_build_s": getattr(w, "cache_build_s", 0.0), "torch": torch.__version__,
        "options": {"inference_mode": args.inference_mode},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "phase_ms": {k: v * 1e3 / args.steps for k, v in times.items()},
    }, sort_keys=True))


if __name__ == "__main__":
    main()
