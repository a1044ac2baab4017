"""Activation memory: input_numel * a bits per layer, summed over the layers, stated as bits
per activation element (the total over the layers' input elements, per sample): a budget on
the activations the searched layers read, as weight_size is one on the weights they hold.

Why the sum and not the largest tensor: a budget is held by a price on per-layer tables and
met by a dynamic program over their summed cost (edmips.search.budget), so a cost must add up
over the layers. The sum does (it is also the traffic of a network that streams every
activation through memory once). The largest single tensor is a maximum, which no per-layer
table or price expresses: a RAM limit on it is a cap on each layer's own input bits
(input_numel * a <= cap), a constraint on the space, not a budget to spend.

Each layer counts the tensor it quantizes itself: two layers reading one tensor (a block's
first conv and its shortcut) read it at their own bits, so it counts twice.
"""

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel, register


@register
class ActivationMemory(CostModel):
    name = "activation_memory"
    unit = "bits per activation (activation_memory)"

    def entry(self, layer: LayerCost, w: int, a: int) -> int:
        return layer.input_numel * a

    def size(self, layer: LayerCost) -> int:
        return layer.input_numel

    def factors(self, wspace, aspace) -> tuple[list, list]:
        return [1] * len(wspace), list(aspace)
