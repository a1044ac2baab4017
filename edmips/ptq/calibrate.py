"""Calibration of a quantized network from a float one: a few training images through the
network in eval mode (batch norm frozen, no gradient step) under `calibration(model)`, then
every clipped quantizer's alpha set by one clip method (edmips.ptq.clipping). The other
quantizers that track a range (the residual streams' moving max) follow the same images."""

import copy

import torch
from rich.progress import track
from torch import nn

from edmips.ptq.clipping import method
from edmips.quant import calibration
from edmips.quant.clipped import ClippedQuant
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import quantizers


def batches(loader, images: int):
    """The loader's batches, cut to `images` images in all."""
    seen = 0
    for x, *_ in loader:
        if seen >= images:
            return
        yield x[: images - seen]
        seen += min(len(x), images - seen)


@torch.no_grad()
def calibrate(model: nn.Module, loader, images: int, activation_clip: str) -> dict[str, float]:
    """Set every clip of `model` from `images` images of `loader`; {quantizer: alpha}."""
    clip = method(activation_clip)
    model.eval()
    seen = 0
    with calibration(model):
        for x in track(batches(loader, images), description="calibrating", transient=True):
            model(x)
            seen += len(x)
    if seen < images:
        raise ValueError(f"calibration.images={images}: the training split has only {seen}")
    return {
        name: q.finish_calibration(clip)
        for name, q in quantizers(model)
        if isinstance(q, ClippedQuant) and q.bits < FULL_PRECISION
    }


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
