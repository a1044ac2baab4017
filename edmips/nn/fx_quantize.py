"""`quantize(model)`: any traceable PyTorch model made of EdMIPS's quantized layers.

The model is traced with torch.fx; every nn.Conv2d (grouped and depthwise included) and
nn.Linear becomes a QuantConv2d / QuantLinear holding the same weights. Each layer's input
quantizer keeps the float network's meaning:

- where the input is non-negative (the output of a ReLU or ReLU6, possibly through pooling,
  flattening, dropout or a concatenation of such tensors) the layer's own HWGQ, which is a
  ReLU at 32 bits and so changes nothing there. After a ReLU6 HWGQ's clip (below 6 at every
  bit-width up to 8) is the tighter one, so it alone clips;
- elsewhere (a normalized image, a linear bottleneck, a residual sum) the layer takes its
  input as it comes (`abits=None`) and the family's signed quantizer (edmips's: a moving
  range, edmips.quant.ema), one per producing tensor and shared by all its consumers, is put
  in front of it.

Two more rewrites make the network computable with integers only (edmips.export.lower):

- both operands of a residual add pass through one signed quantizer, so they meet on one grid;
- a layer takes over the average pool in front of it: a conv as its `input_pool`, a linear
  after a global pool (an adaptive one, or a mean over the positions; through flatten and
  dropout) as `pool_input=True`. It quantizes first
  and averages after, so the pool sums integers (edmips's own ResNet classifier does the same).

At 32 bits all of these are the identity, so the converted network is the float one.

The result is a fixed-bit network; `to_search` / `to_fixed` turn it into the search network
or retrain bit-widths exactly as for edmips's own models.
"""

import copy
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torchvision.ops import StochasticDepth

from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.quant import EDMIPS, FULL_PRECISION, Family
from edmips.quant.protocol import ActivationQuantizer
from edmips.quant.registry import get

SIGNED_BITS = 8  # signed layer inputs (their bit-width is not searched)
SIGNED_PREFIX = "signed_quant"  # where the signed quantizers live in the converted model

_NONNEG_MODULES = (nn.ReLU, nn.ReLU6)
_NONNEG_FUNCTIONS = {F.relu, torch.relu, F.relu6}
_NONNEG_METHODS = {"relu", "relu_"}
# Operations whose output is non-negative when every tensor they read is.
_SIGN_KEEPING_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
)
_SIGN_KEEPING_FUNCTIONS = {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
    torch.flatten,
    torch.cat,
}
_SIGN_KEEPING_METHODS = {
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "mean",
    "transpose",
    "permute",
    "chunk",
    "split",
}
# Functions that only move the values of their first argument (the rest: shapes, dims, indices).
_MOVING_FUNCTIONS = {torch.transpose, torch.permute, torch.reshape, torch.chunk, torch.split}
_MOVING_FUNCTIONS |= {torch.flatten, operator.getitem}


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def is_nonnegative(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the tensor a node produces is >= 0 by construction."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _NONNEG_MODULES):
            return True
        keeps = isinstance(module, _SIGN_KEEPING_MODULES)
    elif node.op == "call_function":
        if node.target in _NONNEG_FUNCTIONS:
            return True
        keeps = node.target in _SIGN_KEEPING_FUNCTIONS | _MOVING_FUNCTIONS
    elif node.op == "call_method":
        if node.target in _NONNEG_METHODS:
            return True
        keeps = node.target in _SIGN_KEEPING_METHODS
    else:
        return False
    # A method's values are its tensor's, a moving function's its first argument's (the other
    # arguments, shapes and indices, may be computed from a tensor's size)
    moving = node.op == "call_method" or node.target in _MOVING_FUNCTIONS
    inputs = [node.args[0]] if moving else _tensor_args(node)
    return keeps and bool(inputs) and all(is_nonnegative(n, modules) for n in inputs)


def quant_layer(
    layer: nn.Module, wbits: int, abits: int | None, family: Family = EDMIPS
) -> nn.Module:
    """A QuantConv2d / QuantLinear with the layer's shape, weights and bias, quantized by the
    family (an input that arrives quantized, `abits=None`, by its signed quantizer)."""
    aquant = family.activation if abits is not None else family.signed
    kw = dict(bias=layer.bias is not None, wbits=wbits, abits=abits)
    kw.update(wquant=family.weight, aquant=aquant)
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"conv padding_mode {layer.padding_mode!r} is not supported")
        new = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            **kw,
        )
    else:
        new = QuantLinear(layer.in_features, layer.out_features, **kw)
    new = new.to(layer.weight.device)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def quantize(
    model: nn.Module,
    wbits: int = FULL_PRECISION,
    abits: int = FULL_PRECISION,
    signed_bits: int = SIGNED_BITS,
    filter: Callable[[str, nn.Module], bool] | None = None,
    family: Family = EDMIPS,
) -> fx.GraphModule:
    """The model traced, with every conv/linear (those `filter(name, layer)` accepts) made a
    fixed-bit quantized layer of the family; layer names stay those of the model."""
    gm = fx.GraphModule(model, _Tracer().trace(model))
    signed_quant = get(family.signed)
    _quantize_adds(gm, lambda: signed_quant(signed_bits))
    modules = dict(gm.named_modules())
    signed: dict[fx.Node, fx.Node] = {}  # producer -> its signed quantizer's node
    _quantize_tables_and_products(gm, signed, lambda: signed_quant(signed_bits))
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        layer = modules[node.target]
        if type(layer) not in (nn.Conv2d, nn.Linear):
            continue
        if filter is not None and not filter(node.target, layer):
            continue
        pool = _fold_pool(node, layer, modules)
        source = node.args[0]
        nonneg = is_nonnegative(source, modules)
        new = quant_layer(layer, wbits, abits if nonneg else None, family)
        if isinstance(new, QuantLinear):
            new.pool_input = pool is not None
        else:
            new.input_pool = pool
        gm.set_submodule(node.target, new)
        if not nonneg:
            if source not in signed:
                name = f"{SIGNED_PREFIX}.{node.target.replace('.', '_')}"
                gm.add_submodule(name, signed_quant(signed_bits))
                with gm.graph.inserting_after(source):
                    signed[source] = gm.graph.call_module(name, (source,))
            node.replace_input_with(source, signed[source])
            if any(user.op == "output" for user in node.users):
                # the classifier: its logits are its accumulator, so its bias must be on the
                # grid of its input (a plain attribute, not a submodule: the network holds
                # that quantizer once). Other layers keep a float bias, which the quantizer
                # after them absorbs: one on the grid would meet that quantizer's ties exactly
                # (a gate's sigmoid(0) = 0.5 halfway between two levels), where the float64
                # reference's sums land a unit in the last place to either side.
                quantizer = gm.get_submodule(signed[source].target)
                object.__setattr__(new, "arrives_through", quantizer)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm.train(model.training)


_PASS_MODULES = (nn.Dropout, nn.Flatten, nn.Identity)
_PASS_FUNCTIONS = {F.dropout, torch.flatten}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous"}


def _passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Flatten, reshape, dropout and identity: what may sit between a pool and a linear."""
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _avg_pool(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The average pool a node computes, as a module, if it is one and has no other reader."""
    if len(node.users) != 1:
        return None
    if node.op == "call_module" and isinstance(
        modules[node.target], (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    ):
        return copy.deepcopy(modules[node.target])
    if node.op == "call_function" and node.target in (F.avg_pool2d, F.adaptive_avg_pool2d):
        call = normalize_function(
            node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
        )
        if call is None:
            return None
        kw = {k: v for k, v in call.kwargs.items() if k != "input"}
        if node.target is F.avg_pool2d:
            return nn.AvgPool2d(**kw)
        return nn.AdaptiveAvgPool2d(**kw)
    if _is_global_mean(node):
        return nn.AdaptiveAvgPool2d(1)
    return None


def _is_global_mean(node: fx.Node) -> bool:
    """x.mean([2, 3]) or torch.mean(x, (2, 3)) (keepdim or not): a global average pool."""
    method = node.op == "call_method" and node.target == "mean"
    if not (method or (node.op == "call_function" and node.target is torch.mean)):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return isinstance(dims, (list, tuple)) and sorted(d % 4 for d in dims) == [2, 3]


def _fold_pool(node: fx.Node, layer: nn.Module, modules: dict[str, nn.Module]) -> nn.Module | None:
    """Let the layer take over an average pool in front of it, so that it quantizes before
    pooling: conv(avg_pool(x)) -> conv(x) with the pool as its `input_pool`, and
    linear(dropout(flatten(global_avg_pool(x)))) -> linear(dropout(x)) with `pool_input`.
    Returns the pool taken over (rewiring the graph), or None."""
    if isinstance(layer, nn.Conv2d):
        pool = _avg_pool(node.args[0], modules)
        if pool is not None:
            node.args = (node.args[0].args[0],)
        return pool
    chain, source = [], node.args[0]
    while _passes_through(source, modules) and len(source.users) == 1:
        chain.append(source)
        source = source.args[0]
    pool = _avg_pool(source, modules)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
        return None
    x = source.args[0]
    for n in reversed(chain):  # dropouts stay: elementwise, they act as well on the map
        if n.target is F.dropout or isinstance(modules.get(n.target), nn.Dropout):
            n.args = (x, *n.args[1:])
            _out_of_place(n, modules)
            x = n
    node.args = (x,)
    return pool


def _out_of_place(dropout: fx.Node, modules: dict[str, nn.Module]) -> None:
    """A dropout moved onto the map computes out of place: in place, it would overwrite what it
    now reads, an in-place ReLU's output whose gradient needs it (MNASNet's head) rather than
    the mean it read before. The same values either way."""
    if dropout.op == "call_module":
        modules[dropout.target].inplace = False
    elif len(dropout.args) > 3:  # F.dropout(input, p, training, inplace)
        dropout.args = (*dropout.args[:3], False)
    else:
        dropout.kwargs = {**dropout.kwargs, "inplace": False}


ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul, "mul"}  # "mul": the method
# Elementwise functions that rise and fall: the integer graph maps their input's codes through
# a table, so the converted network quantizes their input.
TABLE_MODULES = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)
TABLE_FUNCTIONS = {F.silu, F.hardswish, F.gelu, F.mish}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with torchvision's StochasticDepth kept whole: traced through, its
    training flag would be fixed at the mode of the trace."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, StochasticDepth) or super().is_leaf_module(m, qualname)


def _quantize_tables_and_products(gm: fx.GraphModule, signed: dict, make_quantizer) -> None:
    """A signed quantizer (one per producing tensor, in `signed`, which the layers after it
    share) in front of each function that rises and falls (SiLU, Hardswish: a table of codes
    in the integer graph) and on each operand of a product of two tensors (a squeeze-excitation's
    gate times its features: a product of codes), so the network computes what the integer
    one does."""

    def quantized(source: fx.Node) -> fx.Node:
        if source.op == "call_module" and isinstance(
            gm.get_submodule(source.target), ActivationQuantizer
        ):
            return source
        if source not in signed:
            name = f"{SIGNED_PREFIX}.{source.name}"
            gm.add_submodule(name, make_quantizer())
            with gm.graph.inserting_after(source):
                signed[source] = gm.graph.call_module(name, (source,))
        return signed[source]

    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            table = isinstance(gm.get_submodule(node.target), TABLE_MODULES)
        else:
            table = node.op == "call_function" and node.target in TABLE_FUNCTIONS
        product = node.op in ("call_function", "call_method") and node.target in MUL_FUNCTIONS
        operands = node.args[:1] if table else node.args if product else ()
        if product and (node.kwargs or len(operands) != 2):
            continue
        if not all(isinstance(a, fx.Node) and a.op != "get_attr" for a in operands):
            continue  # a constant factor: a float step of the other operand
        for a in operands:
            node.replace_input_with(a, quantized(a))


def _quantize_adds(gm: fx.GraphModule, make_quantizer: Callable[[], nn.Module]) -> None:
    """Both operands of every tensor + tensor add through one signed quantizer (one grid)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ADD_FUNCTIONS:
            continue
        operands = node.args[:2]
        if node.kwargs or len(node.args) != 2:
            continue
        if not all(isinstance(a, fx.Node) and a.op != "get_attr" for a in operands):
            continue  # a constant added: no grid to share
        name = f"{SIGNED_PREFIX}.{node.name}"
        gm.add_submodule(name, make_quantizer())
        with gm.graph.inserting_before(node):
            node.args = tuple(gm.graph.call_module(name, (a,)) for a in operands)
