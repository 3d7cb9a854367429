"""kd-train's TensorBoard events, read back by a reader written here from the format alone: TFRecord frames
(u64 length, masked CRC-32C of it, data, masked CRC-32C of the data; the CRC computed bit by bit below) around
Event protobufs decoded by Debian's python3-protobuf from a descriptor built from TensorBoard's field numbers.
Every step line and evaluation of metrics.jsonl must be in the events with the same step and value (float32),
the teacher's training too; a resumed run starts with a session-start marker; --tensorboard moves or disables it.

usage: tensorboard_events.py KD_TRAIN WORK
"""
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

kd, work = sys.argv[1:3]
failures = []


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def event_class():
    # tensorflow/core/util/event.proto and framework/summary.proto, the fields read here.
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tb_reader.proto", package="reader", syntax="proto3")
    value = fdp.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".reader.Value", label=F.LABEL_REPEATED)
    session = fdp.message_type.add(name="SessionLog")
    session.field.add(name="status", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".reader.Summary", label=F.LABEL_OPTIONAL)
    event.field.add(name="session_log", number=6, type=F.TYPE_MESSAGE, type_name=".reader.SessionLog",
                    label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("reader.Event"))


Event = event_class()


def read_events(path):
    data = open(path, "rb").read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 12]
        if len(header) < 12:
            failures.append(f"{path}: a record cut short at byte {pos}")
            break
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:12])
        if length_crc != masked(crc32c(header[:8])):
            failures.append(f"{path}: the length CRC at byte {pos} is wrong")
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if body_crc != masked(crc32c(body)):
            failures.append(f"{path}: the data CRC at byte {pos} is wrong")
        e = Event()
        e.ParseFromString(body)
        events.append(e)
        pos += 16 + length
    return events


def scalars_of(folder):
    files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    found, starts = {}, []
    for f in files:
        events = read_events(f)
        if not events or events[0].file_version != "brain.Event:2":
            failures.append(f"{f}: the first record is not the file version brain.Event:2")
        for e in events:
            if e.HasField("session_log") and e.session_log.status == 1:
                starts.append((os.path.basename(f), e.step))
            for v in e.summary.value:
                found[(v.tag, e.step)] = v.simple_value
    return files, found, starts


def close(a, b):
    if b is None:
        return math.isnan(a) or math.isinf(a)
    f32 = struct.unpack("<f", struct.pack("<f", b))[0]
    return a == f32 or abs(a - f32) <= 1e-6 * max(1.0, abs(f32))


def check_against_log(folder, log, what):
    files, found, _ = scalars_of(folder)
    if not files:
        failures.append(f"{what}: no event file in {folder}")
        return
    steps = evals = 0
    for line in open(log):
        row = json.loads(line)
        if row["event"] == "step":
            step = row["global_step"] + 1
            expected = {"loss/total": row["loss"], "train/lr": row["lr"], "train/grad_norm": row["grad_norm"],
                        "train/samples_per_s": row["samples_per_s"]}
            for name, v in row["parts"].items():
                expected[("weight/" + name[2:]) if name.startswith("w.") else "loss/" + name] = v
            steps += 1
        elif row["event"] == "eval":
            step = row["global_step"]
            expected = {"validation/" + k: v for k, v in row["metrics"].items()}
            evals += 1
        else:
            continue
        for tag, v in expected.items():
            if (tag, step) not in found:
                failures.append(f"{what}: no scalar {tag} at step {step}")
            elif not close(found[(tag, step)], v):
                failures.append(f"{what}: {tag} at step {step} is {found[(tag, step)]}, metrics.jsonl says {v}")
    print(f"{what}: {len(found)} scalars in {len(files)} file(s) match {steps} step lines and {evals} evaluations")
    if steps == 0:
        failures.append(f"{what}: {log} has no step lines")


def run(*args, expect=0):
    r = subprocess.run([kd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != expect:
        failures.append(f"kd-train {' '.join(args)}: exit {r.returncode}, expected {expect}\n"
                        + r.stdout.decode(errors="replace")[-3000:])
    return r.stdout.decode(errors="replace")


shutil.rmtree(work, ignore_errors=True)
tiny = ["--threads", "1", "--set", "data.limit=512", "--set", "teacher.epochs=1", "--set", "stages.0.steps=2",
        "--set", "stages.1.steps=2", "--set", "stages.2.steps=3", "--set", "train.batch_size=64"]
out = os.path.join(work, "run")
log = run("distill", *tiny, "--out", out)
if "tensorboard --logdir" not in log:
    failures.append("kd-train does not say where its TensorBoard events are")
check_against_log(os.path.join(out, "tensorboard", "student"), os.path.join(out, "metrics.jsonl"), "student")
check_against_log(os.path.join(out, "tensorboard", "teacher"), os.path.join(out, "teacher_metrics.jsonl"), "teacher")

# A resumed run (here: a finished one, 7 steps done) opens a new file that starts with a session start at step 8.
run("distill", *tiny, "--out", out, "--resume")
files, _, starts = scalars_of(os.path.join(out, "tensorboard", "student"))
if len(files) != 2 or [s for _, s in starts] != [1, 8] or starts[1][0] != os.path.basename(files[-1]):
    failures.append(f"the resumed run's events: files {files}, session starts {starts} (expected step 1 in the "
                    f"first file, step 8 in the second)")

# A resume the trainer refuses (another weight decay) writes no event file.
run("distill", *tiny, "--out", out, "--resume", "--set", "train.weight_decay=0.5", expect=2)
if len(glob.glob(os.path.join(out, "tensorboard", "student", "events.out.tfevents.*"))) != 2:
    failures.append("a refused resume left an event file behind")

# --tensorboard moves the events; none writes none.
moved = os.path.join(work, "tb_elsewhere")
run("distill", *tiny, "--set", f"teacher.path={out}/teacher.pt", "--out", os.path.join(work, "moved"),
    "--tensorboard", moved)
if not glob.glob(os.path.join(moved, "student", "events.out.tfevents.*")) or \
        os.path.exists(os.path.join(work, "moved", "tensorboard")):
    failures.append(f"--tensorboard {moved} did not put the events there (and only there)")
run("distill", *tiny, "--set", f"teacher.path={out}/teacher.pt", "--out", os.path.join(work, "none"),
    "--tensorboard", "none")
if os.path.exists(os.path.join(work, "none", "tensorboard")):
    failures.append("--tensorboard none still wrote events")

if failures:
    sys.exit("tensorboard_events.py:\n" + "\n".join(failures[:30]))
print("tensorboard_events.py: all checks passed")
