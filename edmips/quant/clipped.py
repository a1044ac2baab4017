"""Activations clipped at a calibrated alpha, for post-training quantization (edmips.ptq).

Uniform codes round(clamp(x / step, lo, hi)): unsigned (`clipped`, a tensor after a ReLU, which
like HWGQ it applies itself) codes 0 .. 2^b - 1 with step alpha / (2^b - 1); signed
(`clipped_signed`) the symmetric narrow range -(2^(b-1) - 1) .. 2^(b-1) - 1 with step
alpha / (2^(b-1) - 1). The clip comes from data: under `calibration(model)` the forward is the
float one (ReLU or identity) and gathers ClipStatistics of its input, so every layer sees the
float network's activations in one pass; `finish_calibration(method)` then sets alpha to
`method(statistics, bits, signed)` (the methods: edmips.ptq.clipping) and drops the sample.
"""

import torch
from torch import Tensor

from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import UniformActivation
from edmips.quant.registry import register

SAMPLE_PER_BATCH = 2**18  # values drawn from one forward's input
SAMPLE_LIMIT = 2**20  # values kept in all: a few MB per quantizer, enough for the moments


class ClipStatistics:
    """The largest |x| over every value seen, and a uniform random sample of the values."""

    def __init__(self):
        self.max_abs = 0.0
        self.parts: list[Tensor] = []
        self.kept = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().float().flatten()
        self.max_abs = max(self.max_abs, float(x.abs().max()))
        if self.kept >= SAMPLE_LIMIT:
            return
        if x.numel() > SAMPLE_PER_BATCH:
            x = x[torch.randint(x.numel(), (SAMPLE_PER_BATCH,), device=x.device)]
        self.parts.append(x.cpu())
        self.kept += x.numel()

    def sample(self) -> Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0)


class ClippedQuant(UniformActivation):
    supported_bits = tuple(range(2, 9))
    calibrates = True

    def __init__(self, bits: int):
        super().__init__(bits)
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.statistics: ClipStatistics | None = None

    def unit(self) -> Tensor:
        return self.alpha / self.qmax

    def is_calibrated(self) -> bool:
        return bool(self.calibrated)

    def float_forward(self, x: Tensor) -> Tensor:
        return x if self.signed else torch.relu(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            if self.statistics is None:
                self.statistics = ClipStatistics()
            self.statistics.add(x)
            return self.float_forward(x)
        if self.bits >= FULL_PRECISION:
            return self.float_forward(x)
        return self.quantize(x, self.unit().to(x.dtype))

    def codes(self, x: Tensor) -> Tensor:
        return self.levels(x, self.unit().to(x.dtype))

    def finish_calibration(self, method) -> float:
        """Set alpha to method(statistics, bits, signed) and drop the statistics; the clip."""
        if self.statistics is None:
            raise ValueError(f"{self.name}: no data seen under calibration(model)")
        alpha = float(method(self.statistics, self.bits, self.signed))
        if not alpha > 0:  # a tensor that is all zeros (a dead channel group): any step works
            alpha = 1.0
        self.alpha.fill_(alpha)
        self.calibrated.fill_(True)
        self.statistics = None
        return alpha

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


@register("clipped")
class ClippedReLU(ClippedQuant):
    signed = False


@register("clipped_signed")
class ClippedSigned(ClippedQuant):
    signed = True
