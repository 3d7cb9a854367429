"""kd-train with several teachers (teacher.ensemble): configs/fashion_mnist_ensemble.json's learned mixture
(teacher_mixture_kl) and a fixed-weight mixture under temperature_kl run on tiny data and report the ensemble;
what cannot work is refused before training, naming the key: a missing file, weights that do not fit the number
of teachers, teacher_mixture_kl with one teacher or with the teacher cache.

usage: ensemble.py KD_TRAIN SOURCE_DIR WORK
"""
import json
import os
import shutil
import sys

import kd_cli

kd, source, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
checks = kd_cli.Checks("ensemble.py", kd)
run, failures = checks.run, checks.failures
tiny = ["--threads", "1", "--set", "data.limit=512", "--set", "teacher.epochs=1", "--set", "train.batch_size=64"]


second = os.path.join(work, "second_teacher")
run(["teacher", *tiny, "--seed", "1", "--out", second], 0, "teacher.pt")
ensemble = ["--set", f'teacher.ensemble=["{second}/teacher.pt"]']

# The shipped config: the learned mixture, its weights logged as parts of the "mix" term.
learned = os.path.join(work, "learned")
run(["distill", "--config", os.path.join(source, "configs/fashion_mnist_ensemble.json"), *tiny, *ensemble,
     "--set", "stages.0.steps=4", "--out", learned], 0, "ensemble of 2 (T 3)", "mix.w.teacher0=", "mix.w.teacher1=")
summary = json.load(open(os.path.join(learned, "summary.json"))) if os.path.exists(os.path.join(learned, "summary.json")) else {}
if not summary.get("models", [{}])[0].get("model", "").startswith("ensemble of 2"):
    failures.append(f"summary.json's teacher row is not the ensemble: {summary.get('models')}")

# A fixed mixture (0.7 / 0.3) distilled by plain KL: the ensemble is mixed at the KL's temperature, its default
# (T = 4, kd::TemperatureKLOptions) when the term gives none.
run(["distill", *tiny, *ensemble, "--set", "teacher.ensemble_weights=[0.7, 0.3]",
     "--set", 'stages=[{"name": "kl", "steps": 4, "losses": [{"type": "temperature_kl"}]}]',
     "--set", f"teacher.path={learned}/teacher.pt", "--out", os.path.join(work, "fixed")], 0, "ensemble of 2 (T 4)")

# A missing ensemble file stops the run before its own teacher trains.
early = run(["distill", *tiny, "--set", f'teacher.ensemble=["{work}/none.pt"]', "--out", os.path.join(work, "early")],
            2, "teacher.ensemble[0]", "does not exist")
if "teacher: training" in early:
    failures.append("a missing ensemble file was found only after the teacher trained")

bad = os.path.join(work, "bad")
for args, needles in [
    (["--set", f'teacher.ensemble=["{work}/none.pt"]'], ["teacher.ensemble[0]", "does not exist"]),
    ([*ensemble, "--set", "teacher.ensemble_weights=[1, 2, 3]"], ["has 3 values for 2 teachers"]),
    (["--set", "teacher.cache.enabled=true", *ensemble], ["teacher cache keeps only the mixture"]),
    ([], ["teacher.ensemble"]),  # teacher_mixture_kl with the one teacher
]:
    run(["distill", "--config", os.path.join(source, "configs/fashion_mnist_ensemble.json"), *tiny,
         "--set", f"teacher.path={learned}/teacher.pt", *args, "--out", bad], 2, *needles)

checks.finish()
