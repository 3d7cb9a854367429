"""QAT forward/backward reference for kd::qat::prepare on a small model, with torch.ao fake quantizers.

Model (the C++ test builds the same one):
    a   = act(relu(conv2d(x, Wc, bc)))            conv: Conv2d(2, 3, 3), act: an activation point
    out = head(relu(linear(a.flatten(1), Wf, bf)))  fc: Linear(27, 4), head: Linear(4, 2)
Weights are fake-quantized as torch's default QAT weight fake-quant with a [-127, 127] range
(per output channel, symmetric qint8, MovingAveragePerChannelMinMaxObserver); the activation
point as torch's default activation fake-quant without reduce_range (per-tensor affine quint8
[0, 255], MovingAverageMinMaxObserver). Two forward calls (so the activation's moving average
moves) on fresh quantizers, for: every layer quantized ("all"), and head excluded ("nohead").
Gradients of sum(out * g) with respect to the float weights W0 of the second call are recorded.
"""
import os

import torch
import torch.nn.functional as F
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

import kdref

out = kdref.out_dir()
torch.manual_seed(5)


def weight_fq():
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)


def act_fq():
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


params = {
    "conv_w": torch.randn(3, 2, 3, 3) * 0.4, "conv_b": torch.randn(3) * 0.1,
    "fc_w": torch.randn(4, 27) * 0.3, "fc_b": torch.randn(4) * 0.1,
    "head_w": torch.randn(2, 4) * 0.5, "head_b": torch.randn(2) * 0.1,
}
xs = [torch.randn(5, 2, 5, 5), torch.randn(5, 2, 5, 5) * 1.5]
g = torch.randn(5, 2)
tensors = dict(params)
tensors.update(x0=xs[0], x1=xs[1], g=g)

for variant, quantize_head in (("all", True), ("nohead", False)):
    w = {k: v.clone().requires_grad_(k.endswith("_w")) for k, v in params.items()}
    fqs = {"conv": weight_fq(), "fc": weight_fq(), "head": weight_fq(), "act": act_fq()}
    for step, x in enumerate(xs):
        wc, wf = fqs["conv"](w["conv_w"]), fqs["fc"](w["fc_w"])
        wh = fqs["head"](w["head_w"]) if quantize_head else w["head_w"]
        a = fqs["act"](F.relu(F.conv2d(x, wc, w["conv_b"])))
        y = F.linear(F.relu(F.linear(a.flatten(1), wf, w["fc_b"])), wh, w["head_b"])
        tensors[f"{variant}_out{step}"] = y.detach()
        tensors[f"{variant}_act_scale{step}"] = fqs["act"].scale.clone()
        tensors[f"{variant}_act_zp{step}"] = fqs["act"].zero_point.clone()
    (y * g).sum().backward()
    for k in ("conv", "fc", "head"):
        tensors[f"{variant}_{k}_grad"] = w[f"{k}_w"].grad
        tensors[f"{variant}_{k}_scale"] = fqs[k].scale.clone()

kdref.save(os.path.join(out, "qat_model.json"), **tensors)
