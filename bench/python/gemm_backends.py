#!/usr/bin/python3
"""float32 GEMM rate of the two CPU back-ends in this LibTorch, on the linear-layer shapes of W2/W3.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        /usr/bin/python3 bench/python/gemm_backends.py [--threads 2] [--reps 30]

For each [m, k]·[k, n] (m = tokens of a batch, k → n a layer's widths) it times, under no_grad:
- openblas: F.linear on dense tensors, which LibTorch 1.13 sends to OpenBLAS (the workloads' path);
- onednn: torch._C._nn.mkldnn_linear with the weight prepacked once (torch.Tensor.to_mkldnn), the
  input converted to and the output back from oneDNN's layout on every call (what a frozen teacher
  built on it would pay), and the same without the two conversions (the kernel alone);
and prints GFLOP/s (2·m·n·k per call, best of 3 means of --reps calls) with the largest absolute
difference between the two results. OpenBLAS runs the kernel family the environment selects
(OPENBLAS_CORETYPE, printed); it is not changed here.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

SHAPES = [(4096, 256, 256), (4096, 256, 1024), (4096, 1024, 256),  # W2 teacher: 32×128 tokens, d 256, ffn 1024
          (2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384)]  # W3 teacher: 8×256 tokens, d 384, ffn 1536


def rate(fn, flops, reps):
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return flops / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}")
    print(f"{'m x k x n':>18}  {'openblas':>9}  {'onednn+convert':>14}  {'onednn kernel':>13}  max |diff|")
    with torch.no_grad():
        for m, k, n in SHAPES:
            x, w, b = torch.randn(m, k), torch.randn(n, k) / k ** 0.5, torch.randn(n)
            w_packed, x_packed = w.to_mkldnn(), x.to_mkldnn()
            flops = 2.0 * m * n * k
            blas = rate(lambda: F.linear(x, w, b), flops, args.reps)
            converted = rate(lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w_packed, b).to_dense(), flops, args.reps)
            kernel = rate(lambda: torch._C._nn.mkldnn_linear(x_packed, w_packed, b), flops, args.reps)
            diff = (F.linear(x, w, b) - torch._C._nn.mkldnn_linear(x_packed, w_packed, b).to_dense()).abs().max().item()
            print(f"{f'{m} x {k} x {n}':>18}  {blas:>9.0f}  {converted:>14.0f}  {kernel:>13.0f}  {diff:.1e}")


if __name__ == "__main__":
    main()
