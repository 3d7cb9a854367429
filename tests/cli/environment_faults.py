"""kd-train against a hostile environment: an unwritable output folder, a full disk, a missing dataset,
a missing teacher file and a teacher cache written by another teacher. Each run must stop before any
training with a clear error (exit 2, naming the thing and the fix) and leave an existing run's
checkpoints exactly as they were (names and bytes).

Read-only and tiny file systems are tmpfs mounts (as root); where mounting is not allowed those two
cases fall back to a chmod'ed folder and are skipped respectively, saying so.

usage: environment_faults.py KD_TRAIN OUT_DIR
"""
import hashlib
import os
import shutil
import subprocess
import sys

kd_train, out = sys.argv[1:3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
tiny = ["--threads", "1", "--set", "data.limit=256", "--set", "teacher.epochs=1", "--set", "stages.0.steps=2",
        "--set", "stages.1.steps=2", "--set", "stages.2.steps=2", "--set", "train.batch_size=64",
        "--set", "train.checkpoint_every=1"]


def run(out_dir, *extra):
    p = subprocess.run([kd_train, "distill", "--out", out_dir, *tiny, *extra], capture_output=True, text=True,
                       timeout=600)
    return p.returncode, p.stdout + p.stderr


def snapshot(folder):
    d = os.path.join(folder, "checkpoints")
    return {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in sorted(os.listdir(d))}


def expect_refusal(name, out_dir, needles, *extra, resume=True):
    before = snapshot(out_dir) if os.path.isdir(os.path.join(out_dir, "checkpoints")) else None
    code, log = run(out_dir, *extra, *(["--resume"] if resume else []))
    assert code == 2, f"{name}: exit {code}, expected 2 (a kd::Error):\n{log}"
    for needle in needles:
        assert needle in log, f"{name}: the error does not say '{needle}':\n{log}"
    assert "stage 1/3" not in log and "teacher: training" not in log, f"{name}: training started:\n{log}"
    if before is not None:
        assert snapshot(out_dir) == before, f"{name}: the existing checkpoints changed"
    print(f"ok: {name}")


def mount_tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True).returncode == 0


# A finished tiny run with checkpoints: the run whose files the faults must not touch.
base = os.path.join(out, "base")
code, log = run(base)
assert code == 0, log
assert snapshot(base), "the base run wrote no checkpoints"

# 1. Missing dataset: the folder and the command that installs it.
expect_refusal("missing dataset", base, ["/nonexistent/fashion", "apt-get install dataset-fashion-mnist"],
               "--set", "data.root=/nonexistent/fashion")

# 2. Missing teacher file.
expect_refusal("missing teacher file", base, ["teacher.path '/nonexistent/teacher.pt' does not exist",
                                              "kd-train teacher --out DIR"],
               "--set", "teacher.path=/nonexistent/teacher.pt")

# 3. A cache written by another teacher (another seed trains other teacher weights).
other = os.path.join(out, "other_teacher")
code, log = run(other, "--seed", "7", "--set", "teacher.cache.enabled=true")
assert code == 0, log
expect_refusal("cache of another teacher", base, ["was written for teacher", "but the current teacher is"],
               "--set", "teacher.cache.enabled=true", "--set", f"teacher.cache.path={other}/teacher.cache")

# 4. Unwritable output folder: a read-only file system (or, without mount rights, a read-only folder).
ro = os.path.join(out, "ro")
if mount_tmpfs(ro, "size=64m"):
    try:
        shutil.copytree(base, os.path.join(ro, "run"))
        subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
        expect_refusal("read-only output folder", os.path.join(ro, "run"), ["is not writable", "choose another --out"])
        expect_refusal("output folder that cannot be created", os.path.join(ro, "new", "run"),
                       ["cannot create the output folder", "choose another --out"], resume=False)
    finally:
        subprocess.run(["umount", ro])
elif os.geteuid() != 0:
    os.makedirs(ro, exist_ok=True)
    os.chmod(ro, 0o555)
    expect_refusal("output folder that cannot be created", os.path.join(ro, "run"),
                   ["cannot create the output folder"], resume=False)
else:
    print("skipped: read-only output folder (tmpfs cannot be mounted here)")

# 5. A full disk: the run's folder on a file system with almost no space left.
full = os.path.join(out, "full")
size_kb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(base) for f in fs) // 1024 + 600
if mount_tmpfs(full, f"size={size_kb}k"):
    try:
        shutil.copytree(base, os.path.join(full, "run"))
        expect_refusal("full disk", os.path.join(full, "run"), ["MiB free, but distilling the student",
                                                                 "free some space"])
    finally:
        subprocess.run(["umount", full])
else:
    print("skipped: full disk (tmpfs cannot be mounted here)")
print("environment faults: all refused before training, existing checkpoints untouched")
