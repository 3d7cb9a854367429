"""What the kd-train CLI test scripts share: run kd-train (or any command), check its exit code and the lines its
output must hold, collect the failures and report them all at the end.

usage, in a test script of this folder:
    checks = kd_cli.Checks("weighting.py", kd_train)
    out = checks.run(["distill", ...], 0, "summary.json")   # kd-train's arguments, the exit code, needles
    checks.check(condition, "what went wrong")
    checks.finish()                                          # exits 1 listing every failure, or says all passed
"""
import os
import subprocess
import sys


class Checks:
    def __init__(self, name, program=None):
        self.name, self.program, self.failures = name, program, []

    def run(self, args, expect, *needles, cwd=None, timeout=900):
        """Runs `program args` (or `args` alone when the Checks has no program) and returns its output (stdout and
        stderr together); a different exit code or a missing needle is a failure, printed with the output's end."""
        cmd = [self.program, *args] if self.program else list(args)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout)
        out = r.stdout.decode("utf-8", "replace")
        label = " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))[:160]
        problems = ([f"exit {r.returncode}, expected {expect}"] if r.returncode != expect else []) + \
                   [f"no {n!r} in the output" for n in needles if n not in out]
        if problems:
            self.failures.append(f"{label}: {'; '.join(problems)}\n{out[-3000:]}")
        print(("FAIL " if problems else "ok   ") + label)
        return out

    def check(self, condition, what):
        if not condition:
            self.failures.append(what)
        return condition

    def finish(self):
        if self.failures:
            sys.exit(f"{self.name}:\n" + "\n".join(self.failures))
        print(f"{self.name}: all checks passed")
