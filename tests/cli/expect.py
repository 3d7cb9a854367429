"""Runs a command and checks both its exit code and its output, which CTest's PASS_REGULAR_EXPRESSION
alone does not: under it a run that prints the expected line and then fails would pass.

usage: expect.py --exit N --regex REGEX -- COMMAND [ARG ...]

The regex is searched in stdout and stderr together, with '.' matching newlines (as CMake's regexes do).
"""
import argparse
import re
import subprocess
import sys

p = argparse.ArgumentParser()
p.add_argument("--exit", type=int, required=True, help="the exit code the command must end with")
p.add_argument("--regex", required=True, help="what its output must contain")
p.add_argument("command", nargs=argparse.REMAINDER)
a = p.parse_args()
command = a.command[1:] if a.command[:1] == ["--"] else a.command
if not command:
    sys.exit("expect.py: no command given after --")
run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
output = run.stdout.decode("utf-8", errors="replace")
sys.stdout.write(output)
problems = []
if run.returncode != a.exit:
    problems.append(f"exit code {run.returncode}, expected {a.exit}")
if not re.search(a.regex, output, re.DOTALL):
    problems.append(f"the output does not match {a.regex!r}")
if problems:
    sys.exit("expect.py: " + "; ".join(problems))
