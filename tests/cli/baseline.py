"""kd-train distill --baseline, tiny: the student alone trains with the distilled run's stages, steps,
learning-rate schedule and seed on hard labels only, and the gain reported is the difference of the
two students' test scores as their own summaries give them.

usage: baseline.py KD_TRAIN OUT_DIR
"""
import json
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
tiny = ["--threads", "1", "--set", "data.limit=512", "--set", "teacher.epochs=1", "--set", "stages.0.steps=2",
        "--set", "stages.1.steps=2", "--set", "stages.2.steps=3", "--set", "train.batch_size=64",
        "--set", "train.warmup_steps=1", "--seed", "3", "--set", "evaluation.fgsm_epsilon=0.1"]
run = subprocess.run([kd_train, "distill", "--baseline", "--out", out] + tiny, capture_output=True, text=True)
log = run.stdout + run.stderr
assert run.returncode == 0, log

summary = json.load(open(os.path.join(out, "summary.json")))
alone = json.load(open(os.path.join(out, "baseline", "summary.json")))
distilled_row, alone_row = summary["models"][1], alone["models"][1]
for score in ("accuracy", "macro_f1"):
    expected = distilled_row["test_" + score] - alone_row["test_" + score]
    assert abs(summary["distillation_gain"][score] - expected) < 1e-12, (score, summary["distillation_gain"], expected)
assert summary["baseline"]["model"]["test_accuracy"] == alone_row["test_accuracy"], summary["baseline"]
# Both students were scored against the same teacher, the one the distilled run trained.
assert summary["models"][0] == alone["models"][0], (summary["models"][0], alone["models"][0])

# Every classifier row has its calibration error and, with evaluation.fgsm_epsilon, its accuracy under FGSM.
for row in summary["models"][:2] + [summary["baseline"]["model"]]:
    assert 0 <= row["test_ece"] <= 1, row
    assert row["fgsm_epsilon"] == 0.1 and 0 <= row["test_fgsm_accuracy"] <= 1, row
assert summary["models"][0]["test_fgsm_accuracy"] < summary["models"][0]["test_accuracy"], summary["models"][0]
assert "accuracy under FGSM (ε 0.1)" in run.stdout and "ECE " in run.stdout, run.stdout

# The baseline's config: the same stages with hard labels only, everything else equal.
config = json.load(open(os.path.join(out, "config.json")))
base_config = json.load(open(os.path.join(out, "baseline", "config.json")))
assert base_config["train"]["seed"] == 3 and base_config["train"] == config["train"], (base_config["train"], config["train"])
assert len(base_config["stages"]) == len(config["stages"]) == 3
for s, b in zip(config["stages"], base_config["stages"]):
    assert [l["type"] for l in b["losses"]] == ["hard_label_ce"], b
    assert {k: v for k, v in s.items() if k != "losses"} == {k: v for k, v in b.items() if k != "losses"}, (s, b)


def steps(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f if line.strip()]
    return [e for e in events if e.get("event") == "step"]


# The same steps and learning rates, step by step; the baseline's loss is cross-entropy alone.
d, b = steps(out), steps(os.path.join(out, "baseline"))
assert [e["global_step"] for e in d] == [e["global_step"] for e in b] == list(range(7)), (d, b)
assert [e["lr"] for e in d] == [e["lr"] for e in b], ([e["lr"] for e in d], [e["lr"] for e in b])
assert all(set(k for k in e["parts"] if "." not in k) == {"ce"} for e in b), b[0]["parts"]
assert any("feat" in e["parts"] for e in d), d[0]["parts"]

# The report says it, on stdout.
assert "distillation against the same student alone (same steps, schedule and seed): accuracy " in run.stdout, run.stdout
assert "DepthwiseCnnStudent alone (baseline)" in run.stdout, run.stdout

# A user training that config alone gets the same student: the baseline is an ordinary run.
again = os.path.join(out, "again")
run2 = subprocess.run([kd_train, "distill", "--config", os.path.join(out, "baseline", "config.json"), "--out", again],
                      capture_output=True, text=True)
assert run2.returncode == 0, run2.stdout + run2.stderr
again_row = json.load(open(os.path.join(again, "summary.json")))["models"][1]
assert again_row["test_accuracy"] == alone_row["test_accuracy"], (again_row, alone_row)

# --resume of the finished run (baseline included) trains nothing more and keeps the gain.
run3 = subprocess.run([kd_train, "distill", "--baseline", "--resume", "--out", out] + tiny, capture_output=True, text=True)
assert run3.returncode == 0, run3.stdout + run3.stderr
resumed = json.load(open(os.path.join(out, "summary.json")))
assert resumed["distillation_gain"] == summary["distillation_gain"], (resumed["distillation_gain"], summary["distillation_gain"])
print(f"ok: gain {summary['distillation_gain']}")
