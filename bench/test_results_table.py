"""Tests of bench/results_table.py on a made-up runs tree: the figures it writes are worked out by hand here,
a task's README section is rewritten while the other tasks' sections stay byte for byte, and the archive
alone (the runs folder deleted, as on a new machine) gives the same table without training anything.

usage: /usr/bin/python3 bench/test_results_table.py   (needs matplotlib for the curves: python3-matplotlib)
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_table.py")
TASK = "fashion_mnist_24"
KEPT = "<!-- results-table:spam -->\n**spam section made on another day**\n\nMade by `an older command`.\n\n"
FOOTER = ("Training time: each run's own wall time on this 2-core machine; bytes on disk: the file a user ships "
          "(teacher.pt / student.pt, or the int8 file).\n")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def make_run(folder, teacher_accuracy, accuracy, seconds, student_bytes, gain=None):
    summary = {"student_seconds": seconds, "models": [
        {"model": "CnnTeacher", "parameters": 800_000, "test_accuracy": teacher_accuracy, "test_macro_f1": teacher_accuracy},
        {"model": "DepthwiseCnnStudent", "parameters": 30_000, "test_accuracy": accuracy, "test_macro_f1": accuracy - 0.01}]}
    if gain is not None:  # kd-train --baseline: distilled minus its own student alone
        summary["distillation_gain"] = {"accuracy": gain, "macro_f1": gain}
    write(os.path.join(folder, "summary.json"), json.dumps(summary))
    write(os.path.join(folder, "student.pt"), b"x" * student_bytes)
    events = [{"event": "stage_begin", "global_step": 0, "stage": "kl"}]
    for step in range(1, 41):
        events.append({"event": "step", "global_step": step, "stage_step": step, "epoch": 0, "loss": 1.0 / step,
                       "parts": {"kl": 0.5 / step, "ce": 0.5 / step}, "lr": 0.003, "samples_per_s": 500.0})
        if step % 20 == 0:
            events.append({"event": "eval", "global_step": step, "metrics": {"accuracy": accuracy - 0.02 + step / 2000}})
    write(os.path.join(folder, "metrics.jsonl"), "".join(json.dumps(e) + "\n" for e in events))


class ResultsTableTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.runs, self.archive, self.results = (os.path.join(d, n) for n in ("runs", "archive", "results"))
        self.readme = os.path.join(d, "README.md")
        # Seeds 0 and 1: teacher 93 % / 94 %, alone 91 % / 92 % (12 epochs: 91.8 % / 92.2 %), plain KL 92 % / 92.6 %.
        # fashion_mnist_long has the same runs but for the 12-epoch alone one.
        for task in (TASK, "fashion_mnist_long"):
            for seed, (t, alone, alone12, kl) in enumerate([(0.93, 0.91, 0.918, 0.92), (0.94, 0.92, 0.922, 0.926)]):
                base = os.path.join(self.runs, task, f"seed{seed}")
                write(os.path.join(base, "teacher", "teacher.pt"), b"t" * 5000)
                write(os.path.join(base, "teacher", "seconds.json"), json.dumps({"teacher_seconds": 100.0 + seed * 20}))
                make_run(os.path.join(base, "student_alone__hard_labels"), t, alone, 50.0, 1000)
                if task == TASK:
                    make_run(os.path.join(base, "student_alone__12_epochs__hard_labels"), t, alone12, 25.0, 1000)
                make_run(os.path.join(base, "plain_kl"), t, kl, 70.0 + seed * 10, 1000)
        write(self.readme, "intro\n<!-- results-table:begin -->\n" + KEPT + FOOTER + "<!-- results-table:end -->\nafter\n")

    def tearDown(self):
        self.tmp.cleanup()

    def table(self, *extra, kd_train=None, task=TASK):
        cmd = [sys.executable, SCRIPT, "--tasks", task, "--seeds", "0", "1", "--runs", self.runs, "--archive",
               self.archive, "--results", self.results, "--readme", self.readme] + list(extra)
        if kd_train:
            cmd += ["--kd-train", kd_train]
        done = subprocess.run(cmd, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        with open(self.readme) as f:
            return f.read()

    def test_section_figures_are_the_hand_worked_means(self):
        text = self.table("--table-only")
        # Teacher: mean of 93 and 94 = 93.50, sample std 0.7071 -> 0.71; time mean of 100 and 120 s.
        self.assertIn("| teacher CnnTeacher | 800,000 | 5,000 | 93.50 ± 0.71 | 93.50 ± 0.71 | – | 110 | 0, 1 |", text)
        self.assertIn("| student alone (hard labels) | 30,000 | 1,000 | 91.50 ± 0.71 | 90.50 ± 0.71 | – | 50 | 0, 1 |", text)
        # Plain KL: mean of 92 and 92.6 = 92.30, std 0.4243 -> 0.42; time mean of 70 and 80 s.
        # Without --baseline its gain is paired with the first student-alone row, seed by seed: 92 - 91 = 1.0 and
        # 92.6 - 92 = 0.6 points, mean +0.80, std 0.2828 -> 0.28, marked ¹ with the footnote saying so.
        self.assertIn("| distilled: plain KL | 30,000 | 1,000 | 92.30 ± 0.42 | 91.30 ± 0.42 | +0.80 ± 0.28 ¹ | 75 | 0, 1 |", text)
        self.assertIn("¹ Distilled minus the student-alone row of the same seed", text)
        # 12-epoch alone: mean of 91.8 and 92.2 = 92.00, std 0.2828 -> 0.28.
        self.assertIn("| student alone, 12 epochs (hard labels) | 30,000 | 1,000 | 92.00 ± 0.28 | 91.00 ± 0.28 | – | 25 |",
                      text)
        # 30 000 / 800 000 = 3.75 %; 92.3 / 93.5 = 98.72 %; the gain is scored against the stronger student
        # alone, 92.3 - 92.0 = +0.30 (missed), and also given against the other: 92.3 - 91.5 = +0.80.
        self.assertIn("parameters 3.75 % of the teacher's (≤ 5 %: met); accuracy 98.72 % of the teacher's (≥ 98 %: "
                      "met); +0.30 points over the stronger student alone, “student alone, 12 epochs (hard labels)” "
                      "(≥ +0.5: missed; over “student alone (hard labels)”: +0.80).", text)
        self.assertTrue(os.path.exists(os.path.join(self.results, f"curves_{TASK}.png")))

    def test_one_student_alone_row_is_the_gains_reference(self):
        text = self.table("--table-only", task="fashion_mnist_long")
        self.assertIn("accuracy 98.72 % of the teacher's (≥ 98 %: met); +0.80 points over the student alone "
                      "(≥ +0.5: met).", text)

    def test_a_run_with_its_own_baseline_is_scored_against_it(self):
        # kd-train --baseline gains of +0.4 and +0.8 points (seeds 0, 1): mean +0.60, std 0.2828 -> 0.28.
        for seed, (t, kl, gain) in enumerate([(0.93, 0.92, 0.004), (0.94, 0.926, 0.008)]):
            make_run(os.path.join(self.runs, "fashion_mnist_long", f"seed{seed}", "plain_kl"), t, kl, 70.0, 1000, gain)
        text = self.table("--table-only", task="fashion_mnist_long")
        self.assertIn("| distilled: plain KL | 30,000 | 1,000 | 92.30 ± 0.42 | 91.30 ± 0.42 | +0.60 ± 0.28 | 70 | 0, 1 |", text)
        self.assertIn("+0.60 points over the same student alone with the same stages, steps and schedule (≥ +0.5: met).",
                      text)

    def test_extras_rows_stand_beside_their_own_student_alone(self):
        # Plain KL, seeds 0 and 1: accuracy 92 / 92.6 %, alone (its --baseline) 91 / 92 %; under FGSM 40 / 50 %,
        # alone 30 / 34 %; ECE 0.02 / 0.04, alone 0.05 / 0.07.
        for seed, (kl, alone, fgsm, fgsm_alone, ece, ece_alone) in enumerate(
                [(0.92, 0.91, 0.40, 0.30, 0.02, 0.05), (0.926, 0.92, 0.50, 0.34, 0.04, 0.07)]):
            base = os.path.join(self.runs, "fashion_mnist_extras", f"seed{seed}")
            write(os.path.join(base, "teacher", "teacher.pt"), b"t" * 5000)
            write(os.path.join(base, "teacher", "seconds.json"), json.dumps({"teacher_seconds": 100.0}))
            folder = os.path.join(base, "plain_kl")
            make_run(folder, 0.93, kl, 70.0, 1000, kl - alone)
            with open(os.path.join(folder, "summary.json")) as f:
                summary = json.load(f)
            summary["models"][1].update(test_fgsm_accuracy=fgsm, test_ece=ece)
            summary["baseline"] = {"model": {"model": "alone", "test_accuracy": alone, "test_fgsm_accuracy": fgsm_alone,
                                             "test_ece": ece_alone}}
            write(os.path.join(folder, "summary.json"), json.dumps(summary))
        text = self.table("--table-only", task="fashion_mnist_extras")
        # 92.30 ± 0.42 / 91.50 ± 0.71; gains 1.0 and 0.6 -> +0.80 ± 0.28; FGSM 45.00 ± 7.07 / 32.00 ± 2.83;
        # ECE 0.0300 ± 0.0141 / 0.0600 ± 0.0141.
        self.assertIn("| distilled: plain KL | 92.30 ± 0.42 / 91.50 ± 0.71 | +0.80 ± 0.28 | 45.00 ± 7.07 / 32.00 ± 2.83 | "
                      "0.0300 ± 0.0141 / 0.0600 ± 0.0141 | 0, 1 |", text)
        self.assertIn("| distilled: three-phase + CutMix | | | | | not run yet |", text)

    def test_few_labels_spam_rows_show_their_own_baseline_and_the_share_of_the_gap(self):
        # Seeds 0 and 1: teacher macro-F1 92 / 94 %, alone (its --baseline) 89 / 90 %, distilled 91 / 92 %.
        # Means: teacher 93, alone 89.5, distilled 91.5: the gap is 3.5 points, distillation recovers 2 of it (57 %).
        for seed, (teacher, alone, distilled) in enumerate([(0.92, 0.89, 0.91), (0.94, 0.90, 0.92)]):
            base = os.path.join(self.runs, "spam_few_labels", f"seed{seed}")
            write(os.path.join(base, "teacher", "teacher.pt"), b"t" * 5000)
            write(os.path.join(base, "teacher", "seconds.json"), json.dumps({"teacher_seconds": 100.0}))
            folder = os.path.join(base, "three_phase__the_student_with_10___of_the_labels")
            make_run(folder, teacher, distilled + 0.01, 70.0, 1000, distilled - alone)  # its F1: accuracy − 0.01
            with open(os.path.join(folder, "summary.json")) as f:
                summary = json.load(f)
            summary["baseline"] = {"model": {"model": "alone", "test_accuracy": alone + 0.01, "test_macro_f1": alone}}
            write(os.path.join(folder, "summary.json"), json.dumps(summary))
        text = self.table("--table-only", task="spam_few_labels")
        self.assertIn("| ↳ its student alone (`--baseline`) | 30,000 | | 90.50 ± 0.71 | 89.50 ± 0.71 | | | 0, 1 |", text)
        self.assertIn("Targets: macro-F1 teacher 93.00, student alone 89.50, distilled 91.50. The teacher is 3.50 points "
                      "above the student alone (≥ 1: met); distillation recovers 57 % of that gap (≥ 50 %: met).", text)

    def test_without_runs_the_recorded_per_seed_figures_make_the_section(self):
        self.table("--table-only", task="fashion_mnist_long")  # records the rows in results.json
        subprocess.run(["rm", "-rf", self.runs, self.archive], check=True)
        text = self.table("--table-only", task="fashion_mnist_long", kd_train="/bin/false")
        # The same figures as from the runs: plain KL 92.30 ± 0.42, paired gains 1.0 and 0.6 -> +0.80 ± 0.28.
        self.assertIn("| distilled: plain KL | 30,000 | 1,000 | 92.30 ± 0.42 | 91.30 ± 0.42 | +0.80 ± 0.28 ¹ | 75 | 0, 1 |", text)

    def test_other_sections_stay_and_the_task_section_is_replaced(self):
        first = self.table("--table-only")
        self.assertIn(KEPT, first)
        self.assertTrue(first.startswith("intro\n<!-- results-table:begin -->\n"))
        self.assertTrue(first.endswith(FOOTER + "<!-- results-table:end -->\nafter\n"))
        self.assertEqual(first.count(FOOTER), 1)
        self.assertLess(first.index(f"<!-- results-table:{TASK} -->"), first.index(KEPT))  # VARIANTS order
        self.assertIn("--table-only`.\n\n" + KEPT, first)
        second = self.table("--table-only")  # the section is replaced, not added again
        self.assertEqual(first, second)

    def test_the_archive_alone_gives_the_same_table_and_nothing_is_trained_again(self):
        first = self.table("--table-only")
        step = gzip.open(os.path.join(self.archive, TASK, "seed0", "plain_kl", "metrics.jsonl.gz"), "rt").readlines()[1]
        self.assertNotIn("samples_per_s", step)  # per-step counters the curves do not read are left out
        subprocess.run(["rm", "-rf", self.runs], check=True)
        # No runs folder: a training call would fail (kd-train /bin/false), so a green run trained nothing.
        made_by = lambda text: [line for line in text.splitlines() if not line.startswith("Made by")]
        self.assertEqual(made_by(self.table(kd_train="/bin/false")), made_by(first))

    def test_a_block_without_task_markers_is_refused(self):
        write(self.readme, "<!-- results-table:begin -->\nold table\n<!-- results-table:end -->\n")
        done = subprocess.run([sys.executable, SCRIPT, "--table-only", "--tasks", TASK, "--seeds", "0", "--runs",
                               self.runs, "--archive", self.archive, "--results", self.results, "--readme", self.readme],
                              capture_output=True, text=True)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("put one before each task's section", done.stderr)


if __name__ == "__main__":
    unittest.main()
