"""Activations on a learned step (LSQ, Esser et al. 2020), for the `learned` family.

Codes round(clamp(x / s, lowest, qmax)) with the step s a parameter: unsigned (`lsq`, a ReLU
like HWGQ) codes 0 .. 2^b - 1, signed (`lsq_signed`) the narrow range -(2^(b-1) - 1) ..
2^(b-1) - 1. The gradient of x is straight-through inside the range; the gradient of s is
LSQ's, round(x/s) - x/s inside and the range's end outside, scaled by g = 1 / sqrt(n * qmax)
(n: values per image) so that the step learns at the pace of the weights.

LSQ rather than PACT: LSQ learns the step itself, which is what the integer graph needs, and its
gradient sees the rounding error, so the step settles where quantization loses least at each
bit-width; PACT learns only a clip, with a gradient blind to rounding, and only after a ReLU.

The step starts at LSQ's 2 mean|x| / sqrt(qmax) from the first batch seen in training (or under
`calibration(model)`); `initial_step` set before that fixes it instead (6 / (2^b - 1) for the
input of a ReLU6 network's layer, as micronet starts its learned scales at 6.0).
"""

import math

import torch
from torch import Tensor, nn

from edmips.quant.activation import round_ste
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import UniformActivation
from edmips.quant.registry import register

MIN_STEP = 1e-8  # a step the optimizer drove to zero or below quantizes as this


class _GradScale(torch.autograd.Function):
    # A Function rather than LSQ's `(t - t * g).detach() + t * g`, whose float error moves the
    # step off the value the integer graph is built from.
    @staticmethod
    def forward(ctx, t: Tensor, g: float) -> Tensor:
        ctx.g = g
        return t.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.g, None


def grad_scaled(t: Tensor, g: float) -> Tensor:
    """t in the forward; its gradient times g in the backward."""
    return _GradScale.apply(t, g)


class LearnedStep(UniformActivation):
    supported_bits = tuple(range(2, 9))
    calibrates = True

    def __init__(self, bits: int):
        super().__init__(bits)
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # mirrors `initialized` once read, so steps need no host sync

    def unit(self) -> Tensor:
        return self.step.detach().clamp_min(MIN_STEP)

    def is_calibrated(self) -> bool:
        return bool(self.initialized)

    def initial_step(self, step: float) -> None:
        """Start the step here instead of from the first batch."""
        with torch.no_grad():
            self.step.fill_(step)
            self.initialized.fill_(True)
        self._ready = True

    def _start(self, x: Tensor) -> None:
        if self._ready:
            return
        if bool(self.initialized):  # loaded from a state dict
            self._ready = True
        elif self.updates_range():
            self.initial_step(float(2 * x.detach().abs().mean() / math.sqrt(self.qmax)))

    def forward(self, x: Tensor) -> Tensor:
        if not self.signed:
            x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        self._start(x)
        g = 1.0 / math.sqrt(x[0].numel() * self.qmax)
        step = grad_scaled(self.step, g).clamp_min(MIN_STEP).to(x.dtype)
        return round_ste((x / step).clamp(self.lowest, self.qmax)) * step

    def codes(self, x: Tensor) -> Tensor:
        return (x / self.unit().to(x.dtype)).clamp(self.lowest, self.qmax).round()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, step={float(self.step):.4g}"


@register("lsq")
class LearnedStepReLU(LearnedStep):
    signed = False


@register("lsq_signed")
class LearnedStepSigned(LearnedStep):
    signed = True
