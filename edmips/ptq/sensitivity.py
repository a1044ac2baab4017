"""Per-layer sensitivity: how much the network's output moves when one layer alone drops to
each candidate (w, a), every other layer at 8 bits (as AIMET's and HAWQ's allocations measure
it, without a gradient), or what is left of that once the layer's weights have learnt at their
bits (`refit`: what a fine-tune keeps losing).

The loss is the KL divergence of the quantized network's class distribution from the float
network's on the calibration images, not the cross-entropy to their labels: it asks only how
far quantization moves the network, it is zero for the float network itself, and it does not
ride on whether the float network fits those images (a few hundred labels make a cross-entropy
increase too noisy to rank layers by). Each layer's candidates change only its own quantizers:
the weights' bits, and the input clip re-finished from the statistics already gathered
(edmips.ptq.stats), so the images go through the network once per measurement and never
through calibration again.
"""

import numpy as np
import torch
from rich.progress import track
from torch import Tensor, nn

from edmips.core.classifier import kl_to, training_only
from edmips.nn.layers import INPUT_BITS
from edmips.ptq import stats as calibration_stats
from edmips.quant.clipped import ClippedQuant
from edmips.quant.primitives import FULL_PRECISION

REFERENCE_BITS = 8  # every layer but the measured one
# ptq.py's sensitivity.measure -> the loss increase arch.json records (`sensitivity_loss`): the
# KL as the candidates quantize the layer, or once its weights have learnt (measure(refit=True))
REFIT = "refit"
MEASURES = {"kl": "kl_to_float", REFIT: "kl_after_refit"}
# measure(refit=True): Adam steps and rate of a layer's weights at each weight bit-width, all
# the measured images in each step (not tuned: the values bench/README.md measured)
REFIT_STEPS = 30
REFIT_LR = 1e-3


def kl_in_float64(reference: Tensor, logits: Tensor) -> float:
    return float(kl_to(reference.double(), logits.double()))


@torch.no_grad()
def outputs(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    model.eval()
    return torch.cat([model(x) for x in images.split(batch_size)])


class ClipCache:
    """A clipped quantizer's alpha at each bit-width, finished once from the gathered sample."""

    def __init__(self, stats: calibration_stats.CalibrationStats, clip):
        self.stats, self.clip, self.alphas = stats, clip, {}

    def set_bits(self, name: str, q: nn.Module, bits: int) -> None:
        q.bits = bits
        if not isinstance(q, ClippedQuant) or bits >= FULL_PRECISION:
            return
        if (name, bits) not in self.alphas:
            q.statistics = calibration_stats.statistics(self.stats.clips[name])
            self.alphas[name, bits] = q.finish_calibration(self.clip)
        q.alpha.fill_(self.alphas[name, bits])


@torch.no_grad()
def measure(
    model: nn.Module,
    layers: list[str],
    wspace: tuple[int, ...],
    aspaces: list[tuple[int, ...]],
    images: Tensor,
    reference: Tensor,
    stats: calibration_stats.CalibrationStats,
    clip,
    refit: bool = False,
    batch_size: int = 256,
) -> tuple[list[np.ndarray], float]:
    """Loss increase [len(wspace), len(aspaces[k])] per layer k over the network with every layer of
    `layers` at 8 bits and its clips finished (what `model` must be on entry, and is on
    return, but for the next sentence), and that network's own loss. `reference`: the float
    network's logits. A layer that reads a signed tensor with an input quantizer of its own
    (space.sbits) requantizes it to each of its candidates below 8 bits and at 8 reads it as it
    is (its quantizer left at full precision).

    With `refit`, the layer's weights at each weight bit-width first learn for REFIT_STEPS
    steps against the same KL (straight through their quantizer, every other parameter fixed),
    as a fine-tune would let them: what is left is the error that training does not remove."""
    cache = ClipCache(stats, clip)
    names = {id(m): n for n, m in model.named_modules()}
    for q in (model.get_submodule(n).input_quant for n in layers):
        if q is not None and q.signed:  # its own quantizer reads the shared tensor as it is
            cache.set_bits(names[id(q)], q, _input_bits(q, REFERENCE_BITS))
    base = kl_in_float64(reference, outputs(model, images, batch_size))
    tables = [np.zeros((len(wspace), len(aspace))) for aspace in aspaces]
    for k, name in enumerate(track(layers, description="layer sensitivity", transient=True)):
        layer = model.get_submodule(name)
        wquant, iquant = layer.weight_quant, layer.input_quant
        kept = layer.weight.detach().clone()
        for i, w in enumerate(wspace):
            cache.set_bits(names[id(wquant)], wquant, w)
            if refit:  # its input at 8 bits
                _refit(model, layer.weight, images, reference)
            for j, a in enumerate(aspaces[k]):
                if iquant is not None:  # else its input arrives quantized: no choice
                    cache.set_bits(names[id(iquant)], iquant, _input_bits(iquant, a))
                loss = kl_in_float64(reference, outputs(model, images, batch_size))
                tables[k][i, j] = loss - base
            cache.set_bits(names[id(wquant)], wquant, REFERENCE_BITS)
            if iquant is not None:
                cache.set_bits(names[id(iquant)], iquant, _input_bits(iquant, REFERENCE_BITS))
            layer.weight.copy_(kept)
    return tables, base


def _input_bits(q: nn.Module, bits: int) -> int:
    """The bits of a layer's input quantizer that reads its input at `bits`: a signed input's
    own quantizer reads the shared tensor's 8 bits as they are (edmips.nn.input_space)."""
    return FULL_PRECISION if q.signed and bits >= INPUT_BITS else bits


def _refit(model: nn.Module, weight: nn.Parameter, images: Tensor, reference: Tensor) -> None:
    """REFIT_STEPS Adam steps of `weight` alone on the KL of `model` on all of `images`."""
    optimizer = torch.optim.Adam([weight], lr=REFIT_LR)
    with training_only(model, [weight]), torch.enable_grad():
        for _ in range(REFIT_STEPS):
            loss = kl_to(reference, model(images))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    weight.grad = None
