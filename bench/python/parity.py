#!/usr/bin/python3
"""kd-bench and its plain-PyTorch twin compute the same loss on the same weights and data.

    /usr/bin/python3 bench/python/parity.py KD_BENCH [--workloads w1,w1:cached,w2,w3] [--rtol 1e-4]

Both sides seed torch's generator with 0 and draw the weights and the synthetic data in the same
order (the twins build their modules in kdistill's registration order and with its initialisers),
so after one warm-up step (a forward, a backward and an AdamW update) the next step's loss must
agree to rounding. One thread on both sides; exit status 1 on a mismatch.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def loss(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])["loss"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kd_bench")
    ap.add_argument("--workloads", default="w1,w1:cached,w2,w3")
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()
    failed = False
    for spec in args.workloads.split(","):
        w, _, mode = spec.partition(":")
        common = ["--workload", w, "--mode", mode or "online", "--steps", "1", "--warmup", "1", "--threads", "1",
                  "--pool", "2"]
        cpp = loss([args.kd_bench] + common)
        py = loss(["/usr/bin/python3", os.path.join(HERE, "kd_bench.py")] + common)
        ok = abs(cpp - py) <= args.rtol * max(abs(cpp), abs(py), 1e-12)
        failed |= not ok
        print(f"{spec:10s} C++ {cpp:.8f}  Python {py:.8f}  {'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
