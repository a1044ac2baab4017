"""Quantizers whose range follows the running maximum of |x|, an exponential moving average
with momentum 0.95 as in QAT practice (`moving_max = 0.95 moving_max + 0.05 max|x|`, the first
batch's max to start): signed (`ema`) for tensors that can be negative, unsigned (`ema_relu`,
a ReLU like HWGQ) for the layers' inputs in the `qatsim` family.

HWGQ is a ReLU: in front of a layer whose input is signed (a normalized image, a linear
bottleneck, a residual sum) it would change what the network computes. There the tensor gets
the signed, symmetric narrow-range quantizer. One instance is shared by every tensor that
meets at a residual add (both inputs and the sum), so the add happens on one integer grid and
the sum needs only a clamp. At 32 bits it passes x through unchanged, so a converted network at
32 bits is exactly the float one.
"""

import torch
from torch import Tensor

from edmips.quant.activation import StreamSTE, round_ste
from edmips.quant.primitives import FULL_PRECISION, stream_codes
from edmips.quant.protocol import UniformActivation
from edmips.quant.registry import register


class MovingMax(UniformActivation):
    """The tracked range: a buffer, moved in training and under calibration."""

    supported_bits = tuple(range(2, 17))
    calibrates = True

    def __init__(self, bits: int = 8, momentum: float = 0.95):
        super().__init__(bits)
        self.momentum = momentum
        self.register_buffer("running_max", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def is_calibrated(self) -> bool:
        return bool(self.initialized)

    def track(self, x: Tensor) -> None:
        """Move the range towards max|x| where this forward updates it."""
        if not self.updates_range():
            return
        with torch.no_grad():
            batch_max = x.detach().abs().amax().float().clamp_min(1e-8)
            # torch.where rather than `if`: the flag stays on the device (no host sync).
            ema = self.momentum * self.running_max + (1 - self.momentum) * batch_max
            self.running_max.copy_(torch.where(self.initialized, ema, batch_max))
            self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


@register("ema")
class StreamQuant(MovingMax):
    signed = True

    def scale(self) -> Tensor:
        return self.running_max / self.qmax

    def unit(self) -> Tensor:
        return self.scale()

    def forward(self, x: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return x
        self.track(x)
        return StreamSTE.apply(x, self.scale().to(x.dtype), self.qmax)

    def codes(self, x: Tensor) -> Tensor:
        """Integer levels in [-qmax, qmax] (same dtype as x): the forward's arithmetic."""
        return stream_codes(x, self.scale().to(x.dtype), self.qmax)


@register("ema_relu")
class MovingMaxReLU(MovingMax):
    """A ReLU, then codes 0 .. 2^b - 1 on the step moving_max / (2^b - 1) (the range is that of
    the ReLU's output); the gradient passes straight through inside [0, moving_max]."""

    def unit(self) -> Tensor:
        return self.running_max / self.qmax

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        self.track(x)
        step = self.unit().to(x.dtype)
        return round_ste((x / step).clamp(0, self.qmax)) * step

    def codes(self, x: Tensor) -> Tensor:
        return (x / self.unit().to(x.dtype)).clamp(0, self.qmax).round()
