"""kd-train's custom task from an install prefix, across languages: Python trains a teacher and writes teacher,
untrained student (TorchScript) and data (safetensors); the installed kd-train distils them (default stages; then
feature_l2 with inferred widths, temperature_kl and a plugin loss); Python loads the distilled student.ts.pt back.
Bad inputs exit 2 naming the file and the fix, and write nothing.

usage: custom_task.py CMAKE BUILD_DIR PLUGIN WORK [TAKEN_NAME_PLUGIN]
"""
import json
import os
import shutil
import struct
import sys

import kd_cli

cmake, build, plugin, work = sys.argv[1:5]
taken_name_plugin = sys.argv[5] if len(sys.argv) > 5 else None
source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
python = "/usr/bin/python3"
checks = kd_cli.Checks("custom_task.py")  # whole commands: the installed kd-train, cmake, python
run, failures = checks.run, checks.failures


shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
prefix = os.path.join(work, "prefix")
run([cmake, "--install", build, "--prefix", prefix], 0)
kd = os.path.join(prefix, "bin", "kd-train")
os.environ.pop("LD_LIBRARY_PATH", None)  # the installed binary must find its libraries by its RUNPATH

inputs = os.path.join(work, "inputs")
run([python, os.path.join(source, "examples/custom_task/make_inputs.py"), "--out", inputs, "--train", "1200",
     "--validation", "300", "--test", "500", "--teacher-epochs", "3"], 0, "test accuracy")
common = ["--set", "task=custom", "--set", f"teacher.torchscript={inputs}/teacher.pt",
          "--set", f"student.torchscript={inputs}/student.pt",
          "--set", f"data.train={inputs}/train.safetensors",
          "--set", f"data.validation={inputs}/validation.safetensors",
          "--set", f"data.test={inputs}/test.safetensors", "--threads", "2"]

# 1. The default stages (KL + hard labels): the student trains in place and comes back to Python.
out1 = os.path.join(work, "default")
run([kd, "distill", *common, "--out", out1], 0, "10 classes", "student.ts.pt")
for f in ("student.ts.pt", "student.pt", "summary.json", "config.json"):
    if not os.path.exists(os.path.join(out1, f)):
        failures.append(f"default run: {f} was not written")
if os.path.exists(os.path.join(out1, "teacher.pt")):
    failures.append("default run: wrote a teacher.pt although the teacher is the user's TorchScript file")
config = json.load(open(os.path.join(out1, "config.json")))
if config["data"]["num_classes"] != 10:
    failures.append(f"data.num_classes was not inferred as 10: {config['data']['num_classes']}")
run([python, os.path.join(source, "examples/custom_task/check_student.py"), inputs, out1, "--min-accuracy", "0.6"], 0,
    "student.ts.pt loaded in PyTorch")
run([kd, "eval", *common, "--out", out1, "--json"], 0, '"accuracy"')

# 2. Feature pairs whose widths differ (256 -> 64, found by one forward pass), KL, and a plugin's loss.
cfg = json.load(open(os.path.join(source, "examples/custom_task/features.json")))
cfg["stages"][1]["losses"].append({"type": "logit_cosine", "name": "cos", "weight": 0.5})
cfg_path = os.path.join(work, "features_plugin.json")
json.dump(cfg, open(cfg_path, "w"))
out2 = os.path.join(work, "features")
run([kd, "--plugin", plugin, "list"], 0, "logit_cosine", "[plugin ")
run([kd, "--plugin", plugin, "distill", "--config", cfg_path, *common, "--out", out2], 0,
    "teacher widths [256], student widths [64]", "cos=")
run([python, os.path.join(source, "examples/custom_task/check_student.py"), inputs, out2, "--min-accuracy", "0.6"], 0,
    "student.ts.pt loaded in PyTorch")
saved = json.load(open(os.path.join(out2, "config.json")))
if saved["stages"][0]["losses"][0].get("student_dims") != [64]:
    failures.append(f"the saved config lacks the inferred dims: {saved['stages'][0]['losses'][0]}")

# A library student instead of a TorchScript one (student.model, sized from the data), traced to student.ts.pt.
out_builtin = os.path.join(work, "builtin")
run([kd, "distill", *common, "--set", 'student.torchscript=""', "--set", "student.model=depthwise_cnn",
     "--set", "student.width1=8", "--set", "student.width2=16", "--out", out_builtin], 0,
    "DepthwiseCnnStudent(8/16)", "student.ts.pt")
run([python, os.path.join(source, "examples/custom_task/check_student.py"), inputs, out_builtin, "--min-accuracy",
     "0.5"], 0, "student.ts.pt loaded in PyTorch")
run([kd, "distill", *common, "--set", 'student.torchscript=""', "--set", "student.model=transformer", "--out",
     os.path.join(work, "bad_out")], 2, "'student.model' = \"transformer\" takes token ids [N, L]", "[N, 1, 28, 28]")
run([kd, "distill", *common, "--set", "student.model=cnn", "--out", os.path.join(work, "bad_out")], 2,
    "both name the student")

# 3. [N, L] token targets: a language model, scored in bits per token; the reader widens uint8 token ids.
lm = os.path.join(work, "lm_inputs")
run([python, os.path.join(source, "tests/cli/custom_lm_inputs.py"), os.path.join(source, "README.md"), lm], 0,
    "byte LM teacher")
out3 = os.path.join(work, "lm")
lm_out = run([kd, "distill", "--set", "task=custom", "--set", f"teacher.torchscript={lm}/teacher.pt",
              "--set", f"student.torchscript={lm}/student.pt", "--set", f"data.train={lm}/train.safetensors",
              "--set", f"data.validation={lm}/validation.safetensors", "--threads", "2", "--out", out3], 0,
             "token targets (language model)", "bits/byte")
run([kd, "distill", "--set", "task=custom", "--set", f"teacher.torchscript={lm}/teacher.pt",
     "--set", "student.model=causal_lm", "--set", "student.d_model=32", "--set", f"data.train={lm}/train.safetensors",
     "--set", f"data.validation={lm}/validation.safetensors", "--threads", "2", "--out", os.path.join(work, "lm_builtin")],
    0, "CausalLM(2x32, 2 heads)", "bits/byte")
run([kd, "distill", "--set", "task=custom", "--set", f"teacher.torchscript={lm}/teacher.pt",
     "--set", "student.model=causal_lm", "--set", "student.vocab=100", "--set", f"data.train={lm}/train.safetensors",
     "--out", os.path.join(work, "bad_out")], 2, "'student.vocab' = 100 is smaller than the data's token ids")
summary = json.load(open(os.path.join(out3, "summary.json"))) if os.path.exists(os.path.join(out3, "summary.json")) else {}
rows = summary.get("models", [])
if len(rows) < 2 or not rows[1].get("test_bits_per_byte", 99) < 8:
    failures.append(f"the LM student's test bits per token is not below 8 (uniform): {rows}")
check = ("import torch, sys\nm = torch.jit.load(sys.argv[1])\n"
         "out = m(torch.zeros(1, int(sys.argv[2]), dtype=torch.long))\n"
         "print('lm student logits', tuple((out['logits'] if isinstance(out, dict) else out).shape))\n")
run([python, "-c", check, os.path.join(out3, "student.ts.pt"), "5"], 0, "lm student logits (1, 5, 256)")
# A library student is traced on a training window: it takes windows of that length (32).
run([python, "-c", check, os.path.join(work, "lm_builtin", "student.ts.pt"), "32"], 0, "lm student logits (1, 32, 256)")


# 4. Bad inputs: exit 2, the file and the fix named, no run folder written.
def damaged(name, mutate):
    src = open(os.path.join(inputs, "validation.safetensors"), "rb").read()
    path = os.path.join(work, name)
    open(path, "wb").write(mutate(src))
    return path


def header_of(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8:8 + n])


def with_header(blob, edit):
    n, h = header_of(blob)
    edit(h)
    text = json.dumps(h).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


bad_length = damaged("bad_length.safetensors", lambda b: struct.pack("<Q", len(b) * 4) + b[8:])
past_end = damaged("past_end.safetensors", lambda b: with_header(
    b, lambda h: h["targets"].__setitem__("data_offsets", [h["targets"]["data_offsets"][0], 10 ** 9])))
bad_dtype = damaged("bad_dtype.safetensors", lambda b: with_header(b, lambda h: h["targets"].__setitem__("dtype", "Q7")))


def fewer_targets(blob):
    # "targets" is the last tensor (names sorted): one example fewer of it, and 8 bytes fewer at the end.
    def edit(h):
        begin, end = h["targets"]["data_offsets"]
        h["targets"]["shape"] = [h["targets"]["shape"][0] - 1]
        h["targets"]["data_offsets"] = [begin, end - 8]
    return with_header(blob, edit)[:-8]


short_n = damaged("short_n.safetensors", fewer_targets)
no_forward = os.path.join(work, "no_forward.pt")
script = ("import torch\nclass M(torch.nn.Module):\n    @torch.jit.export\n    def f(self, x: torch.Tensor) -> "
          f"torch.Tensor:\n        return x\ntorch.jit.save(torch.jit.script(M()), {no_forward!r})\n")
open(os.path.join(work, "no_forward.py"), "w").write(script)
run([python, os.path.join(work, "no_forward.py")], 0)
not_a_library = os.path.join(work, "not_a_library.so")
open(not_a_library, "w").write("not an ELF file\n")
libz = next((p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
                         "/lib/aarch64-linux-gnu/libz.so.1") if os.path.exists(p)), None)
bad = os.path.join(work, "bad_out")
cases = [
    (["--set", f"data.validation={bad_length}"], ["bad_length.safetensors", "header"]),
    (["--set", f"data.validation={past_end}"], ["past_end.safetensors", "targets"]),
    (["--set", f"data.validation={bad_dtype}"], ["bad_dtype.safetensors", "Q7"]),
    (["--set", f"data.validation={short_n}"], ["short_n.safetensors", "same number of examples"]),
    (["--set", f"teacher.torchscript={no_forward}"], ["no_forward.pt", "no forward method"]),
    (["--set", f"data.train={work}/missing.safetensors"], ["missing.safetensors", "does not exist"]),
    (["--plugin", f"{work}/missing_plugin.so"], ["missing_plugin.so", "does not exist"]),
    (["--plugin", not_a_library], ["not_a_library.so", "cannot be loaded"]),
]
if libz:
    cases.append((["--plugin", libz], ["libz.so.1", "registered no loss"]))
if taken_name_plugin:
    cases.append((["--plugin", taken_name_plugin], [os.path.basename(taken_name_plugin),
                                                    "a loss named 'temperature_kl' is already registered"]))
for extra, patterns in cases:
    run([kd, "distill", *common, *extra, "--out", bad], 2, *patterns)
left = [f for f in (os.listdir(bad) if os.path.exists(bad) else []) if f != ".kd-train.lock"]
if left:
    failures.append(f"a refused run left {left} in {bad}")

checks.finish()
