"""One writer per run folder, and nothing in it changes before a run is accepted.

1. While a kd-train trains into OUT, a second `kd-train distill --resume --out OUT` (and `kd-train teacher
   --out OUT`) is refused with exit status 2, naming the first one's pid and host, and changes no file there.
2. The lock file a dead run leaves behind (a SIGKILLed kd-train) does not block the next `--resume`.
3. A `--resume` refused for its different configuration leaves every file of the run as it was,
   config.json included.
4. `kd-train teacher` into a folder with student checkpoints is refused; a teacher.pt swapped under them by
   hand makes `--resume` refuse them (the fingerprint covers the teacher's weights).

usage: run_folder.py KD_TRAIN OUT_DIR
"""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
LOCK = ".kd-train.lock"


def args(folder, last_steps):
    return [kd_train, "distill", "--out", folder, "--threads", "1", "--set", "data.limit=256", "--set",
            "teacher.epochs=1", "--set", "stages.0.steps=1", "--set", "stages.1.steps=1", "--set",
            f"stages.2.steps={last_steps}", "--set", "train.batch_size=16", "--set", "train.checkpoint_every=2",
            "--set", "train.log_every=1"]


def snapshot(folder):
    """Every file under the folder but the lock file, with its bytes' digest."""
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(root, n)
            if n != LOCK:
                files[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return files


def steps_logged(path):
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return sum('"event":"step"' in line for line in lines)


def start_and_wait(folder, resume=False):
    """A long run, once it has logged 5 steps of its own (so it holds the lock and has checkpoints)."""
    logged = steps_logged(os.path.join(folder, "metrics.jsonl"))
    run = subprocess.Popen(args(folder, 4000) + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while (time.time() < deadline and run.poll() is None and
           steps_logged(os.path.join(folder, "metrics.jsonl")) < logged + 5):
        time.sleep(0.05)
    assert run.poll() is None, "kd-train ended before the test could use it:\n" + run.communicate()[0]
    return run


# 1. Two writers.
a = os.path.join(out, "busy")
first = start_and_wait(a)
first.send_signal(signal.SIGSTOP)  # frozen, so the folder holds still while the second one is refused
try:
    before = snapshot(a)
    for second_args in (args(a, 4000) + ["--resume"], [kd_train, "teacher", "--out", a, "--set", "data.limit=256"]):
        second = subprocess.run(second_args, capture_output=True, text=True, timeout=120)
        log = second.stdout + second.stderr
        assert second.returncode == 2, f"exit {second.returncode}, expected 2:\n{log}"
        assert (f"the run folder '{a}' is in use by another kd-train (pid {first.pid} on host {socket.gethostname()} "
                "since ") in log, log
        assert snapshot(a) == before, "a refused kd-train changed the run folder"
finally:
    first.send_signal(signal.SIGCONT)
first.send_signal(signal.SIGTERM)
first.communicate(timeout=120)
print(f"ok: a second kd-train into a busy folder is refused, naming pid {first.pid}")

# 2. The lock file of a killed run does not block: the next --resume trains on from its checkpoint.
killed = start_and_wait(a, resume=True)
killed.kill()
killed.communicate(timeout=60)
assert os.path.exists(os.path.join(a, LOCK))
resumed = start_and_wait(a, resume=True)
resumed.send_signal(signal.SIGTERM)
log = resumed.communicate(timeout=120)[0]
assert "resuming from" in log and "in use by another kd-train" not in log, log
print("ok: the lock file of a SIGKILLed run does not block --resume")

# 3. A refused --resume changes nothing.
c = os.path.join(out, "refused")
stopped = start_and_wait(c)
stopped.send_signal(signal.SIGTERM)
stopped.communicate(timeout=120)
before = snapshot(c)
assert "config.json" in before and any(k.startswith("checkpoints") for k in before), before
other = subprocess.run(args(c, 4000) + ["--set", "train.lr=0.5", "--resume"], capture_output=True, text=True,
                       timeout=300)
log = other.stdout + other.stderr
assert other.returncode == 2 and "was written under a different configuration" in log, log
assert snapshot(c) == before, "a refused --resume changed the run folder"
print("ok: a --resume refused for its configuration left every file as it was")

# 4. A teacher replaced under student checkpoints: `kd-train teacher` refuses to, and a teacher.pt swapped by
# hand makes --resume refuse the checkpoints (the run's fingerprint covers the teacher's weights).
before = snapshot(c)
refused = subprocess.run([kd_train, "teacher", "--out", c, "--set", "data.limit=256", "--set", "teacher.epochs=1"],
                         capture_output=True, text=True, timeout=300)
log = refused.stdout + refused.stderr
assert refused.returncode == 2 and "holds student checkpoints" in log and "would leave them stale" in log, log
assert snapshot(c) == before, "a refused kd-train teacher changed the run folder"
other_teacher = os.path.join(out, "other_teacher")
trained = subprocess.run([kd_train, "teacher", "--out", other_teacher, "--seed", "7", "--threads", "1", "--set",
                          "data.limit=256", "--set", "teacher.epochs=1"], capture_output=True, text=True, timeout=300)
assert trained.returncode == 0, trained.stdout + trained.stderr
shutil.copy(os.path.join(other_teacher, "teacher.pt"), os.path.join(c, "teacher.pt"))
swapped = subprocess.run(args(c, 4000) + ["--resume"], capture_output=True, text=True, timeout=300)
log = swapped.stdout + swapped.stderr
assert swapped.returncode == 2 and "was written under a different configuration" in log and " teacher " in log, log
print("ok: a teacher replaced under student checkpoints is refused, by kd-train teacher and by --resume")
