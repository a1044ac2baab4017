"""Activation quantizers.

HWGQ (half-wave Gaussian quantizer): a ReLU whose positive part is uniformly quantized with a
fixed step, optimal for the unit-variance Gaussian that batch norm produces. Levels are
`step * {0, ..., 2^b - 1}`; the gradient is straight-through inside [0, clip] and zero outside.

StreamQuant: a signed 8-bit quantizer for the residual stream of a ResNet, whose range is not
normalized; its scale follows the running maximum of |x| (exponential moving average).
"""

import torch
from torch import Tensor, nn

from edmips.quant.weight import FULL_PRECISION

# Uniform steps for the positive half of a unit Gaussian (Lloyd-optimal, then made uniform).
# 1-4 bits are EdMIPS's constants; 5-8 bits were computed the same way.
HWGQ_STEPS = {1: 0.799, 2: 0.538, 3: 0.3217, 4: 0.185, 5: 0.103, 6: 0.0566, 7: 0.0307, 8: 0.0165}


def hwgq_clip(bits: int) -> float:
    return HWGQ_STEPS[bits] * (2**bits - 1)


class _RoundSTE(torch.autograd.Function):
    # A Function rather than `x + (round(x) - x).detach()`, whose float error would put the
    # values slightly off the integer grid.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """round() whose gradient is the identity."""
    return _RoundSTE.apply(x)


def hwgq(x: Tensor, bits: int) -> Tensor:
    """HWGQ fake quantization; 32 bits is a plain ReLU."""
    if bits >= FULL_PRECISION:
        return torch.relu(x)
    step = HWGQ_STEPS[bits]
    return round_ste(x.clamp(0.0, hwgq_clip(bits)) / step) * step


def hwgq_codes(x: Tensor, bits: int) -> Tensor:
    """Integer levels in [0, 2^b - 1] (same dtype as x)."""
    return torch.round(x.clamp(0.0, hwgq_clip(bits)) / HWGQ_STEPS[bits])


class StreamQuant(nn.Module):
    """Signed, narrow-range uniform quantizer with a scale from the EMA of max |x|.

    One instance is shared by every tensor that meets at a residual add (both inputs and the
    sum), so the add happens on one integer grid and the sum needs only a clamp.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.95):
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("running_max", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def scale(self) -> Tensor:
        return self.running_max / self.qmax

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                batch_max = x.detach().abs().amax().float().clamp_min(1e-8)
                # torch.where rather than `if`: the flag stays on the device (no host sync).
                ema = self.momentum * self.running_max + (1 - self.momentum) * batch_max
                self.running_max.copy_(torch.where(self.initialized, ema, batch_max))
                self.initialized.fill_(True)
        scale = self.scale().to(x.dtype)
        return round_ste(x.clamp(-self.qmax * scale, self.qmax * scale) / scale) * scale

    def codes(self, x: Tensor) -> Tensor:
        """Integer levels in [-qmax, qmax] (same dtype as x): the forward's arithmetic."""
        scale = self.scale().to(x.dtype)
        return torch.round(x.clamp(-self.qmax * scale, self.qmax * scale) / scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


class HWGQ(nn.Module):
    """HWGQ as a module, for fixed quantization points that belong to no conv (the stem)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return hwgq(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
