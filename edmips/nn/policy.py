"""Fixed bit-width policies: the non-searched allocations users of a seed start from.

`micronet` (the micronet seed's MobileNetV2 recipe): the first layer's weights at 8 bits,
depthwise convs' inputs and weights at 5, every other layer's at 4, the classifier included.
A layer whose input arrives quantized (the image, a signed tensor) reads it at 8 bits, as the
seed leaves its input preprocessing at 8 bits.
"""

from torch import nn

from edmips.nn.convert import first_and_last, quantizable_names
from edmips.nn.layers import INPUT_BITS, is_depthwise


def micronet(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(wbits, abits) of every quantizable layer."""
    first, _ = first_and_last(model)
    bits = {}
    for name in quantizable_names(model):
        layer = model.get_submodule(name)
        w = 8 if name == first else 5 if is_depthwise(layer) else 4
        a = INPUT_BITS if layer.abits is None else 5 if is_depthwise(layer) else 4
        bits[name] = (w, a)
    return bits


POLICIES = {"micronet": micronet}
