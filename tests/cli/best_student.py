"""OUT/student.best.pt: the student of the best validation score, picked as the metrics log says.

1. A tiny run evaluating every 2 steps: summary.json's "best" names the step and stage of the highest
   validation accuracy among the eval events of metrics.jsonl (ties: the first), and student.best.pt loads with
   `kd-train eval`.
2. evaluation.best_metric = "macro_f1" picks by macro-F1; a name the task does not report is refused (exit 2)
   before anything trains.
3. --resume of the finished run keeps the same best.

usage: best_student.py KD_TRAIN OUT_DIR
"""
import json
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)


def args(folder, *extra):
    return [kd_train, "distill", "--out", folder, "--threads", "1", "--set", "data.limit=512", "--set",
            "teacher.epochs=1", "--set", "stages.0.steps=4", "--set", "stages.1.steps=4", "--set", "stages.2.steps=12",
            "--set", "train.batch_size=32"] + [f"--set=stages.{i}.eval_every=2" for i in range(3)] + list(extra)


def best_from_log(folder, metric):
    best = None
    for line in open(os.path.join(folder, "metrics.jsonl")):
        e = json.loads(line)
        if e["event"] == "eval" and (best is None or e["metrics"][metric] > best[0]):
            best = (e["metrics"][metric], e["global_step"], e["stage"])
    return best


for metric, folder in (("accuracy", os.path.join(out, "acc")), ("macro_f1", os.path.join(out, "f1"))):
    extra = [] if metric == "accuracy" else ["--set", 'evaluation.best_metric="macro_f1"']
    run = subprocess.run(args(folder, *extra), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.load(open(os.path.join(folder, "summary.json")))
    value, step, stage = best_from_log(folder, metric)
    best = summary["best"]
    assert (best["metric"], best["global_step"], best["stage"]) == (metric, step, stage), (best, value, step, stage)
    assert abs(best["value"] - value) < 1e-12, (best, value)
    assert f"best validation" in run.stdout and "student.best.pt" in run.stdout, run.stdout
    scored = subprocess.run([kd_train, "eval", "--out", folder, "--set", "data.limit=512", "--model",
                             os.path.join(folder, "student.best.pt")], capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    print(f"ok: best by {metric}: {value:.4f} at step {step} ({stage}), student.best.pt loads")
    if metric == "accuracy":
        again = subprocess.run(args(folder, "--resume"), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.load(open(os.path.join(folder, "summary.json")))["best"] == best
        print("ok: --resume of the finished run keeps the best")

bad = subprocess.run(args(os.path.join(out, "bad"), "--set", 'evaluation.best_metric="bits_per_byte"'),
                     capture_output=True, text=True, timeout=120)
assert bad.returncode == 2, bad.stdout + bad.stderr
assert ("'evaluation.best_metric' = \"bits_per_byte\" is not a validation score of task 'fashion_mnist'; it reports: "
        "accuracy, macro_f1") in bad.stderr, bad.stderr
assert not os.path.exists(os.path.join(out, "bad", "teacher.pt")), "trained before refusing"
print("ok: an unknown best_metric is refused before training")
