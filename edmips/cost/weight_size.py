"""Weight size: params * w bits, stated as bits per weight (the model's size in bits over its
number of weights): a budget on the memory the weights take."""

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel, register


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


def weight_bits(costs: list[LayerCost], wbits: list[int]) -> int:
    return sum(c.params * w for c, w in zip(costs, wbits, strict=True))
