"""kd-train's learned weighting policies (a stage's "weighting") and self-distillation (teacher.self_distillation)
from the shipped configs, on tiny Fashion-MNIST data; each run's exit code and what its metrics.jsonl shows:

- fixed weights: every w.<term> is the term's own weight;
- uncertainty: the learned log-variances move, and w.<term> = weight · exp(−s) for the logged s;
- reward: θ moves after an evaluation (and only then), the baseline becomes the first reward;
- min_norm: the weights over the terms' own weights sum to 1;
- layer_similarity: the two feature terms' weights sum to 2 (their mean is 1), KL and CE keep theirs;
- self-distillation: no teacher file, the summary's teacher row is the student's EMA, the KL part is logged.
Misuse is refused before training, exit 2, naming the JSON path and the fix.

usage: weighting.py KD_TRAIN SOURCE_DIR WORK
"""
import json
import math
import os
import shutil
import sys

import kd_cli

kd, source, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
checks = kd_cli.Checks("weighting.py", kd)
run, check, failures = checks.run, checks.check, checks.failures
tiny = ["--threads", "1", "--set", "data.limit=256", "--set", "train.batch_size=64", "--set", "train.log_every=1"]


def steps(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        failures.append(f"{path} was not written")
        return []
    return [e for e in map(json.loads, open(path)) if e["event"] == "step"]


def close(a, b, tol=1e-4):
    return abs(a - b) <= tol * max(1.0, abs(b))


teacher = os.path.join(work, "teacher")
run(["teacher", *tiny, "--set", "teacher.epochs=1", "--out", teacher], 0, "teacher.pt")
own = {"feat0": 1.0, "feat1": 1.0, "kl": 0.8, "ce": 0.2}


def distill(policy, *extra):
    out = os.path.join(work, policy)
    run(["distill", "--config", os.path.join(source, f"configs/fashion_mnist_{policy}.json"), *tiny,
         "--set", f"teacher.path={teacher}/teacher.pt", "--set", "stages.0.steps=6", "--set", "stages.0.eval_every=2",
         *extra, "--out", out], 0, "summary.json")
    return steps(out)


for e in distill("weighting"):
    check(all(close(e["parts"][f"w.{k}"], w) for k, w in own.items()), f"fixed weights: {e['parts']}")

log = distill("uncertainty")
if log:
    last = log[-1]["parts"]
    check(any(abs(last[f"weighting.log_var.{k}"]) > 1e-4 for k in own), f"uncertainty: log-variances did not move: {last}")
    for k, w in own.items():
        s = last[f"weighting.log_var.{k}"]
        check(close(last[f"w.{k}"], w * math.exp(-s)), f"uncertainty: w.{k} {last[f'w.{k}']} != {w}·exp(-{s})")

log = distill("reward")
if len(log) == 6:
    theta = [[e["parts"][f"weighting.theta.{k}"] for k in own] for e in log]
    # Evaluations after steps 2 and 4 (global steps 1 and 3, counted from 0): the first sets the baseline and,
    # with advantage 0, leaves θ; the second moves it. Steps of one action share their weights.
    check(theta[0] == theta[1] == theta[2] == theta[3], f"reward: θ moved before an evaluation with an advantage: {theta}")
    check(theta[4] != theta[3], f"reward: θ did not move after the second evaluation: {theta}")
    # NaN (no reward yet) is written as null.
    check(log[0]["parts"]["weighting.baseline"] is None and log[2]["parts"]["weighting.baseline"] is not None,
          f"reward: the baseline is not the first reward: {[e['parts']['weighting.baseline'] for e in log]}")
    check(log[0]["parts"]["w.kl"] == log[1]["parts"]["w.kl"], "reward: one action's two steps differ in weights")
else:
    failures.append(f"reward: {len(log)} step lines, expected 6")

for e in distill("min_norm"):
    total = sum(e["parts"][f"w.{k}"] / w for k, w in own.items())
    check(close(total, 1.0), f"min_norm: the weights sum to {total}, not 1: {e['parts']}")

for e in distill("layer_similarity"):
    p = e["parts"]
    check(close(p["w.feat0"] + p["w.feat1"], 2.0) and close(p["w.kl"], 0.8) and close(p["w.ce"], 0.2),
          f"layer_similarity: weights {p}")

# Self-distillation: no teacher trained or read; the teacher row is the student's own EMA.
self_out = os.path.join(work, "self")
run(["distill", "--config", os.path.join(source, "configs/fashion_mnist_self_distill.json"), *tiny,
     "--set", "stages.0.steps=6", "--out", self_out], 0, "the student's own EMA", "student EMA (self-distillation teacher)")
check(not os.path.exists(os.path.join(self_out, "teacher.pt")), "self-distillation wrote a teacher.pt")
log = steps(self_out)
check(bool(log) and all("kl" in e["parts"] for e in log), "self-distillation: no KL part in the step lines")
if os.path.exists(os.path.join(self_out, "summary.json")):
    summary = json.load(open(os.path.join(self_out, "summary.json")))
    check(summary["models"][0]["model"].startswith("student EMA") and summary["self_distillation"] is True,
          f"self-distillation summary: {summary['models'][0]}")

bad = os.path.join(work, "bad")
config = lambda name: ["--config", os.path.join(source, f"configs/fashion_mnist_{name}.json")]
with_teacher = ["--set", f"teacher.path={teacher}/teacher.pt"]
for args, needles in [
    ([*config("weighting"), "--set", 'stages.0.weighting={"policy": "uncertanty"}'],
     ["stages[0].weighting.policy", "did you mean 'uncertainty'"]),
    ([*config("uncertainty"), "--set", "stages.0.weighting.lr=0.1"],
     ["stages[0].weighting.lr", "is not a key of the uncertainty policy", "init_log_var"]),
    ([*config("reward"), "--set", "stages.0.eval_every=0"], ["stages[0].weighting.policy", "eval_every"]),
    ([*config("reward"), "--set", "stages.0.weighting.metric=bits_per_byte"],
     ["stages[0].weighting.metric", "accuracy, macro_f1"]),
    ([*config("min_norm"), "--set", 'stages.0.weighting.shared=["^nothing"]'], ["weighting.shared", "matches none"]),
    ([*config("layer_similarity"), "--set",
      'stages.0.losses=[{"type": "temperature_kl", "name": "kl"}, {"type": "hard_label_ce", "name": "ce"}]'],
     ["stages[0].weighting.policy", "add a feature_l2 term"]),
    ([*config("layer_similarity"), "--set", 'stages.0.weighting.layers={"attn": [0, 0]}'],
     ["stages[0].weighting.layers.attn", "is not a term of the stage"]),
    ([*config("self_distill"), "--set", "train.ema_decay=0"], ["teacher.self_distillation", "train.ema_decay"]),
    ([*config("self_distill"), "--set", "teacher.cache.enabled=true"], ["teacher.cache.enabled", "set it false"]),
    ([*config("self_distill"), *with_teacher], ["teacher.path", "remove one of the two"]),
]:
    out = run(["distill", *args, *tiny, *([] if "self_distill" in args[1] else with_teacher), "--out", bad], 2, *needles)
    check(not os.path.exists(os.path.join(bad, "metrics.jsonl")), f"a refused run wrote metrics: {args}")
run(["teacher", *config("self_distill"), *tiny, "--out", bad], 2, "no teacher to train")

checks.finish()
