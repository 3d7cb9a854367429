"""The results table of docs/RESULTS.md: every model of every task, trained by kd-train from the shipped configs
over several seeds, then mean ± std of each figure, written as Markdown (into docs/RESULTS.md between the
results-table markers), JSON, and PNG training curves rendered from the runs' metrics.jsonl.

usage: python3 bench/results_table.py [--kd-train build/src/cli/kd-train] [--runs runs/table]
           [--archive bench/results/table/runs] [--results bench/results/table] [--seeds 0 1 2]
           [--tasks TASK ...] [--threads 2] [--readme docs/RESULTS.md] [--table-only] [--extras] [--only RUN ...]
           (--tasks: fashion_mnist fashion_mnist_long fashion_mnist_24 fashion_mnist_r1 spam byte_lm, ...; all by default)

For each task and seed the teacher is trained once (`kd-train teacher --seed S`), then each student
variant is distilled from that teacher (`kd-train distill --config ... --set teacher.path=...`).
A run whose summary.json (teacher: teacher.pt) exists is not run again, so the script can be
stopped and started again; --table-only only rebuilds the table and the charts from the runs there.

Runs folders do not outlive the machine they were made on, so what the table needs of each finished run
(summary.json, file sizes, the teacher's time, the metrics the curves read, gzipped) is
copied into the archive folder, which is committed; a run missing from --runs is read from there. The seeds
of one task can so be trained on different machines; their floating-point results differ in the last
digits (the same seed's teacher: 93.61 % on one machine, 93.73 % on another), so each seed is a draw, not
a repeat. Only the sections of the tasks in --tasks are rewritten in the page (each sits between its own
markers); the others stay.
The curves need matplotlib (Debian: python3-matplotlib, installed by scripts/setup): run the script
with /usr/bin/python3.
"""
import argparse
import gzip
import json
import os
import shlex
import statistics
import subprocess
import sys
import textwrap
import time

# (label, config files, extra --set overrides). Every student of a task trains for the same number
# of epochs (or steps); the configs say how they spend them. Labels in EXTRAS (CutMix, adversarial
# examples, pruning, linear attention, TokenMix) are run and shown only with --extras.
FGSM_EVAL = "evaluation.fgsm_epsilon=0.05"  # test accuracy under a one-step FGSM attack of this L∞ size
VARIANTS = {
    "fashion_mnist": [
        ("student alone (hard labels)", ["configs/fashion_mnist_alone.json"], []),
        ("distilled: plain KL", ["configs/fashion_mnist_kl.json"], []),
        ("distilled: three-phase", ["configs/fashion_mnist_three_phase.json"], []),
        ("distilled: R1 gradient matching", ["configs/r1_gradient.json"], []),
        ("distilled: three-phase + int8 QAT", ["configs/fashion_mnist_qat.json"], []),
        ("distilled: three-phase + CutMix", ["configs/fashion_mnist_cutmix.json"], []),
        ("distilled: three-phase + FGSM examples (ε 0.05, half of each batch)", ["configs/fashion_mnist_adversarial.json"], []),
        ("distilled: three-phase, 50 % of weights pruned", ["configs/fashion_mnist_pruned.json"], []),
    ],
    # The longer Fashion-MNIST recipe: an 8-epoch teacher, 12 student epochs at lr 0.003 (docs/RESULTS.md, "Towards the
    # Fashion-MNIST targets"); its configs train that teacher themselves when run alone.
    "fashion_mnist_long": [
        ("student alone (hard labels)", ["configs/fashion_mnist_long_alone.json"], []),
        ("distilled: plain KL", ["configs/fashion_mnist_long_kl.json"], []),
    ],
    # The same configs and teachers with twice the student epochs (24): does the gain grow with the budget?
    "fashion_mnist_24": [
        ("student alone (hard labels)", ["configs/fashion_mnist_long_alone.json"], ["stages.0.epochs=24"]),
        # Alone, 24 epochs overfit (validation accuracy stops rising at about half way): its 12-epoch score too.
        ("student alone, 12 epochs (hard labels)", ["configs/fashion_mnist_long_alone.json"], []),
        ("distilled: plain KL", ["configs/fashion_mnist_long_kl.json"], ["stages.0.epochs=24"]),
    ],
    # The extras scored for what they are for, with the default recipe's teachers: each distilled row with
    # --baseline (the same student alone with the same stages, schedule and extras: FGSM examples, CutMix,
    # pruning to the same sparsity), every student scored under an FGSM attack (ε 0.05) and for calibration.
    # Plain KL's baseline is the student alone of the table above.
    "fashion_mnist_extras": [
        ("distilled: plain KL", ["configs/fashion_mnist_kl.json"], [FGSM_EVAL]),
        ("distilled: three-phase + FGSM examples (ε 0.05, half of each batch)", ["configs/fashion_mnist_adversarial.json"],
         [FGSM_EVAL]),
        ("distilled: three-phase + CutMix", ["configs/fashion_mnist_cutmix.json"], [FGSM_EVAL]),
        ("distilled: three-phase, 50 % of weights pruned", ["configs/fashion_mnist_pruned.json"], [FGSM_EVAL]),
    ],
    # The three-phase recipe mended (docs/RESULTS.md, "Towards a three-phase recipe that pays"): hard labels in every
    # phase, so the classifier trains from the first step, and attention maps compared by row sums, so the attention
    # term matters; each run against its own --baseline (the same student alone with the same three stages).
    "fashion_mnist_three_phase": [
        ("distilled: three-phase, hard labels in every phase, row-sum attention",
         ["configs/fashion_mnist.json", "bench/trials/three_phase_ce_4ep.json"], []),
    ],
    # Spam where the teacher knows more than the student can learn alone: the student has the labels of 10 % of the
    # training mails, the teacher trained on all of them; its --baseline is the student alone with those 10 %.
    "spam_few_labels": [
        ("distilled: three-phase, the student with 10 % of the labels", ["configs/spam_few_labels.json"], []),
    ],
    # R1 with the scale-free cosine distance between input gradients, beside plain KL and the student alone, all
    # 4 epochs from the default section's teacher recipe: does a gradient term that weighs in change the student?
    "fashion_mnist_r1": [
        ("student alone (hard labels)", ["configs/fashion_mnist_alone.json"], []),
        ("distilled: plain KL", ["configs/fashion_mnist_kl.json"], []),
        ("distilled: R1 gradient matching, cosine distance", ["configs/r1_gradient_cosine.json"], []),
    ],
    # The learned weighting policies against the same terms at fixed weights (two feature pairs, KL, CE), 2 student
    # epochs each, one seed: what a stage's "weighting" changes (configs/fashion_mnist_<policy>.json).
    "fashion_mnist_weighting": [
        ("student alone (hard labels)", ["configs/fashion_mnist_alone.json"], ["stages.0.epochs=2"]),
        ("distilled: fixed weights", ["configs/fashion_mnist_weighting.json"], ["stages.0.epochs=2"]),
        ("distilled: uncertainty weighting", ["configs/fashion_mnist_uncertainty.json"], ["stages.0.epochs=2"]),
        ("distilled: reward weighting (REINFORCE on validation accuracy)", ["configs/fashion_mnist_reward.json"],
         ["stages.0.epochs=2"]),
        ("distilled: min-norm weighting (MGDA)", ["configs/fashion_mnist_min_norm.json"], ["stages.0.epochs=2"]),
        ("distilled: layer-similarity weighting", ["configs/fashion_mnist_layer_similarity.json"], ["stages.0.epochs=2"]),
    ],
    "spam": [
        ("student alone (hard labels)", ["configs/spam_transformer.json", "configs/spam_alone.json"], []),
        ("distilled: three-phase", ["configs/spam_transformer.json"], []),
        ("distilled: three-phase, linear-attention student", ["configs/spam_linear_attention.json"], []),
        ("distilled: three-phase + TokenMix", ["configs/spam_token_mix.json"], []),
        ("distilled: three-phase, half of the fc1 channels pruned", ["configs/spam_pruned.json"], []),
    ],
    "byte_lm": [
        ("student alone (next-byte CE)", ["configs/byte_lm.json", "configs/byte_lm_alone.json"], []),
        ("distilled: per-token KL + CE", ["configs/byte_lm.json"], []),
    ],
}
EXTRAS = {"distilled: three-phase + CutMix", "distilled: three-phase + FGSM examples (ε 0.05, half of each batch)",
          "distilled: three-phase, 50 % of weights pruned", "distilled: three-phase, linear-attention student",
          "distilled: three-phase + TokenMix", "distilled: three-phase, half of the fc1 channels pruned"}
TEACHER_CONFIG = {"fashion_mnist": "configs/fashion_mnist.json", "fashion_mnist_r1": "configs/fashion_mnist.json",
                  "fashion_mnist_weighting": "configs/fashion_mnist.json", "fashion_mnist_extras": "configs/fashion_mnist.json",
                  "fashion_mnist_three_phase": "configs/fashion_mnist.json", "spam_few_labels": "configs/spam_transformer.json",
                  "fashion_mnist_long": "configs/fashion_mnist_long_kl.json",
                  "fashion_mnist_24": "configs/fashion_mnist_long_kl.json", "spam": "configs/spam_transformer.json",
                  "byte_lm": "configs/byte_lm.json"}
TITLES = {"fashion_mnist": "Fashion-MNIST (10 000 test images)",
          "fashion_mnist_long": "Fashion-MNIST, longer recipe: 8-epoch teacher, 12 student epochs at lr 0.003",
          "fashion_mnist_24": "Fashion-MNIST, 24 student epochs: the longer recipe's configs, 8-epoch teacher, lr 0.003",
          "fashion_mnist_extras": "Fashion-MNIST extras scored for their purpose: robustness to FGSM, calibration, "
                                  "pruning against the student alone pruned alike",
          "fashion_mnist_three_phase": "Fashion-MNIST, the three-phase recipe with hard labels in every phase and "
                                       "row-sum attention (4 student epochs: 1 + 1 + 2)",
          "spam_few_labels": "SpamAssassin spam/ham, the student with the labels of 10 % of the training mails",
          "fashion_mnist_weighting": "Fashion-MNIST, a stage's terms (feature pairs 0 and 1, KL, CE) weighed by each "
                                     "policy against their fixed weights (2 student epochs, the default section's teacher "
                                     "recipe)",
          "fashion_mnist_r1": "Fashion-MNIST, R1 with the cosine distance between input gradients against plain KL "
                              "(4 student epochs, the default section's teacher recipe)",
          "spam": "SpamAssassin spam/ham (1 209 test mails)",
          "byte_lm": "SpamAssassin byte LM (512 held-out test windows of 128 bytes)"}
# The distilled student each task's targets are scored on, and whose loss parts the curves show.
RECIPE = {"fashion_mnist": "distilled: three-phase", "fashion_mnist_long": "distilled: plain KL",
          "fashion_mnist_24": "distilled: plain KL", "fashion_mnist_extras": "distilled: plain KL",
          "spam": "distilled: three-phase", "byte_lm": "distilled: per-token KL + CE",
          "fashion_mnist_three_phase": "distilled: three-phase, hard labels in every phase, row-sum attention",
          "spam_few_labels": "distilled: three-phase, the student with 10 % of the labels",
          "fashion_mnist_r1": "distilled: R1 gradient matching, cosine distance",
          "fashion_mnist_weighting": "distilled: fixed weights"}
# Sections whose distilled rows are shown with their own --baseline beside them (no student-alone row of their own).
OWN_BASELINE_ROWS = {"fashion_mnist_three_phase", "spam_few_labels"}
# Sections whose distilled rows run without --baseline: their student-alone row has the same stages' length and
# schedule, so each gain is paired with it per seed (a baseline per row would train that same student again).
PAIRED_ROWS = {"fashion_mnist_r1", "fashion_mnist_weighting"}
# Validation evaluations per stage for the curves (steps between them), on top of each stage's end.
EVAL_EVERY = {"fashion_mnist": 215, "fashion_mnist_extras": 215, "fashion_mnist_long": 215, "fashion_mnist_24": 215,
              "fashion_mnist_three_phase": 215, "fashion_mnist_r1": 215,
              "fashion_mnist_weighting": 100, "spam": 66, "spam_few_labels": 66, "byte_lm": 250}


def slug(label):
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in label.split(":", 1)[-1].strip().lower()).strip("_")


def is_loss_part(name):
    """A loss part the curves plot: "kl", "ce"; not a weight ("w.kl") or an option ("kl.temperature")."""
    return "." not in name


def thin_step(e):
    """What the curves read of a step event: its step, the loss and the loss parts (not weights or options:
    "w.kl", "kl.temperature"), to 5 significant digits. A 24-epoch KL run's 3.9 MB metrics.jsonl is 142 KB
    archived (gzip alone: 806 KB)."""
    parts = {k: float(f"{v:.5g}") for k, v in e["parts"].items() if is_loss_part(k)}
    return {"event": "step", "global_step": e["global_step"], "loss": float(f"{e['loss']:.5g}"), "parts": parts}


def run_dir(root, task, seed, name):
    return os.path.join(root, task, f"seed{seed}", name)


def archive_runs(a, task):
    """Copies what the table reads of every finished run of the task in --runs into --archive."""
    if not a.archive:
        return
    for seed in a.seeds:
        record = live_teacher_record(a, task, seed)
        if record:
            write_json(os.path.join(run_dir(a.archive, task, seed, "teacher"), "teacher.json"), record)
        for label, _, _ in variants(a, task):
            out = run_dir(a.runs, task, seed, slug(label))
            if not os.path.exists(os.path.join(out, "summary.json")):
                continue
            dest = run_dir(a.archive, task, seed, slug(label))
            with open(os.path.join(out, "summary.json")) as f:
                write_json(os.path.join(dest, "summary.json"), json.load(f))
            write_json(os.path.join(dest, "files.json"), file_sizes(out))
            events = read_metrics(os.path.join(out, "metrics.jsonl"))
            thin = [thin_step(e) if e["event"] == "step" else e for e in events]
            text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in thin)
            with open(os.path.join(dest, "metrics.jsonl.gz"), "wb") as f:
                f.write(gzip.compress(text.encode(), mtime=0))  # mtime 0: the same run gives the same bytes


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def find_run(a, task, seed, name):
    """The folder holding the run's results: --runs where it finished there, else the archive, else None."""
    for root in (a.runs, a.archive):
        if root and os.path.exists(os.path.join(run_dir(root, task, seed, name), "summary.json")):
            return run_dir(root, task, seed, name)
    return None


def live_teacher_record(a, task, seed):
    """{"teacher_seconds", "bytes": {"teacher.pt"}} of the seed's teacher in --runs, or None."""
    tdir = run_dir(a.runs, task, seed, "teacher")
    if not (os.path.exists(os.path.join(tdir, "seconds.json")) and os.path.exists(os.path.join(tdir, "teacher.pt"))):
        return None
    with open(os.path.join(tdir, "seconds.json")) as f:
        record = json.load(f)
    record["bytes"] = {"teacher.pt": os.path.getsize(os.path.join(tdir, "teacher.pt"))}
    return record


def teacher_record(a, task, seed):
    """The seed's teacher record from --runs, else from the archive, else None."""
    record = live_teacher_record(a, task, seed)
    path = os.path.join(run_dir(a.archive, task, seed, "teacher"), "teacher.json") if a.archive else ""
    if record is None and path and os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
    return record


def file_sizes(folder):
    """Sizes of the files a run ships: measured in a runs folder, recorded in files.json in the archive."""
    if os.path.exists(os.path.join(folder, "files.json")):
        with open(os.path.join(folder, "files.json")) as f:
            return json.load(f)
    return {n: os.path.getsize(os.path.join(folder, n)) for n in ("student.pt", "student.int8.pt")
            if os.path.exists(os.path.join(folder, n))}


def metrics_path(folder):
    """metrics.jsonl in a runs folder, its thinned gzipped copy in the archive."""
    plain = os.path.join(folder, "metrics.jsonl")
    return plain if os.path.exists(plain) else plain + ".gz"


def run(cmd, log):
    print("+", " ".join(shlex.quote(c) for c in cmd), ">", log, flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"failed ({rc}): see {log}")
    return time.time() - t0


DEFAULT_STAGES = {"fashion_mnist": 3, "fashion_mnist_extras": 3, "fashion_mnist_long": 3, "fashion_mnist_24": 3,
                  "fashion_mnist_three_phase": 3, "fashion_mnist_r1": 1,
                  "fashion_mnist_weighting": 1, "spam": 3, "spam_few_labels": 3, "byte_lm": 1}  # the tasks' default recipes (kd-train list)


def stage_count(task, configs):
    n = DEFAULT_STAGES[task]
    for c in configs:
        with open(c) as f:
            j = json.load(f)
        if "stages" in j:
            n = len(j["stages"])
    return n


def variants(a, task):
    return [v for v in VARIANTS[task] if a.extras or task == "fashion_mnist_extras" or v[0] not in EXTRAS]


def train_all(a):
    for task in a.tasks:
        for seed in a.seeds:
            base = os.path.join(a.runs, task, f"seed{seed}")
            # Runs that finished here or on an earlier machine (the archive) are not trained again.
            pending = [v for v in variants(a, task) if not find_run(a, task, seed, slug(v[0])) and
                       not (a.only and slug(v[0]) not in a.only)]
            if not pending:
                continue
            tdir = os.path.join(base, "teacher")
            os.makedirs(tdir, exist_ok=True)
            common = ["--seed", str(seed), "--threads", str(a.threads)]
            if not os.path.exists(os.path.join(tdir, "teacher.pt")):
                seconds = run([a.kd_train, "teacher", "--config", TEACHER_CONFIG[task], "--out", tdir] + common,
                              os.path.join(tdir, "log.txt"))
                with open(os.path.join(tdir, "seconds.json"), "w") as f:
                    json.dump({"teacher_seconds": seconds}, f)
            for label, configs, sets in pending:
                out = os.path.join(base, slug(label))
                if os.path.isdir(out) and any(n != "log.txt" for n in os.listdir(out)):
                    # Checkpoints without a summary: another process is training it, or it was cut off. Opening
                    # its log here would truncate it, and kd-train would refuse the folder anyway.
                    print(f"skipped {out}: it holds a run that has not finished (training in another process, or "
                          f"interrupted: continue it with kd-train distill --resume --out {out}, or delete the folder)",
                          flush=True)
                    continue
                cmd = [a.kd_train, "distill", "--out", out] + common
                if not label.startswith("student alone") and task not in PAIRED_ROWS:
                    cmd.append("--baseline")  # its own student alone: the same stages, steps, schedule and seed
                for c in configs:
                    cmd += ["--config", c]
                cmd += ["--set", "teacher.path=" + json.dumps(os.path.join(tdir, "teacher.pt"))]
                for i in range(stage_count(task, configs)):
                    cmd += ["--set", f"stages.{i}.eval_every={EVAL_EVERY[task]}"]
                for s in sets:
                    cmd += ["--set", s]
                os.makedirs(out, exist_ok=True)
                run(cmd, os.path.join(out, "log.txt"))
                archive_runs(a, task)


def mean_std(values, scale=1.0, digits=2, sign=""):
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"  # one seed: no spread to show
    return f"{statistics.mean(values):{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def collect(a, task):
    """Rows of {label, params, bytes on disk, scores: {score: [per seed]}, seconds: [per seed], seeds: [seeds run]}.
    A seed whose run has not finished (no summary.json) is left out of that row, which names the seeds it has."""
    rows = []
    lm = task == "byte_lm"
    scores = ["bits_per_byte"] if lm else ["accuracy", "macro_f1"]
    empty = lambda label: {"label": label, "params": None, "zeros": None, "bytes": None,
                           "scores": {s: [] for s in scores}, "seconds": [], "seeds": [], "gain": {s: [] for s in scores}}
    teacher = empty(None)
    for seed in a.seeds:
        # Every distillation of the seed scores the same teacher; take the first that finished.
        folder = next((f for f in (find_run(a, task, seed, slug(v[0])) for v in variants(a, task)) if f), None)
        record = teacher_record(a, task, seed)
        if folder is None or record is None:
            continue
        with open(os.path.join(folder, "summary.json")) as f:
            row = json.load(f)["models"][0]
        teacher["label"] = f"teacher {row['model']}"
        teacher["params"] = row["parameters"]
        teacher["bytes"] = record["bytes"]["teacher.pt"]
        for s in scores:
            teacher["scores"][s].append(row["test_" + s])
        teacher["seconds"].append(record["teacher_seconds"])
        teacher["seeds"].append(seed)
        teacher.setdefault("student", []).append(row)
    teacher["label"] = teacher["label"] or "teacher"
    rows.append(teacher)
    for label, _, _ in variants(a, task):
        r = empty(label)
        for seed in a.seeds:
            folder = find_run(a, task, seed, slug(label))
            if folder is None:
                continue
            with open(os.path.join(folder, "summary.json")) as f:
                summary = json.load(f)
            # The deliverable: the int8 file where QAT wrote one, else the float student.
            models = summary["models"]
            student = next((m for m in models if m["model"].endswith("(int8 file)")), models[1])
            r["params"] = student["parameters"]
            if "pruning" in summary:  # pruned weights are zeros in the file; compaction (export --compact) removes them
                r["zeros"] = summary["pruning"]["zero_parameters"]
            sizes = file_sizes(folder)
            r["bytes"] = sizes.get("student.int8.pt", sizes["student.pt"])
            if "student.int8.pt" in sizes:
                r["label"] = label + " (int8 file)"
            for s in scores:
                r["scores"][s].append(student["test_" + s])
                # kd-train --baseline: this seed's student alone with the same stages, steps and schedule.
                if s in summary.get("distillation_gain", {}):
                    r["gain"][s].append(summary["distillation_gain"][s])
            r["seconds"].append(summary["student_seconds"])
            r["seeds"].append(seed)
            if "baseline" in summary:  # its own student alone, with the same extras (FGSM examples, CutMix, pruning)
                r.setdefault("alone", []).append(summary["baseline"]["model"])
            r.setdefault("student", []).append(student)
        rows.append(r)
    pair_with_alone_row(rows, scores)
    return rows, scores


def pair_with_alone_row(rows, scores):
    """Gains of the rows trained without --baseline: distilled minus the task's first student-alone row (the
    one with the same budget, by the order of VARIANTS) of the same seed, marked "paired" on the row."""
    alone = next((r for r in rows[1:] if r["label"].startswith("student alone") and r["seeds"]), None)
    if alone is None:
        return
    for r in rows[1:]:
        if r is alone or r["label"].startswith("student alone") or not r["seeds"]:
            continue
        if all(len(r["gain"][s]) == len(r["seeds"]) for s in scores) or not set(r["seeds"]) <= set(alone["seeds"]):
            continue
        at = {seed: i for i, seed in enumerate(alone["seeds"])}
        r["gain"] = {s: [v - alone["scores"][s][at[seed]] for v, seed in zip(r["scores"][s], r["seeds"])]
                     for s in scores}
        r["paired"] = True


def purpose_markdown(a, task, rows):
    """The extras section: each row beside its own student alone with the same extras (kd-train --baseline), scored
    for accuracy, accuracy under FGSM and expected calibration error."""
    def cell(models, key, scale=100, digits=2):
        values = [m[key] for m in models if key in m]
        return mean_std(values, scale, digits) if models and len(values) == len(models) else "–"

    eps = FGSM_EVAL.split("=")[1]
    lines = [f"**{TITLES[task]}** — mean ± std over the seeds each row names (of {', '.join(map(str, a.seeds))}); "
             "“alone” is each run's `--baseline`: the same student on hard labels with the same stages, schedule, "
             "seed and extras (FGSM examples, CutMix, pruning to the same sparsity)", "",
             f"| model | test accuracy %: model / alone | gain over alone | accuracy under FGSM (ε {eps}) %: model / "
             "alone | calibration error (ECE, 15 bins): model / alone | seeds |", "|---|---|---|---|---|---|"]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['label']} | | | | | not run yet |")
            continue
        own, alone = r.get("student", []), r.get("alone", [])
        pair = lambda key, scale=100, digits=2: cell(own, key, scale, digits) + (
            f" / {cell(alone, key, scale, digits)}" if alone else "")
        gains = r["gain"]["accuracy"]
        gain = mean_std(gains, 100, 2, "+") if gains and len(gains) == len(r["seeds"]) else "–"
        lines.append(f"| {r['label']} | {pair('test_accuracy')} | {gain} | {pair('test_fgsm_accuracy')} | "
                     f"{pair('test_ece', 1, 4)} | {', '.join(map(str, r['seeds']))} |")
    return lines + [""]


def markdown(a, task, rows, scores):
    if task == "fashion_mnist_extras":
        return purpose_markdown(a, task, rows)
    lm = task == "byte_lm"
    head = "| model | parameters | bytes on disk | " + (
        "test bits per byte ↓ |" if lm else "test accuracy % | test macro-F1 % |") + (
        " gain over its student alone |") + " training time (s) | seeds |"
    lines = [f"**{TITLES[task]}** — mean ± std over the seeds each row names (of {', '.join(map(str, a.seeds))})", "",
             head, "|---|---|---|" + ("---|" if lm else "---|---|") + "---|---|---|"]
    headline = "bits_per_byte" if lm else "accuracy"
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['label']} | | | " + ("| " if lm else "| | ") + "| | not run yet |")
            continue
        cells = [mean_std(r["scores"]["bits_per_byte"], digits=3)] if lm else [
            mean_std(r["scores"]["accuracy"], 100), mean_std(r["scores"]["macro_f1"], 100)]
        # Per seed, distilled minus the same student alone (kd-train --baseline): bits/byte, or accuracy points.
        gains = r.get("gain", {}).get(headline, [])
        cells.append((mean_std(gains, 1 if lm else 100, 3 if lm else 2, "+") + (" ¹" if r.get("paired") else "")
                      if len(gains) == len(r["seeds"]) else "–"))
        params = f"{r['params']:,}" + (f" ({r['zeros']:,} of them zero)" if r["zeros"] else "")
        lines.append(f"| {r['label']} | {params} | {r['bytes']:,} | " + " | ".join(cells) +
                     f" | {statistics.mean(r['seconds']):.0f} | {', '.join(map(str, r['seeds']))} |")
        alone = r.get("alone", [])
        if not lm and alone and len(alone) == len(r["seeds"]) and task in OWN_BASELINE_ROWS:
            # Its own student alone (kd-train --baseline), shown beside it: the gain above is the difference.
            lines.append(f"| ↳ its student alone (`--baseline`) | {r['params']:,} | | "
                         f"{mean_std([m['test_accuracy'] for m in alone], 100)} | "
                         f"{mean_std([m['test_macro_f1'] for m in alone], 100)} | | | {', '.join(map(str, r['seeds']))} |")
    lines.append("")
    if any(r.get("paired") for r in rows):
        lines += ["¹ Distilled minus the student-alone row of the same seed (these runs had no `--baseline`); the "
                  "other gains are each run's own `--baseline`: the same student on hard labels with the same stages, "
                  "steps, schedule and seed." + (" In bits per byte lower is better: a negative gain is a gain."
                                                  if lm else ""), ""]
    return lines


def targets(task, rows):
    """The targets the task is held to, as measured (mean of the seeds); none for the extras and weighting sections."""
    if task in ("fashion_mnist_extras", "fashion_mnist_weighting"):
        return []
    m = lambda r, s: statistics.mean(r["scores"][s])
    teacher, by = rows[0], {r["label"]: r for r in rows[1:]}
    # With several student-alone rows (budgets), the gain is scored against the strongest one measured.
    alones = [r for r in rows[1:] if r["label"].startswith("student alone") and r["seeds"]] or [rows[1]]
    alone = max(alones, key=lambda r: m(r, "accuracy") if r["seeds"] and task != "byte_lm" else 0)
    d = by[RECIPE[task]]
    needed = [teacher, alone, d]
    if not all(r["seeds"] for r in needed):
        return ["Targets: not measured yet (the teacher, the student alone and the distilled student need a run each).", ""]
    out = []
    own = d.get("gain", {}).get("accuracy", [])
    if task.startswith("fashion_mnist") and own and len(own) == len(d["seeds"]) and not d.get("paired"):
        # Its own student alone (kd-train --baseline: same stages, steps, schedule and seed), paired per seed.
        share = d["params"] / teacher["params"]
        retained = m(d, "accuracy") / m(teacher, "accuracy")
        gain = 100 * statistics.mean(own)
        out.append(f"Targets ({RECIPE[task].split(': ')[1]} student): parameters {100 * share:.2f} % of the teacher's (≤ 5 %: "
                   f"{'met' if share <= 0.05 else 'missed'}); accuracy {100 * retained:.2f} % of the teacher's "
                   f"(≥ 98 %: {'met' if retained >= 0.98 else 'missed'}); {gain:+.2f} points over the same student "
                   f"alone with the same stages, steps and schedule (≥ +0.5: {'met' if gain >= 0.5 else 'missed'}).")
    elif task.startswith("fashion_mnist"):
        share = d["params"] / teacher["params"]
        retained = m(d, "accuracy") / m(teacher, "accuracy")
        gain = 100 * (m(d, "accuracy") - m(alone, "accuracy"))
        out.append(f"Targets ({RECIPE[task].split(': ')[1]} student): parameters {100 * share:.2f} % of the teacher's (≤ 5 %: "
                   f"{'met' if share <= 0.05 else 'missed'}); accuracy {100 * retained:.2f} % of the teacher's "
                   f"(≥ 98 %: {'met' if retained >= 0.98 else 'missed'}); {gain:+.2f} points over the "
                   + (f"stronger student alone, “{alone['label']}” " if len(alones) > 1 else "student alone ")
                   + f"(≥ +0.5: {'met' if gain >= 0.5 else 'missed'}"
                   + "".join(f"; over “{r['label']}”: {100 * (m(d, 'accuracy') - m(r, 'accuracy')):+.2f}"
                             for r in alones if r is not alone) + ").")
    elif task == "spam_few_labels":
        # The student alone is each run's --baseline (the same 10 % of the labels, stages, steps and seed).
        alone_f1 = [b["test_macro_f1"] for b in d.get("alone", [])]
        if len(alone_f1) != len(d["seeds"]):
            return ["Targets: not measured yet (each distilled run needs its --baseline).", ""]
        t, s, al = 100 * m(teacher, "macro_f1"), 100 * m(d, "macro_f1"), 100 * statistics.mean(alone_f1)
        share = (s - al) / (t - al) if t > al else float("nan")
        out.append(f"Targets: macro-F1 teacher {t:.2f}, student alone {al:.2f}, distilled {s:.2f}. The teacher is "
                   f"{t - al:.2f} points above the student alone (≥ 1: {'met' if t - al >= 1 else 'missed'}); "
                   f"distillation recovers {100 * share:.0f} % of that gap (≥ 50 %: "
                   f"{'met' if share >= 0.5 else 'missed'}).")
    elif task == "spam":
        gap = 100 * (m(teacher, "macro_f1") - m(d, "macro_f1"))
        out.append(f"Target: the distilled student's macro-F1 is {gap:.2f} points below the teacher's (within 1: "
                   f"{'met' if gap <= 1.0 else 'missed'}).")
    else:
        t, s, al = m(teacher, "bits_per_byte"), m(d, "bits_per_byte"), m(alone, "bits_per_byte")
        out.append(f"Target: distilled student {s:.3f} bits/byte vs teacher {t:.3f} and student alone {al:.3f}: "
                   f"{'closer to the teacher' if abs(s - t) < abs(al - t) else 'not closer to the teacher'} "
                   f"({'met' if abs(s - t) < abs(al - t) else 'missed'}).")
    return out + [""]


def curves(a, task, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm = task == "byte_lm"
    metric = "bits_per_byte" if lm else "accuracy"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    # Left: the loss parts of the task's recipe run, of the first seed that has it.
    recipe = RECIPE[task]
    seed = next((s for s in a.seeds if find_run(a, task, s, slug(recipe))), None)
    if seed is None:
        return False
    events = read_metrics(metrics_path(find_run(a, task, seed, slug(recipe))))
    steps = [e for e in events if e["event"] == "step"]
    names = sorted({k for e in steps for k in e["parts"] if is_loss_part(k)})
    for name in names:
        xs = [e["global_step"] for e in steps if name in e["parts"]]
        ys = smooth([e["parts"][name] for e in steps if name in e["parts"]])
        left.plot(xs, ys, label=name)
    left.plot([e["global_step"] for e in steps], smooth([e["loss"] for e in steps]), label="total", color="black")
    for e in events:
        if e["event"] == "stage_begin" and e["global_step"] > 0:
            left.axvline(e["global_step"], color="grey", linestyle=":")
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_title(textwrap.fill(f"{recipe} (seed {seed}): loss parts (moving mean of 25 steps)", 70), fontsize=9)
    left.legend(fontsize=8)
    # Right: validation score of every variant against its step.
    for label, _, _ in variants(a, task):
        folder = find_run(a, task, seed, slug(label))
        if folder is None:
            continue
        ev = [e for e in read_metrics(metrics_path(folder)) if e["event"] == "eval" and metric in e["metrics"]]
        right.plot([e["global_step"] for e in ev], [(1 if lm else 100) * e["metrics"][metric] for e in ev],
                   marker=".", label=label)
    right.set_xlabel("step")
    right.set_ylabel("validation bits per byte" if lm else "validation accuracy %")
    if not lm:
        right.set_ylim(bottom=80)
    right.set_title(textwrap.fill(f"{TITLES[task].split(' (')[0].split(':')[0]}: validation "
                                  f"{'bits per byte' if lm else 'accuracy'} (seed {seed})", 70), fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def read_metrics(path):
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def smooth(values, n=25):
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > n:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kd-train", default="build/src/cli/kd-train")
    p.add_argument("--runs", default="runs/table")
    p.add_argument("--archive", default="bench/results/table/runs",
                   help="where finished runs' results are kept across machines (committed); '' for none")
    p.add_argument("--results", default="bench/results/table")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--readme", default="docs/RESULTS.md", help="the Markdown file whose results block is rewritten")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--only", nargs="+", default=[], metavar="RUN",
                   help="train only these runs (folder names, e.g. three_phase r1_gradient_matching), e.g. to split "
                        "a seed over two processes; the table still shows every run there is")
    p.add_argument("--extras", action="store_true", help="also the rows of CutMix, FGSM, pruning, linear attention, TokenMix")
    a = p.parse_args()
    if not a.table_only:
        train_all(a)
    os.makedirs(a.results, exist_ok=True)
    command = "python3 bench/results_table.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    sections, data = {}, {}
    results = os.path.join(a.results, "results.json")
    old = json.load(open(results)) if os.path.exists(results) else {}
    for task in a.tasks:
        archive_runs(a, task)
        rows, scores = collect(a, task)
        recorded = old.get("tasks", {}).get(task)
        if not any(r["seeds"] for r in rows) and recorded:
            # Runs older than the archive: the per-seed figures results.json recorded are all there is of them.
            rows = recorded["rows"]
            for r in rows:
                r.setdefault("gain", {s: [] for s in scores})
            pair_with_alone_row(rows, scores)
        data[task] = {"command": command, "seeds": a.seeds, "rows": rows}
        lines = markdown(a, task, rows, scores) + targets(task, rows)
        png = os.path.join(a.results, f"curves_{task}.png")
        if curves(a, task, png) or os.path.exists(png):
            # A link relative to the page it sits on.
            link = os.path.relpath(png, os.path.dirname(os.path.abspath(a.readme)) if a.readme else ".")
            lines += [f"![{task} training curves]({link})", ""]
        sections[task] = "\n".join(lines + [f"Made by `{command.strip()}`.", "", ""])
    with open(results, "w") as f:
        json.dump({"tasks": {**old.get("tasks", {}), **data}}, f, indent=1)
    block = None
    if a.readme and os.path.exists(a.readme):
        text = open(a.readme).read()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            old_block, tail = rest.split(END, 1)
            block = merge_sections(old_block, sections)
            with open(a.readme, "w") as f:
                f.write(head + BEGIN + block + END + tail)
            print(f"results sections updated ({', '.join(a.tasks)}): {a.readme}")
    block = block or merge_sections("", sections)
    with open(os.path.join(a.results, "table.md"), "w") as f:
        f.write(block)
    print(block)


BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
FOOTER = ("Training time: each run's own wall time on this 2-core machine; bytes on disk: the file a user ships "
          "(teacher.pt / student.pt, or the int8 file).\n")


def section_marker(task):
    return f"<!-- results-table:{task} -->\n"


def merge_sections(block, sections):
    """The results block with the given tasks' sections replaced (or added, in VARIANTS order) and the others kept.
    A block is "\n", then per task its marker line and section, then FOOTER."""
    kept = {}
    body = block.lstrip("\n")
    if body.endswith(FOOTER):
        body = body[:-len(FOOTER)]
    if body.strip():
        if not body.startswith("<!-- results-table:"):
            sys.exit("the results block does not start with a task's marker (<!-- results-table:TASK -->); "
                     "put one before each task's section")
        for chunk in body.split("<!-- results-table:")[1:]:
            task, _, text = chunk.partition(" -->\n")
            kept[task] = text
    kept.update(sections)
    order = [t for t in VARIANTS if t in kept] + [t for t in kept if t not in VARIANTS]
    return "\n" + "".join(section_marker(t) + kept[t] for t in order) + FOOTER

if __name__ == "__main__":
    main()
