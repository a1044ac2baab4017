"""Activations on a learned step (LSQ, Esser et al. 2020), for the `learned` family.

Codes round(clamp(x / s, lowest, qmax)) with the step s a parameter: unsigned (`lsq`, a ReLU
like HWGQ) codes 0 .. 2^b - 1, signed (`lsq_signed`) the narrow range -(2^(b-1) - 1) ..
2^(b-1) - 1. The gradient of x is straight-through inside the range; the gradient of s is
LSQ's, round(x/s) - x/s inside and the range's end outside, scaled by g = 1 / sqrt(n * qmax)
(n: the values each step quantizes per image) so that the step learns at the pace of the
weights.

The step is one per tensor, except at the input of a depthwise conv, where it is one per
channel (`channels=C`, as micronet does; edmips.nn.layers.input_quantizer decides): such a conv
never sums over channels, so each input channel's step folds into its output channels'
accumulator scales and the thresholds after them, and a channel of small activations is not
rounded on the grid of the largest one. Inputs are then N x C x ...; n is the values of one
channel of one image.

LSQ rather than PACT: LSQ learns the step itself, which is what the integer graph needs, and its
gradient sees the rounding error, so the step settles where quantization loses least at each
bit-width; PACT learns only a clip, with a gradient blind to rounding, and only after a ReLU.

The step starts at LSQ's 2 mean|x| / sqrt(qmax) (per channel: over that channel) from the first
batch seen in training (or under `calibration(model)`); `initial_step` set before that fixes
it instead, on every channel (6 / (2^b - 1) for the input of a ReLU6 network's layer, as
micronet starts its learned scales at 6.0).
"""

import math

import torch
from torch import Tensor, nn

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
    per_channel_input = True

    def __init__(self, bits: int, channels: int = 1):
        super().__init__(bits)
        # A scalar for one step, so the state dicts of per-tensor steps keep their shape.
        self.step = nn.Parameter(torch.ones(channels) if channels > 1 else torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # mirrors `initialized` once read, so steps need no host sync

    @property
    def channels(self) -> int:
        return self.step.numel()

    def unit(self) -> Tensor:
        return self.step.detach().clamp_min(MIN_STEP)

    def is_calibrated(self) -> bool:
        return bool(self.initialized)

    def initial_step(self, step: float) -> None:
        """Start the step (every channel's) here instead of from the first batch."""
        self._set(torch.full_like(self.step, step))

    def _set(self, step: Tensor) -> None:
        with torch.no_grad():
            self.step.copy_(step)
            self.initialized.fill_(True)
        self._ready = True

    def _shaped(self, step: Tensor, x: Tensor) -> Tensor:
        """The step broadcast over x: [1, C, 1, ...] per channel."""
        return step if step.dim() == 0 else step.view(1, -1, *[1] * (x.dim() - 2))

    def _start(self, x: Tensor) -> None:
        if self._ready:
            return
        if bool(self.initialized):  # loaded from a state dict
            self._ready = True
        elif self.updates_range():
            x = x.detach().abs()
            mean = x.mean()
            if self.channels > 1:
                # A channel silent in the first batch starts on the tensor's step rather than
                # on MIN_STEP, from which its gradient would take long to climb.
                per_channel = x.transpose(0, 1).flatten(1).mean(1)
                mean = torch.where(per_channel > 0, per_channel, mean)
            self._set(2 * mean / math.sqrt(self.qmax))

    def forward(self, x: Tensor) -> Tensor:
        if not self.signed:
            x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        self._start(x)
        n = x[0].numel() if self.channels == 1 else x[0, 0].numel()
        g = 1.0 / math.sqrt(n * self.qmax)
        step = self._shaped(grad_scaled(self.step, g).clamp_min(MIN_STEP).to(x.dtype), x)
        return self.quantize(x, step)

    def codes(self, x: Tensor) -> Tensor:
        return self.levels(x, self._shaped(self.unit().to(x.dtype), x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before per-channel steps holds one step for every channel.
        key = prefix + "step"
        if key in state_dict and state_dict[key].dim() == 0 and self.channels > 1:
            state_dict[key] = state_dict[key].expand(self.channels).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        step = self.step.detach()
        if self.channels == 1:
            return f"bits={self.bits}, step={float(step):.4g}"
        lo, hi = float(step.min()), float(step.max())
        return f"bits={self.bits}, channels={self.channels}, step={lo:.4g}..{hi:.4g}"


@register("lsq")
class LearnedStepReLU(LearnedStep):
    signed = False


@register("lsq_signed")
class LearnedStepSigned(LearnedStep):
    signed = True
