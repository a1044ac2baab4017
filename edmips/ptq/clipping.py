"""The activation clip methods of `ptq.activation_clip`: each maps a quantizer's ClipStatistics,
bit-width and signedness to alpha (edmips.quant.clipped calls it at the end of calibration).

minmax:        the largest |x| seen (no clipping)
aciq_laplace:  alpha = k * b, b = E|x - mean| (Laplace prior)
aciq_gauss:    alpha = k * sigma (Gaussian prior)
aciq_mix:      per tensor, the prior whose clip has the lower measured error
mse:           the clip that minimises the measured quantization error of the sample

An unsigned quantizer is the ReLU: its tensor is the positive half of a symmetric prior, whose
width the positive values give (b = E[x | x > 0], sigma^2 = E[x^2 | x > 0]). ACIQ's clip never
exceeds the largest value seen.
"""

import torch
from torch import Tensor

from edmips.ptq import aciq
from edmips.quant.clipped import ClipStatistics

MSE_CANDIDATES = 200  # clips tried by `mse`, evenly spaced over (0, max |x|]


def widths(stats: ClipStatistics, signed: bool) -> dict[str, float]:
    """Each prior's width of the tensor: Laplace b and Gaussian sigma."""
    x = stats.sample().double()
    if not signed:
        x = x[x > 0]
        if x.numel() == 0:
            return {"laplace": 0.0, "gauss": 0.0}
        return {"laplace": float(x.mean()), "gauss": float(x.square().mean().sqrt())}
    return {"laplace": float((x - x.mean()).abs().mean()), "gauss": float(x.std())}


def minmax(stats: ClipStatistics, bits: int, signed: bool) -> float:
    return stats.max_abs


def _aciq(prior: str):
    def clip(stats: ClipStatistics, bits: int, signed: bool) -> float:
        width = widths(stats, signed)[prior]
        return min(aciq.aciq_alpha(prior, width, bits, not signed), stats.max_abs)

    return clip


def aciq_mix(stats: ClipStatistics, bits: int, signed: bool) -> float:
    x = stats.sample()

    def error(alpha: float) -> float:
        return measured_mse(x, min(alpha, stats.max_abs), bits, signed)

    _, alpha = aciq.mix(widths(stats, signed), bits, not signed, error)
    return min(alpha, stats.max_abs)


def quantized(x: Tensor, alpha: float, bits: int, signed: bool) -> Tensor:
    """x through the clipped quantizer's arithmetic at clip alpha (edmips.quant.clipped)."""
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    step = alpha / qmax
    return (x / step).clamp(-qmax if signed else 0, qmax).round() * step


def measured_mse(x: Tensor, alpha: float, bits: int, signed: bool) -> float:
    """Mean squared error of the quantized tensor against the float one (relu(x) if unsigned)."""
    target = x if signed else torch.relu(x)
    return float((quantized(x, alpha, bits, signed) - target).square().mean())


def mse(stats: ClipStatistics, bits: int, signed: bool) -> float:
    x = stats.sample()
    if stats.max_abs == 0 or x.numel() == 0:
        return stats.max_abs
    candidates = torch.linspace(stats.max_abs / MSE_CANDIDATES, stats.max_abs, MSE_CANDIDATES)
    errors = [measured_mse(x, float(a), bits, signed) for a in candidates]
    return float(candidates[min(range(len(errors)), key=errors.__getitem__)])


METHODS = {
    "minmax": minmax,
    "aciq_laplace": _aciq("laplace"),
    "aciq_gauss": _aciq("gauss"),
    "aciq_mix": aciq_mix,
    "mse": mse,
}


def method(name: str):
    if name not in METHODS:
        raise ValueError(f"ptq.activation_clip={name}: choose from {', '.join(METHODS)}")
    return METHODS[name]
