"""One table and two functions turn a model's quantizable layers into search or fixed layers.

Model definitions use QuantConv2d / QuantLinear throughout; `to_search` swaps the chosen ones
for their composite counterparts, `to_fixed` gives every named layer fixed bit-widths. The
layer keeps its weights across a swap, so a search network can be retrained in place.
"""

from torch import nn

from edmips.nn.layers import (
    MIXED_LAYERS,
    QUANT_LAYERS,
    MixedConv2d,
    MixedLinear,
    QuantConv2d,
    QuantLinear,
)

SEARCH_TABLE = {QuantConv2d: MixedConv2d, QuantLinear: MixedLinear}
FIXED_TABLE = {mixed: fixed for fixed, mixed in SEARCH_TABLE.items()}


def quantizable_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS + MIXED_LAYERS)]


def first_and_last(model: nn.Module) -> tuple[str, str]:
    """The first conv and the last linear layer, which EdMIPS leaves out of the search."""
    names = quantizable_names(model)
    convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)]
    linears = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
    return convs[0], linears[-1]


def default_searched(
    model: nn.Module, skip_first: bool = True, skip_last: bool = True
) -> list[str]:
    """Every conv/linear, less the first conv and the last linear unless asked for."""
    first, last = first_and_last(model)
    skipped = {first} if skip_first else set()
    skipped |= {last} if skip_last else set()
    return [n for n in quantizable_names(model) if n not in skipped]


def _rebuild(layer: nn.Module, cls: type, **bits) -> nn.Module:
    kw = dict(bias=layer.bias is not None, per_channel=layer.per_channel)
    if isinstance(layer, nn.Conv2d):
        args = (layer.in_channels, layer.out_channels, layer.kernel_size)
        kw.update(
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            input_pool=layer.input_pool,
        )
    else:
        args = (layer.in_features, layer.out_features)
        kw.update(pool_input=layer.pool_input)
    new = cls(*args, **kw, **bits).to(layer.weight.device)
    new.weight.data.copy_(layer.weight.data)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data)
    if hasattr(layer, "cost"):
        new.cost = layer.cost
    return new


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def to_search(model: nn.Module, names: list[str], wbits, abits, shared=True, alpha_init=0.01):
    """Make the named layers composite over the candidate bit-widths (in place)."""
    for name in names:
        layer = model.get_submodule(name)
        keep_input = layer.abits is None  # an input that arrives quantized stays as it is
        new = _rebuild(
            layer,
            SEARCH_TABLE[type(layer)],
            wbits=tuple(wbits),
            abits=None if keep_input else tuple(abits),
            shared=shared,
            alpha_init=alpha_init,
        )
        _swap(model, name, new)
    return model


def to_fixed(model: nn.Module, bits: dict[str, tuple[int, int]]):
    """Give each named layer fixed (wbits, abits) (in place); composite layers become fixed.

    A non-shared composite layer keeps the weights of the chosen weight candidate.
    """
    for name, (wbits, abits) in bits.items():
        layer = model.get_submodule(name)
        abits = None if layer.abits is None else abits
        if isinstance(layer, MIXED_LAYERS):
            new = _rebuild(layer, FIXED_TABLE[type(layer)], wbits=wbits, abits=abits)
            if not layer.shared:
                chosen = [layer.weight, *layer.extra_weights][layer.wbits.index(wbits)]
                new.weight.data.copy_(chosen.data)
            _swap(model, name, new)
        else:
            layer._init_bits(wbits, abits, layer.per_channel)  # checks the bit-widths
    return model
