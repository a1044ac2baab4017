"""Per-layer sensitivity: how much the network's output moves when one layer alone drops to
each candidate (w, a), every other layer at 8 bits (as AIMET's and HAWQ's allocations measure
it, without a gradient).

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

from edmips.core.classifier import kl_to
from edmips.ptq import stats as calibration_stats
from edmips.quant.clipped import ClippedQuant

REFERENCE_BITS = 8  # every layer but the measured one


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
        if not isinstance(q, ClippedQuant):
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
    batch_size: int = 256,
) -> tuple[list[np.ndarray], float]:
    """Loss increase [len(wspace), len(aspaces[k])] per layer k over the network with every layer of
    `layers` at 8 bits and its clips finished (what `model` must be on entry, and is on
    return), and that network's own loss. `reference`: the float network's logits."""
    cache = ClipCache(stats, clip)
    names = {id(m): n for n, m in model.named_modules()}
    base = kl_in_float64(reference, outputs(model, images, batch_size))
    tables = [np.zeros((len(wspace), len(aspace))) for aspace in aspaces]
    grid = [(k, i, j) for k in range(len(layers)) for i in wspace for j in aspaces[k]]
    for k, w, a in track(grid, description="layer sensitivity", transient=True):
        layer = model.get_submodule(layers[k])
        quants = [(layer.weight_quant, w)]
        if layer.input_quant is not None:  # else its input arrives quantized: no choice
            quants.append((layer.input_quant, a))
        for q, bits in quants:
            cache.set_bits(names[id(q)], q, bits)
        loss = kl_in_float64(reference, outputs(model, images, batch_size))
        tables[k][wspace.index(w), aspaces[k].index(a)] = loss - base
        for q, _ in quants:
            cache.set_bits(names[id(q)], q, REFERENCE_BITS)
    return tables, base
