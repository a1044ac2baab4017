"""Learned rounding of max-abs weights, `ptq.rounding=adaround ptq.reconstruction=layer`:
AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Layer by layer, in the order the network runs them, each weight's code is its floor on the
max-abs grid plus h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1), V starting where h(V)
is the weight's fractional part. Adam minimises the layer's output error against the float
network's output of that layer, the squared error summed over channels and averaged over
positions and images, with the layer's input taken from the network quantized so far (the
layers before it already rounded: AdaRound's asymmetric reconstruction, so a layer also makes up
for the error arriving at it), plus `regularization` (the paper's lambda) times
sum(1 - |2h - 1|^beta), which drives every h to 0 or 1: off for the first WARMUP of the
iterations, then beta falls linearly from 20 to 2. A weight rounds up where h(V) >= 1/2.

The grid stays the calibration's. The weights at a channel's max |w| keep their code, so the
scale max|W_c| / max_code is kept; every code is the floor or the ceiling of the weight's level
(at most one level from nearest) within the narrow range. The codes go back into `layer.weight`
as `codes * scale`, the top codes as the channel's own max |w| (the float product
`max_code * scale` can miss it by a unit in the last place and move the scale), so nearest
rounding of the stored weights gives the learned codes on the same scale: the export and its
integer check are those of any max-abs network.

`ptq.reconstruction=block` (the default) learns the same roundings (LearnedRounding) from each
residual block's output instead of each layer's, with the activation clips
(edmips.ptq.reconstruct).

Bias correction moves the quantized weights toward the float weights' mean, which the stored
weights then are: after AdaRound it has nothing left to correct, so AdaRound replaces it
(conf/ptq.yaml's default is accepted and not applied; another value is refused).
"""

import logging
from dataclasses import dataclass
from functools import partial

import torch
from rich.progress import track
from torch import Tensor, nn

from edmips.nn.layers import QUANT_LAYERS
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.primitives import FULL_PRECISION

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # h's stretch beyond [0, 1]: h reaches 0 and 1 at a finite V
BETA_START, BETA_END = 20.0, 2.0  # the regularizer's exponent, annealed
WARMUP = 0.2  # the first iterations fit the output alone, before the regularizer
LEARNING_RATE = 3e-2  # Adam on V, which moves ~lr a step: AIMET's 1e-3 is for 10,000 steps


@dataclass(frozen=True)
class Settings:
    """conf/ptq.yaml's `ptq.adaround` (its defaults are there; edmips.ptq.rounding reads it)."""

    iterations: int
    images: int
    batch_size: int
    regularization: float
    drop: float = 0.0  # QDrop's probability, in block reconstruction (edmips.ptq.reconstruct)


@dataclass(frozen=True)
class LayerResult:
    """A layer's output error (as the loss measures it) on every image, before and after."""

    nearest_error: float
    learned_error: float
    changed: int  # weights rounded the other way than nearest
    weights: int


def learnable(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights are quantized, as the network names them."""
    layers = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, QUANT_LAYERS) or layer.weight_quant.bits >= FULL_PRECISION:
            continue
        q = layer.weight_quant
        if not isinstance(q, MaxAbsWeight):
            raise ValueError(
                f"ptq.rounding=adaround: layer {name}'s weight quantizer ({q.name}) is not max-abs"
            )
        if getattr(layer, "folded_bn", None) is not None or q.corrected:
            raise ValueError(
                f"ptq.rounding=adaround: layer {name} quantizes a folded or corrected weight"
            )
        layers[name] = layer
    return layers


def round_network(
    model: nn.Module, float_net: nn.Module, images: Tensor, settings: Settings, seed: int = 0
) -> dict[str, LayerResult]:
    """Every learnable layer of `model` rounded in turn, against `float_net` (the same network at
    full precision, same layer names) on `images`; {layer: result}."""
    model.eval()
    float_net.eval()
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for name, layer in _in_run_order(model, learnable(model), images[:1]).items():
        inputs = _captured(model, layer, images, settings.batch_size, output=False)
        float_layer = float_net.get_submodule(name)
        targets = _captured(float_net, float_layer, images, settings.batch_size, output=True)
        results[name] = round_layer(layer, inputs, targets, settings, generator, name)
        log.debug("adaround %s: %s", name, results[name])
    return results


@torch.no_grad()
def _in_run_order(model: nn.Module, layers: dict[str, nn.Module], image: Tensor) -> dict:
    """The layers in the order a forward runs them (a layer's input then comes from layers
    already rounded); a layer the forward never runs has nothing to learn from and is left."""
    order = []
    handles = [
        layer.register_forward_pre_hook(lambda m, args, name=name: order.append(name))
        for name, layer in layers.items()
    ]
    try:
        model(image)
    finally:
        for handle in handles:
            handle.remove()
    return {name: layers[name] for name in dict.fromkeys(order)}


class _Stop(Exception):
    """Raised by a capturing hook: the rest of the network is not needed."""


@torch.no_grad()
def _captured(model: nn.Module, module: nn.Module, images: Tensor, batch_size: int, output: bool):
    """`module`'s input (or output) as `model` runs `images`, each forward stopped there."""
    got = []

    def keep(value):
        got.append(value.detach())
        raise _Stop

    if output:
        handle = module.register_forward_hook(lambda m, args, out: keep(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: keep(args[0]))
    try:
        for x in images.split(batch_size):
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(got)


@torch.no_grad()
def layer_input(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """What the layer's weights multiply and its bias on the accumulator grid (the layer's own
    `operands`): fixed while the rounding is learned, as the scale is."""
    x, pool_size = layer.operands(x)
    return x, layer.quant_bias(pool_size)


def rectified_sigmoid(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def beta_at(step: int, iterations: int) -> float | None:
    """The regularizer's exponent at `step`; None during the warm-up."""
    warm = int(WARMUP * iterations)
    if step < warm:
        return None
    done = (step - warm) / max(1, iterations - warm)
    return BETA_END + (BETA_START - BETA_END) * (1 - done)


def output_error(out: Tensor, target: Tensor) -> Tensor:
    """The squared error summed over channels, averaged over positions and images: what a
    layer's or a block's rounding is learned to lower."""
    return ((out - target) ** 2).sum(1).mean()


def mean_error(forward, x: Tensor, targets: Tensor, batch_size: int) -> float:
    """output_error of `forward` on every image (a mean over them)."""
    with torch.no_grad():
        total = sum(
            float(output_error(forward(xb), tb)) * len(xb)
            for xb, tb in zip(x.split(batch_size), targets.split(batch_size))
        )
    return total / len(x)


def drawn(count: int, settings: Settings, generator: torch.Generator | None) -> Tensor:
    """A step's images: `settings.batch_size` of the `count` drawn."""
    return torch.randint(count, (min(settings.batch_size, count),), generator=generator)


def regularized(error: Tensor, roundings, step: int, settings: Settings) -> Tensor:
    """The error plus the roundings' annealed regularizer, once the warm-up is over."""
    beta = beta_at(step, settings.iterations)
    if beta is None or settings.regularization <= 0:
        return error
    return error + settings.regularization * sum(r.regularizer(beta) for r in roundings)


class LearnedRounding:
    """One layer's weights as floor(level) + h(V) on the layer's max-abs grid: `soft()` while V
    is learned, `codes()` once it is; the weights at a channel's max |w| keep their code, so the
    scale is kept (a channel of zeros keeps its zeros)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        q = layer.weight_quant
        w = layer.weight.detach()
        nearest, self.scale = q.integer(w)
        top = q.channel_max_codes()
        if isinstance(top, Tensor):
            top = top.view(-1, *([1] * (w.dim() - 1))).to(w.dtype)
        self.top = top
        levels = (w / self.scale).clamp(-top, top)
        if self.scale.dim():  # one scale per channel: each channel's max |w| sets its scale
            self.peak = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
        else:
            self.peak = w.abs().amax()
        self.pinned = (w.abs() == self.peak) | (self.peak == 0)
        self.floor = levels.floor()
        frac = levels - self.floor
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))  # h(v) = frac
        self.nearest = nearest.to(w.dtype)
        self.free = (~self.pinned).to(w.dtype)

    def _weights(self, codes: Tensor) -> Tensor:
        return torch.where(self.pinned, self.nearest, codes.clamp(-self.top, self.top)) * self.scale

    def soft(self) -> Tensor:
        """The weights at h(V): differentiable in V."""
        return self._weights(self.floor + rectified_sigmoid(self.v))

    def codes(self) -> Tensor:
        """The learned codes: up where h(V) >= 1/2."""
        up = (self.v.detach() >= 0).to(self.floor.dtype)
        return torch.where(self.pinned, self.nearest, (self.floor + up).clamp(-self.top, self.top))

    def regularizer(self, beta: float) -> Tensor:
        """sum(1 - |2h - 1|^beta) over the free weights: zero once every h is 0 or 1."""
        h = rectified_sigmoid(self.v)
        return ((1 - (2 * h - 1).abs().pow(beta)) * self.free).sum()

    def changed(self) -> int:
        return int((self.codes() != self.nearest).sum())

    def store(self) -> None:
        """The learned codes into `layer.weight` (see _store)."""
        _store(self.layer, self.codes(), self.scale, self.top, self.peak)


def round_layer(
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    settings: Settings,
    generator: torch.Generator | None = None,
    name: str = "layer",
) -> LayerResult:
    """Learn the rounding of `layer`'s weights so its output on `inputs` (what arrives at the
    layer) approaches `targets`, and store the rounded weights in `layer.weight`."""
    rounding = LearnedRounding(layer)
    x, bias = layer_input(layer, inputs)

    def error_with(weight: Tensor) -> float:
        forward = partial(layer.weighted, weight=weight, bias=bias)
        return mean_error(forward, x, targets, settings.batch_size)

    nearest_error = error_with(rounding.nearest * rounding.scale)
    optimizer = torch.optim.Adam([rounding.v], lr=LEARNING_RATE)
    with torch.enable_grad():
        for step in track(
            range(settings.iterations), description=f"adaround {name}", transient=True
        ):
            pick = drawn(len(x), settings, generator)
            error = output_error(layer.weighted(x[pick], rounding.soft(), bias), targets[pick])
            loss = regularized(error, [rounding], step, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    codes = rounding.codes()
    learned_error = error_with(codes * rounding.scale)
    changed = rounding.changed()
    rounding.store()
    return LayerResult(nearest_error, learned_error, changed, int(codes.numel()))


@torch.no_grad()
def _store(layer: nn.Module, codes: Tensor, scale: Tensor, top, peak: Tensor) -> None:
    """`layer.weight` = codes * scale, with the top codes at the channel's max |w|; checked to
    round back to the same codes on the same scale."""
    values = torch.where(codes.abs() == top, codes.sign() * peak, codes * scale)
    layer.weight.copy_(values)
    stored, kept = layer.weight_quant.integer(layer.weight.detach())
    if not (torch.equal(stored, codes.to(stored.dtype)) and torch.equal(kept, scale)):
        raise RuntimeError(f"adaround: {layer} does not round back to its learned codes")
