"""Calibration of a quantized network from a float one: a few training images through the
network in eval mode (batch norm frozen, no gradient step) under `calibration(model)`, then
every clipped quantizer's alpha set by one clip method (edmips.ptq.clipping). The other
quantizers that track a range (the residual streams' moving max) follow the same images; what
they all gathered is edmips.ptq.stats's."""

import copy

import torch
from rich.progress import track
from torch import nn

from edmips.ptq import stats
from edmips.ptq.clipping import method
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import quantizers


def calibrate(model: nn.Module, loader, images: int, activation_clip: str) -> dict[str, float]:
    """Set every clip of `model` from `images` images of `loader`; {quantizer: alpha}."""
    clip = method(activation_clip)
    stats.gather(model, loader, images)
    return stats.finish(model, clip)


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of the network at full precision: every quantizer at 32 bits but the image's,
    whose 8-bit codes are the image itself."""
    copied = copy.deepcopy(model)
    for _, q in quantizers(copied):
        if not getattr(q, "defines_input", False):
            q.bits = FULL_PRECISION
    return copied


@torch.no_grad()
def accuracy(model: nn.Module, loader, description: str = "float accuracy") -> float:
    """Top-1 accuracy of `model` (eval mode) over every batch of `loader`."""
    model.eval()
    right = total = 0
    for x, y in track(loader, description=description, transient=True):
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / total
