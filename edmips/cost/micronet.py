"""The MicroNet challenge score (NeurIPS 2019) of an architecture, from its layers' bits.

    score = parameter storage / reference parameters + math operations / reference operations

as the challenge scores an entry (micronet-challenge.github.io, "Scoring"), both counted in
32-bit units, a b-bit value counting b/32 of one:
    storage  sum params * w / 32
    math     sum FLOPs * max(w, a) / 32 + FLOPs * ADD_BITS / 32
A layer's FLOPs here are its multiply-accumulates (edmips.cost.layers): each is one
multiplication, at the wider of its two operands (as the micronet seed's cost script counts
them, volcacius/micronet_competition competition/models/compute_micronet_cost.py), and one
addition into the accumulator, counted at ADD_BITS = 32, full precision (the challenge's
counting tool, google-research micronet_challenge/counting.py, counts a 32-bit addition as one
operation; the seed counts its accumulators' exact widths, which lowers its score a little).

The references are the challenge's: ImageNet by MobileNetV2 (width 1.4), 6.9M parameters and
1170M math operations (the seed's cost_vars.py: 6.9e6 * 32 and 1170e6 * 32 bits); CIFAR-100
by WideResNet-28-10, 36.5M parameters and 10.49B math operations. The challenge had no
CIFAR-10 track: a cifar data set (cifar10 included) is scored against its CIFAR track's
reference, any other (synthetic data included) against the ImageNet one, the challenge's
headline track and the micronet seed's ("Cost: 0.5558").

Counted: the layers the architecture lists (its quantized convolutions and linear layers).
Not counted: layers outside the file (the float first and last layers of a search that skips
them), biases, batch norms and activation thresholds, which the challenge counts too; so the
score compares architectures of one network, and is a lower bound of the challenge's own.
"""

from dataclasses import dataclass

from edmips.cost.layers import LayerCost

ADD_BITS = 32


@dataclass(frozen=True)
class Reference:
    network: str
    params: float
    math_ops: float


IMAGENET = Reference("MobileNetV2 (width 1.4)", 6.9e6, 1.17e9)
CIFAR100 = Reference("WideResNet-28-10", 36.5e6, 10.49e9)


def reference_for(data: str | None) -> Reference:
    """The challenge's reference network for a data set's name (ImageNet's by default)."""
    return CIFAR100 if data is not None and data.lower().startswith("cifar") else IMAGENET


def micronet_score(
    costs: list[LayerCost], wbits: list[int], abits: list[int], data: str | None = None
) -> float:
    """The challenge's score of the layers at these bits, against `data`'s reference."""
    ref = reference_for(data)
    storage = sum(c.params * w for c, w in zip(costs, wbits, strict=True)) / 32
    mults = sum(c.flops * max(w, a) for c, w, a in zip(costs, wbits, abits, strict=True)) / 32
    adds = sum(c.flops for c in costs) * ADD_BITS / 32
    return storage / ref.params + (mults + adds) / ref.math_ops
