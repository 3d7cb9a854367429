"""Mean and standard deviation over seeds of a kd-train QAT run's summary.json files.

usage: qat_summary.py RUN_DIR...   (each written by kd-train distill --config configs/qat.json)
Prints a Markdown table: test accuracy of each model row, the int8 file's size, and the int8 file's
accuracy minus each float version's (negative = int8 is worse).
"""
import json
import statistics
import sys

runs = [json.load(open(f"{d}/summary.json")) for d in sys.argv[1:]]


def acc(run, suffix):
    for row in run["models"]:
        if row["model"].endswith(suffix):
            return 100 * row["test_accuracy"]
    raise KeyError(suffix)


def stat(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


rows = [("teacher (CnnTeacher)", "CnnTeacher"),
        ("student, float, before QAT", "(float, before QAT)"),
        ("student, float, QAT-trained weights", "(float, QAT weights)"),
        ("student, fake-quant", "(fake-quant)"),
        ("student, int8 file loaded in C++", "(int8 file)")]
print(f"{len(runs)} seeds: {', '.join(str(r['seed']) for r in runs)}\n")
print("| model | test accuracy % (mean ± std) | per seed |")
print("|---|---|---|")
for label, suffix in rows:
    values = [acc(r, suffix) for r in runs]
    print(f"| {label} | {stat(values)} | {' / '.join(f'{v:.2f}' for v in values)} |")
for label, suffix in [("int8 file − float before QAT", "(float, before QAT)"),
                      ("int8 file − float, same weights", "(float, QAT weights)")]:
    values = [acc(r, "(int8 file)") - acc(r, suffix) for r in runs]
    print(f"| {label} (points) | {stat(values)} | {' / '.join(f'{v:+.2f}' for v in values)} |")
i8 = runs[0]["int8"]
print(f"\nint8 file {i8['file_bytes']} bytes vs float32 state {i8['float32_bytes']} bytes: "
      f"{i8['ratio']:.2f}x ({i8['float32_bytes'] / i8['file_bytes']:.2f}x smaller)")
