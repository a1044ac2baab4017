"""The naive composite layer that bench/step.py compares edmips's against: MixedConv2d's
selectors and conv, with the quantizers written like the published EdMIPS code (the weight
statistic read on the host, one tensor per candidate kept by autograd)."""

import torch

from edmips.nn.layers import MixedConv2d
from edmips.quant import GAUSS_STEPS, HWGQ_STEPS
from edmips.quant.primitives import hwgq_clip


class _GaussQuantize(torch.autograd.Function):
    """Reference weight quantizer with a precomputed step; straight-through gradient."""

    @staticmethod
    def forward(ctx, weight, step, bits):
        limit = (2 ** (bits - 1) - 0.5) * step
        return ((torch.round(weight / step + 0.5) - 0.5) * step).clamp(-limit, limit)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class _HWGQRound(torch.autograd.Function):
    """Reference HWGQ rounding (input already clamped); straight-through gradient."""

    @staticmethod
    def forward(ctx, x, step):
        return torch.round(x / step) * step

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def host_std(weight, per_channel):
    """The weight statistic read on the host as the reference does (`weight.std().item()`):
    a device-to-host sync per layer per step. Per channel: the list of stds, sent back."""
    w = weight.detach()
    if not per_channel:
        return max(w.std().item(), 1e-12)
    stds = w.flatten(1).std(dim=1).clamp_min(1e-12).tolist()
    return torch.tensor(stds, dtype=w.dtype, device=w.device).view(-1, *[1] * (w.dim() - 1))


class NaiveMixedConv2d(MixedConv2d):
    """MixedConv2d's selectors and conv, with the quantizers of the published EdMIPS code: a
    Python loop that keeps every candidate's tensor in the autograd graph."""

    def quant_weight(self):
        assert self.shared, "the naive layer implements shared weights only"
        std = host_std(self.weight, self.per_channel)  # once per layer, as SharedMixQuantConv2d
        return sum(
            p * _GaussQuantize.apply(self.weight, GAUSS_STEPS[b] * std, b)
            for p, b in zip(self.probs_w(), self.wbits, strict=True)
        )

    def quant_input(self, x):
        if self.abits is None:
            return x
        outs = []
        for p, b in zip(self.probs_a().to(x.dtype), self.abits, strict=True):  # dtype: as edmips
            outs.append(_HWGQRound.apply(x.clamp(0.0, hwgq_clip(b)), HWGQ_STEPS[b]) * p)
        return sum(outs)


def to_naive(model):
    """Replace every MixedConv2d by a NaiveMixedConv2d with the same weights and selectors."""
    for name, m in list(model.named_modules()):
        if type(m) is MixedConv2d:
            new = NaiveMixedConv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
                bias=m.bias is not None,
                wbits=m.wbits,
                abits=m.abits,
                per_channel=m.per_channel,
            ).to(m.weight.device)
            new.load_state_dict(m.state_dict())
            model.set_submodule(name, new)
    return model
