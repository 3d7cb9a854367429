"""kd-train --nproc 2: two local ranks over c10d Gloo, as a user runs them.

1. A tiny distillation finishes; rank 0 alone writes the outputs and one metrics log; the same with
   a teacher-output cache, which both ranks build.
2. SIGTERM to the launcher reaches both ranks once: they stop after the same step, rank 0 writes a
   checkpoint, the launcher ends by SIGTERM; one process (world size 1) then resumes it to the end.
3. SIGKILL of rank 1 mid-run: rank 0 stops with an error naming the failed collective, and the
   launcher ends with a failure status within a bounded time (no hang).
3b. SIGKILL of the launcher: both ranks die with it (none trains on as an orphan).
4. --nproc with a subcommand it does not apply to is refused.

usage: data_parallel.py KD_TRAIN OUT_DIR
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)


def args(folder, last_steps):
    return [kd_train, "distill", "--out", folder, "--set", "data.limit=256", "--set", "teacher.epochs=1",
            "--set", "stages.0.steps=2", "--set", "stages.1.steps=2", "--set", f"stages.2.steps={last_steps}",
            "--set", "train.batch_size=32", "--set", "train.checkpoint_every=0", "--set", "train.log_every=1"]


def steps_logged(path):
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return sum('"event":"step"' in line for line in lines)


def ranks_of(launcher_pid):
    """The launcher's child processes, from /proc (no procps needed)."""
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher_pid:
            children.append(int(stat.split("/")[2]))
    return children


# 1. A complete run.
a = os.path.join(out, "complete")
done = subprocess.run(args(a, 3) + ["--nproc", "2"], capture_output=True, text=True, timeout=600)
log = done.stdout + done.stderr
assert done.returncode == 0, log
assert "starting 2 ranks on this machine" in log and "data-parallel: rank 0 of 2" in log, log
for f in ("student.pt", "teacher.pt", "summary.json", "config.json", "metrics.jsonl"):
    assert os.path.exists(os.path.join(a, f)), f"{f} missing:\n{log}"
# The student's log has each of its 2 + 2 + 3 steps once, not once per rank.
assert steps_logged(os.path.join(a, "metrics.jsonl")) == 7, open(os.path.join(a, "metrics.jsonl")).read()
assert not [f for f in os.listdir(a) if ".tmp." in f], os.listdir(a)
print("ok: --nproc 2 run complete")

# 1b. With the teacher-output cache: both ranks build their share of it; one file, no parts left.
e = os.path.join(out, "cached")
cached = subprocess.run(args(e, 3) + ["--set", "teacher.cache.enabled=true", "--set",
                                      f"teacher.path={json.dumps(os.path.join(a, 'teacher.pt'))}", "--nproc", "2"],
                        capture_output=True, text=True, timeout=600)
log = cached.stdout + cached.stderr
assert cached.returncode == 0, log
assert os.path.exists(os.path.join(e, "teacher.cache")) and "teacher cache" in log, log
assert not glob.glob(os.path.join(e, "teacher.cache.part*")), os.listdir(e)
assert steps_logged(os.path.join(e, "metrics.jsonl")) == 7, log
print("ok: --nproc 2 with a teacher cache built by both ranks")

# 2. SIGTERM to the launcher, then resume in one process.
b = os.path.join(out, "stopped")
run = subprocess.Popen(args(b, 400) + ["--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.time() + 300
while time.time() < deadline and run.poll() is None and steps_logged(os.path.join(b, "metrics.jsonl")) < 7:
    time.sleep(0.05)
assert run.poll() is None, "ended before it could be signalled:\n" + run.communicate()[0]
run.send_signal(signal.SIGTERM)
log = run.communicate(timeout=120)[0]
assert run.returncode == -signal.SIGTERM, f"exit status {run.returncode}, expected death by SIGTERM:\n{log}"
checkpoints = sorted(glob.glob(os.path.join(b, "checkpoints", "ckpt-*.pt")))
assert checkpoints, "no checkpoint after the stop:\n" + log
assert log.count("stop requested (signal 15): checkpoint") == 1, log  # rank 0 alone writes it
rest = subprocess.run(args(b, 400) + ["--resume"], capture_output=True, text=True, timeout=600)
log2 = rest.stdout + rest.stderr
assert rest.returncode == 0, log2
assert "resuming from " + checkpoints[-1] in log2, log2
print(f"ok: stopped at {os.path.basename(checkpoints[-1])} by SIGTERM, resumed in one process")

# 3. SIGKILL of rank 1.
c = os.path.join(out, "killed")
run = subprocess.Popen(args(c, 400) + ["--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.time() + 300
while time.time() < deadline and run.poll() is None and steps_logged(os.path.join(c, "metrics.jsonl")) < 7:
    time.sleep(0.05)
ranks = ranks_of(run.pid)
assert len(ranks) == 2, ranks
os.kill(max(ranks), signal.SIGKILL)  # forked second: rank 1
killed_at = time.time()
log = run.communicate(timeout=120)[0]
waited = time.time() - killed_at
assert run.returncode not in (0, None), log
assert "rank 0 of 2" in log and "with the other ranks failed" in log, log
assert "rank 1 ended with status 137" in log, log
assert waited < 60, f"the job took {waited:.0f} s to stop after rank 1 died"
print(f"ok: rank 1 killed, job ended with status {run.returncode} {waited:.1f} s later")

# 3b. SIGKILL of the launcher: its ranks die with it instead of training on as orphans.
d = os.path.join(out, "orphans")
# No pipe: an orphan holding it would keep the test waiting instead of failing it.
run = subprocess.Popen(args(d, 400) + ["--nproc", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.time() + 300
while time.time() < deadline and run.poll() is None and steps_logged(os.path.join(d, "metrics.jsonl")) < 7:
    time.sleep(0.05)
ranks = ranks_of(run.pid)
assert len(ranks) == 2, ranks
run.kill()
run.wait(timeout=60)
deadline = time.time() + 20
alive = lambda: [r for r in ranks if os.path.exists(f"/proc/{r}") and
                 open(f"/proc/{r}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
while time.time() < deadline and alive():
    time.sleep(0.05)
survivors = alive()
for r in survivors:
    os.kill(r, signal.SIGKILL)  # not left training after the test
assert not survivors, f"ranks {survivors} outlived their launcher"
logged = steps_logged(os.path.join(d, "metrics.jsonl"))
time.sleep(1)
assert steps_logged(os.path.join(d, "metrics.jsonl")) == logged, "a rank went on training after the launcher died"
print("ok: SIGKILL of the launcher ended both ranks")

# 4. Refused.
bad = subprocess.run([kd_train, "--nproc", "2", "list"], capture_output=True, text=True, timeout=60)
assert bad.returncode == 2 and "--nproc applies to `teacher` and `distill` only" in bad.stdout + bad.stderr, bad
print("ok: --nproc list refused")
