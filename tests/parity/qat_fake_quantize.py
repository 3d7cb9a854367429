"""torch.ao.quantization.FakeQuantize references (PyTorch 1.13 semantics) for kd::qat::FakeQuantize.

For each configuration, one FakeQuantize sees several float32 batches of growing spread in turn
(so moving averages move and later batches get clamped); after each call the script records the
scale, zero point, observed range, output and the input gradient of sum(y * g).
Names: <config>_x<k>, _g<k>, _y<k>, _dx<k>, _scale<k>, _zp<k>, _min<k>, _max<k>; <config>_steps.
"""
import os

import torch
from torch.ao.quantization import (FakeQuantize, MinMaxObserver, MovingAverageMinMaxObserver,
                                   MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver)

import kdref

out = kdref.out_dir()
torch.manual_seed(7)

CONFIGS = {
    # per-tensor affine uint8, moving average (torch's default activation fake-quant, c = 0.01 and c = 0.25)
    "aff_ma": (dict(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                    qscheme=torch.per_tensor_affine), (3, 7)),
    "aff_ma25": (dict(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                      qscheme=torch.per_tensor_affine, averaging_constant=0.25), (3, 7)),
    # per-tensor affine uint8, running min/max
    "aff_mm": (dict(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                    qscheme=torch.per_tensor_affine), (4, 5)),
    # per-channel symmetric int8 [-127, 127], running min/max: conv weights [out, in, kh, kw]
    "pc_sym": (dict(observer=PerChannelMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                    qscheme=torch.per_channel_symmetric, ch_axis=0), (4, 3, 3, 3)),
    # per-channel symmetric int8 [-128, 127], moving average, channels on axis 1
    "pc_sym_ma": (dict(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=1,
                       averaging_constant=0.2), (5, 4, 3)),
    # per-channel affine uint8, running min/max
    "pc_aff": (dict(observer=PerChannelMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                    qscheme=torch.per_channel_affine, ch_axis=0), (3, 8)),
    # per-tensor symmetric int8 [-128, 127] and uint8 [0, 255] (zero point 127), running min/max
    "pt_sym": (dict(observer=MinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                    qscheme=torch.per_tensor_symmetric), (6, 5)),
    "pt_sym_u8": (dict(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                       qscheme=torch.per_tensor_symmetric), (6, 5)),
    # per-tensor symmetric int8 on the narrow grid [-127, 127] (kd::qat's per_channel(false) weights), running min/max
    "pt_sym127": (dict(observer=MinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                       qscheme=torch.per_tensor_symmetric), (6, 5)),
    # per-tensor symmetric int8 [-127, 127], moving average (c = 0.01, torch's default, and c = 0.3)
    "pt_sym_ma": (dict(observer=MovingAverageMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                       qscheme=torch.per_tensor_symmetric), (6, 5)),
    "pt_sym_ma30": (dict(observer=MovingAverageMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                         qscheme=torch.per_tensor_symmetric, averaging_constant=0.3), (4, 7)),
}
STEPS = 4

tensors = {}
for name, (kwargs, shape) in CONFIGS.items():
    fq = FakeQuantize(**kwargs)
    tensors[f"{name}_steps"] = torch.tensor(STEPS)
    for k in range(STEPS):
        # Growing spread and a shifting offset; the per-channel configs get channel-dependent scales.
        x = torch.randn(shape) * (0.5 + 0.6 * k) + 0.3 * (k - 1)
        if "pc" in name:
            axis = kwargs["ch_axis"]
            w = torch.linspace(0.2, 2.0, shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
            x = x * w
        x = x.float().requires_grad_(True)
        g = torch.randn(shape)
        y = fq(x)
        (y * g).sum().backward()
        ap = fq.activation_post_process
        tensors.update({f"{name}_x{k}": x.detach(), f"{name}_g{k}": g, f"{name}_y{k}": y.detach(),
                        f"{name}_dx{k}": x.grad, f"{name}_scale{k}": fq.scale.clone(),
                        f"{name}_zp{k}": fq.zero_point.clone(), f"{name}_min{k}": ap.min_val.clone(),
                        f"{name}_max{k}": ap.max_val.clone()})

kdref.save(os.path.join(out, "qat_fake_quantize.json"), **tensors)
