#!/usr/bin/env python3
"""Samples/s of kd-train distill with 1 process vs --nproc N ranks on this machine, and the share of
each step the ranks spend in collectives (gradient buckets, loss parts, buffers, the stop flag).

Both sides run the same stages for the same steps over the same data and teacher; 1 process gets
every core (--threads C), the N ranks C/N threads each (kd-train's default). Rounds alternate the
two so that drifting machine load hits both. Figures come from rank 0's metrics.jsonl: per step,
samples_per_s (the whole global batch over rank 0's step time) and communication_s. The first
`--skip` steps of each stage are left out (allocator and thread-pool warm-up).

usage: bench/dp_scaling.py KD_TRAIN TEACHER_PT OUT_DIR [--nproc 2] [--steps 60] [--rounds 2] [--skip 5]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess

p = argparse.ArgumentParser()
p.add_argument("kd_train")
p.add_argument("teacher")
p.add_argument("out")
p.add_argument("--nproc", type=int, default=2)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--skip", type=int, default=5)
a = p.parse_args()
cores = os.cpu_count()


def run(ranks, round_):
    out = os.path.join(a.out, f"r{round_}-n{ranks}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [a.kd_train, "distill", "--out", out, "--set", f"teacher.path={json.dumps(os.path.abspath(a.teacher))}",
           "--set", "train.checkpoint_every=0", "--set", "train.log_every=1000"]
    cmd += sum((["--set", f"stages.{i}.steps={a.steps}"] for i in range(3)), [])
    cmd += ["--nproc", str(ranks)] if ranks > 1 else ["--threads", str(cores)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage, seen, rows = None, 0, []
    for line in open(os.path.join(out, "metrics.jsonl")):
        e = json.loads(line)
        if e["event"] == "stage_begin":
            stage, seen = e["stage"], 0
        elif e["event"] == "step":
            seen += 1
            if seen > a.skip:
                rows.append((stage, e["samples_per_s"], e["communication_s"]))
    batch = json.load(open(os.path.join(out, "config.json")))["train"]["batch_size"]
    shutil.rmtree(out)  # only the figures are kept
    return cmd, rows, batch


results = {1: [], a.nproc: []}
commands = {}
for r in range(a.rounds):
    for ranks in (1, a.nproc):
        commands[ranks], rows, batch = run(ranks, r)
        results[ranks] += rows

print(f"{cores} cores; {a.steps} steps per stage, first {a.skip} of each left out, {a.rounds} rounds")
print(f"{'stage':<10} {'1 process':>14} {f'{a.nproc} ranks':>14} {'ratio':>7} {'comm share':>11}")
summary = {}
for stage in dict.fromkeys(s for s, _, _ in results[1]):
    one = statistics.median(v for s, v, _ in results[1] if s == stage)
    many_rows = [(v, c) for s, v, c in results[a.nproc] if s == stage]
    many = statistics.median(v for v, _ in many_rows)
    # A step's time is batch / samples_per_s (every kept step is a full batch of train.batch_size).
    share = sum(c for _, c in many_rows) / sum(batch / v for v, _ in many_rows)
    summary[stage] = {"one_process_samples_per_s": one, "ranks_samples_per_s": many, "ratio": many / one,
                      "communication_share": share}
    print(f"{stage:<10} {one:>12.0f}/s {many:>12.0f}/s {many / one:>6.2f}x {100 * share:>10.1f}%")
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "dp_scaling.json"), "w") as f:
    json.dump({"nproc": a.nproc, "cores": cores, "steps": a.steps, "rounds": a.rounds, "skip": a.skip,
               "stages": summary, "commands": {str(k): v for k, v in commands.items()}}, f, indent=2)
