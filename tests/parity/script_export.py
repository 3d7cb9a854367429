"""TorchScript files written by kd::export_torchscript, loaded by Python's torch.jit.load.

usage: script_export.py OUT_DIR STUDENT_TS TEACHER_TS

STUDENT_TS: a DepthwiseCnnStudent exported with logits only; TEACHER_TS: a CnnTeacher exported with
layers (forward returns (logits, hidden_states, attentions)). For both, the exported module's outputs
on fixed inputs are written next to those of a plain-PyTorch forward of the documented architecture
(kd/models/cnn.h) that reads the weights from the exported module's state_dict(), so the C++ test
checks its model against the file as Python runs it and against an independent re-implementation.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

import kdref

out = kdref.out_dir()
student_path, teacher_path = sys.argv[2], sys.argv[3]


def bn(x, s, name):
    return F.batch_norm(x, s[name + ".running_mean"], s[name + ".running_var"], s[name + ".weight"],
                        s[name + ".bias"], training=False, eps=1e-5)


def conv(x, s, name, groups=1, padding=1):
    return F.conv2d(x, s[name + ".weight"], s[name + ".bias"], padding=padding, groups=groups)


def spatial_attention(h):
    f = h.flatten(2)
    return torch.softmax(torch.einsum("bci,bcj->bij", f, f) / math.sqrt(h.shape[1]), dim=-1).unsqueeze(1)


def student_reference(x, s):
    h0 = F.max_pool2d(F.relu(bn(conv(x, s, "conv1"), s, "bn1")), 2)
    d = conv(h0, s, "depthwise", groups=h0.shape[1])
    h1 = F.max_pool2d(F.relu(bn(conv(d, s, "pointwise", padding=0), s, "bn2")), 2)
    return F.linear(h1.flatten(1), s["fc.weight"], s["fc.bias"])


def teacher_reference(x, s):
    h = F.relu(bn(conv(x, s, "conv1"), s, "bn1"))
    h0 = F.max_pool2d(F.relu(bn(conv(h, s, "conv2"), s, "bn2")), 2)
    h = F.relu(bn(conv(h0, s, "conv3"), s, "bn3"))
    h1 = F.max_pool2d(F.relu(bn(conv(h, s, "conv4"), s, "bn4")), 2)
    logits = F.linear(F.relu(F.linear(h1.flatten(1), s["fc1.weight"], s["fc1.bias"])), s["fc2.weight"], s["fc2.bias"])
    return logits, [h0, h1]


torch.manual_seed(11)
x = torch.randn(5, 1, 28, 28)  # batch 5: the files were traced on batch 1, the batch dimension must stay free
student = torch.jit.load(student_path)
teacher = torch.jit.load(teacher_path)
s_state = {k: v.double() for k, v in student.state_dict().items()}
t_state = {k: v.double() for k, v in teacher.state_dict().items()}
with torch.no_grad():
    s_logits = student(x)
    assert isinstance(s_logits, torch.Tensor), type(s_logits)
    t_logits, t_hidden, t_att = teacher(x)
    ref_s = student_reference(x.double(), s_state)
    ref_t, ref_h = teacher_reference(x.double(), t_state)
print("student keys:", sorted(student.state_dict().keys()))
kdref.save(os.path.join(out, "expected.json"), x=x,
           student_logits=s_logits, student_reference=ref_s,
           teacher_logits=t_logits, teacher_reference=ref_t,
           teacher_hidden0=t_hidden[0], teacher_hidden1=t_hidden[1],
           teacher_reference_hidden0=ref_h[0], teacher_reference_hidden1=ref_h[1],
           teacher_attention1=t_att[1], teacher_reference_attention1=spatial_attention(ref_h[1]),
           student_keys=torch.tensor(len(student.state_dict())),
           student_has_fc_weight=torch.tensor(int("fc.weight" in student.state_dict())),
           student_has_bn1_mean=torch.tensor(int("bn1.running_mean" in student.state_dict())))
