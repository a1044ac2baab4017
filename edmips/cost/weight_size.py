"""Weight size: params * w bits, stated as bits per weight (the model's size in bits over its
number of weights): a budget on the memory the weights take.

The table prices the searched layers; the quantized layers outside the search (the first conv
and the classifier, at their fixed bits) take `fixed_weight_bits`, which a budget in weight size
counts too (edmips.cost.budget_spec) and found.json's weight_bits_total includes.
"""

from torch import nn

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel, register
from edmips.nn.layers import QUANT_LAYERS


@register
class WeightSize(CostModel):
    name = "weight_size"
    unit = "bits per weight (weight_size)"

    def entry(self, layer: LayerCost, w: int, a: int) -> int:
        return layer.params * w

    def size(self, layer: LayerCost) -> int:
        return layer.params

    def factors(self, wspace, aspace) -> tuple[list, list]:
        return list(wspace), [1] * len(aspace)


def fixed_weight_bits(model: nn.Module, searched: list[str]) -> int:
    """Bits of the weights of the model's fixed-bit layers that are not in `searched`."""
    return sum(
        m.weight.numel() * m.wbits
        for name, m in model.named_modules()
        if isinstance(m, QUANT_LAYERS) and name not in searched
    )
