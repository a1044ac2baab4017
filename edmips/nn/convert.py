"""One table and two functions turn a model's quantizable layers into search or fixed layers.

Model definitions use QuantConv2d / QuantLinear throughout; `to_search` swaps the chosen ones
for their composite counterparts, `to_fixed` gives every named layer fixed bit-widths. The
layer keeps its weights and its quantizers' names across a swap (a family given replaces
them), so a search network can be retrained in place.
"""

import torch
from torch import fx, nn

from edmips.nn.fold import LayerTracer
from edmips.nn.layers import (
    INPUT_BITS,
    MIXED_LAYERS,
    QUANT_LAYERS,
    MixedConv2d,
    MixedLinear,
    QuantConv2d,
    QuantLinear,
    input_quantizer,
)
from edmips.quant import FULL_PRECISION
from edmips.quant.protocol import ActivationQuantizer, check_bits, quantizers
from edmips.quant.registry import Family, get

SEARCH_TABLE = {QuantConv2d: MixedConv2d, QuantLinear: MixedLinear}
FIXED_TABLE = {mixed: fixed for fixed, mixed in SEARCH_TABLE.items()}
FIXED_BITS = 8  # the unsearched first conv, its output, and the classifier


def quantizable_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS + MIXED_LAYERS)]


def first_and_last(model: nn.Module) -> tuple[str, str]:
    """The first and the last quantized layer, which EdMIPS leaves out of the search: the first
    conv and the classifier, the last linear layer, or the last layer where the network has no
    linear one (SqueezeNet's classifier is a conv)."""
    names = quantizable_names(model)
    if not names:
        raise ValueError(f"model {type(model).__name__}: no conv or linear layer to quantize")
    convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)]
    linears = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
    return (convs or names)[0], (linears or names)[-1]


def fixed_ends(model: nn.Module, in_arch=()) -> dict[str, tuple[int, int]]:
    """The first conv and the classifier at FIXED_BITS where an architecture leaves them out:
    built so by a model, and made its run's family's like the other layers (an int8sim
    network's first conv is then a QLinearConv too)."""
    return {name: (FIXED_BITS, FIXED_BITS) for name in first_and_last(model) if name not in in_arch}


def default_searched(
    model: nn.Module, skip_first: bool = True, skip_last: bool = True
) -> list[str]:
    """Every conv/linear, less the first and the last layer (`first_and_last`) unless asked for."""
    first, last = first_and_last(model)
    skipped = {first} if skip_first else set()
    skipped |= {last} if skip_last else set()
    return [n for n in quantizable_names(model) if n not in skipped]


def quantizer_names(model: nn.Module, names: list[str], family: Family | None = None):
    """(wquant, aquant) of each named layer, as `to_fixed` with the family would make it."""
    found = []
    for name in names:
        layer = model.get_submodule(name)
        if family is None:
            found.append((layer.wquant, layer.aquant))
        else:
            found.append((family.weight, _input_quant_name(layer, family)))
    return found


def _input_quant_name(layer: nn.Module, family: Family) -> str:
    """What quantizes the layer's input under the family: its activation quantizer after a
    ReLU, its signed one where the input can be negative, or the image's."""
    kind = get(layer.aquant)
    if kind.defines_input:
        return layer.aquant
    return family.signed if kind.signed else family.activation


def input_space(aquant: str, abits, sbits=None) -> tuple[int, ...]:
    """The bit-widths a layer's input may take. After a ReLU, the activation space `abits`. A
    signed input (a residual sum, a linear bottleneck, a traced model's normalized image) is an
    8-bit tensor shared by all its readers; with a signed space `sbits` each reading layer
    requantizes it to bits of its own, and without one it reads the 8 bits. The image of
    edmips's ResNets is read at its 8 bits. `aquant` names the layer's input quantizer."""
    if get(aquant).defines_input:
        return (INPUT_BITS,)
    if reads_signed(aquant):
        return tuple(sbits) if sbits else (INPUT_BITS,)
    return tuple(abits)


def reads_signed(aquant: str) -> bool:
    """Whether a layer whose input quantizer `aquant` names reads a signed 8-bit tensor shared by
    all its readers (`input_space`)."""
    kind = get(aquant)
    return kind.signed and not kind.defines_input


def _quantizes_input(layer: nn.Module, abits) -> bool:
    """Whether the layer holds an input quantizer at `abits` (a bit-width or candidates): one
    after a ReLU always; one for a signed input only below the shared tensor's 8 bits (at 8
    bits or full precision it reads that tensor as it is)."""
    kind = get(layer.aquant)
    if kind.defines_input or abits is None:
        return False
    return not kind.signed or min(abits if isinstance(abits, tuple) else (abits,)) < INPUT_BITS


def _rebuild(layer: nn.Module, cls: type, family: Family | None, **bits) -> nn.Module:
    """The layer as `cls` with its shape and weights; its quantizers' names kept unless a family
    names others (an input that arrives quantized keeps the name of what quantized it)."""
    wquant, aquant = layer.wquant, layer.aquant
    if family is not None:
        wquant, aquant = family.weight, _input_quant_name(layer, family)
    kw = dict(bias=layer.bias is not None, per_channel=layer.per_channel)
    kw.update(wquant=wquant, aquant=aquant)
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
    if hasattr(layer, "arrives_through"):
        object.__setattr__(new, "arrives_through", layer.arrives_through)
    return new


def _at_bits(quantizers, bits: int):
    """The candidate quantizer of that bit-width (its state kept), or the first one at it."""
    for q in quantizers:
        if q.bits == bits:
            return q
    return quantizers[0].with_bits(bits)


def to_search(
    model: nn.Module, names: list[str], wbits, abits, shared=True, family=None, sbits=None
):
    """Make the named layers composite over the candidate bit-widths (in place): `abits` for
    inputs after a ReLU, `sbits` for signed ones (`input_space`). With a family the candidates
    are its quantizers, and the quantizers outside the layers its (`to_family`); without, the
    layer's own, their state kept."""
    if family is not None:
        to_family(model, family)
    for name in names:
        layer = model.get_submodule(name)
        space = input_space(layer.aquant, abits, sbits)
        own = _quantizes_input(layer, space)
        new = _rebuild(
            layer,
            SEARCH_TABLE[type(layer)],
            family,
            wbits=tuple(wbits),
            abits=space if own else None,
            shared=shared,
        )
        if family is None:
            new.weight_quants = nn.ModuleList(layer.weight_quant.with_bits(b) for b in wbits)
            if own and layer.input_quant is not None:
                new.input_quants = nn.ModuleList(layer.input_quant.with_bits(b) for b in space)
        model.set_submodule(name, new)
    return model


def to_fixed(model: nn.Module, bits: dict[str, tuple[int, int]], family=None):
    """Give each named layer fixed (wbits, abits) (in place); composite layers become fixed.

    Without a family a layer keeps its quantizers (a composite one, the chosen candidates),
    their state kept; with one it gets the family's, and so does every quantizer outside the
    layers (`to_family`). A non-shared composite layer keeps the weights of the chosen weight
    candidate.
    """
    if family is not None:
        to_family(model, family)
    for name, (wbits, abits) in bits.items():
        layer = model.get_submodule(name)
        abits = abits if _quantizes_input(layer, abits) else None
        if isinstance(layer, MIXED_LAYERS):
            new = _rebuild(layer, FIXED_TABLE[type(layer)], family, wbits=wbits, abits=abits)
            if family is None:
                new.weight_quant = _at_bits(layer.weight_quants, wbits)
                if abits is not None and layer.input_quants is not None:
                    new.input_quant = _at_bits(layer.input_quants, abits)
            if not layer.shared:
                chosen = [layer.weight, *layer.extra_weights][layer.wbits.index(wbits)]
                new.weight.data.copy_(chosen.data)
            model.set_submodule(name, new)
        else:
            _requantize(layer, wbits, abits, family)
    return model


def to_family(model: nn.Module, family: Family) -> nn.Module:
    """Every activation quantizer outside the conv/linear layers (a stem activation, a residual
    stream's, a signed input's) made the family's member of its sign at its bits (in place); one
    shared by several tensors stays shared. The image's quantizer stays (its scale made a power
    of two where the family's requantization needs one), and so do members already of the
    family and quantizers at bits the member does not take (a family of 2-4 bit quantizers, say,
    and an 8-bit stem), their state kept."""
    in_layers = {
        id(q)
        for layer in model.modules()
        if isinstance(layer, QUANT_LAYERS + MIXED_LAYERS)
        for q in layer.modules()
    }
    made: dict[int, ActivationQuantizer] = {}
    for parent in list(model.modules()):
        for name, q in list(parent.named_children()):
            if isinstance(q, ActivationQuantizer) and q.defines_input:
                if get(family.activation).power_of_two_image:
                    _round_image_scale(model, q)
                continue
            if not isinstance(q, ActivationQuantizer) or id(q) in in_layers:
                continue
            member = get(family.signed if q.signed else family.activation)
            if type(q) is member or q.bits not in (*member.supported_bits, FULL_PRECISION):
                continue
            if id(q) not in made:
                made[id(q)] = member(q.bits)
            setattr(parent, name, made[id(q)])
    for layer in model.modules():  # what a layer's input arrives through: the new member
        if id(getattr(layer, "arrives_through", None)) in made:
            object.__setattr__(layer, "arrives_through", made[id(layer.arrives_through)])
    return model


def _round_image_scale(model: nn.Module, image: ActivationQuantizer) -> None:
    """The image's scale made a power of two, and the weights of the layers that read its codes
    scaled by the inverse change, so that a float network's weights, loaded before, compute
    what they did (a checkpoint of this network, loaded after, brings its own)."""
    ratio = image.round_scale()
    if ratio == 1.0:
        return
    graph = model.graph if isinstance(model, fx.GraphModule) else LayerTracer().trace(model)
    modules = dict(model.named_modules())
    reads = [n for n in graph.nodes if n.op == "call_module" and modules[n.target] is image]
    for user in (u for n in reads for u in n.users if u.op == "call_module"):
        if isinstance(modules[user.target], QUANT_LAYERS + MIXED_LAYERS):
            with torch.no_grad():
                modules[user.target].weight.mul_(ratio)


def to_float(model: nn.Module, family: Family | None = None) -> nn.Module:
    """The float network (in place): every conv/linear at 32-bit weights and inputs, and every
    other quantizer (the image's, the residual streams') at full precision. The quantizers stay
    modules, set in place (a shared one stays shared), so the state dict keeps the quantized
    network's keys and its file loads into it."""
    to_fixed(model, {n: (FULL_PRECISION, FULL_PRECISION) for n in quantizable_names(model)}, family)
    for _, quantizer in quantizers(model):
        check_bits(type(quantizer), FULL_PRECISION)
        quantizer.bits = FULL_PRECISION
    return model


def _requantize(layer: nn.Module, wbits: int, abits: int | None, family: Family | None) -> None:
    """A fixed layer's quantizers at new bit-widths, in place (its parameters stay the ones an
    optimizer may hold)."""
    if family is None:
        layer.wbits = wbits
    else:
        layer.wquant = family.weight
        layer.weight_quant = get(family.weight)(wbits, layer.per_channel)
        layer.aquant = _input_quant_name(layer, family)
    if abits is None:
        layer.input_quant = None  # a signed input read at the shared tensor's 8 bits
    elif family is not None or layer.input_quant is None:
        layer.input_quant = input_quantizer(layer, layer.aquant, abits)
    else:
        layer.abits = abits
