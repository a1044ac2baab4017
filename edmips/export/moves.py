"""Steps that only move integers, for the lowering (edmips.export.lower).

A traced network's shape arithmetic (`x.size()`, its items, `channels // groups`) is folded to
constants: the input size is fixed, so the propagation of shapes computes every such number
once (`ShapesAndConstants`). A chain of steps that only move values (view, reshape, transpose,
permute, contiguous, chunk, split, indexing; ShuffleNet's channel shuffle and its chunk of
channels) is run on the positions of the tensor it starts from, at batch size 1: where the
result holds whole channels of that tensor, each one's positions unchanged, the chain is one
gather of channels (`channel_index`). Exact: integers are moved, none is computed, and each
channel's function of its integers moves with it (`gathered`).
"""

import math
import operator

import torch
from torch import Tensor, fx
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves

from edmips.export.prepare import ExportError
from edmips.export.values import Value

MOVE_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "contiguous"}
MOVE_METHODS |= {"chunk", "split", "squeeze", "unsqueeze"}
MOVE_FUNCTIONS = {torch.transpose, torch.permute, torch.reshape, torch.flatten}
MOVE_FUNCTIONS |= {torch.chunk, torch.split, torch.squeeze, torch.unsqueeze}


class ShapesAndConstants(ShapeProp):
    """ShapeProp that also keeps, as node.meta["constant"], each result that holds no tensor
    (a shape, a number): constants of the network at its input size."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if n.op != "output" and not any(isinstance(t, Tensor) for t in tree_leaves(result)):
            n.meta["constant"] = result
        return result


def is_move(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in MOVE_METHODS
    targets = (*MOVE_FUNCTIONS, operator.getitem)
    return node.op == "call_function" and node.target in targets


def folded(node: fx.Node, arg):
    """An argument of a moving step with its shape arithmetic replaced by its constant."""

    def constant(a: fx.Node):
        if "constant" not in a.meta:
            raise ExportError(
                f"node {node.name}: {a.name} is a tensor, where only shapes and indices are lowered"
            )
        return a.meta["constant"]

    return fx.node.map_arg(arg, constant)


def positions(shape) -> Tensor:
    """Each element's flat position, in a tensor of `shape` (batch size 1)."""
    return torch.arange(math.prod(shape)).view(shape)


def moved(node: fx.Node, source):
    """The moving step of `node` run on `source` (positions, or a tuple of them)."""
    args, kwargs = folded(node, (node.args[1:], node.kwargs))
    if node.op == "call_method":
        return getattr(source, node.target)(*args, **kwargs)
    return node.target(source, *args, **kwargs)


def channel_index(result, shape) -> Tensor | None:
    """The channel of the tensor of `shape` that each channel of `result` (its positions)
    holds, where each holds one whole channel with its positions in place; else None."""
    if not isinstance(result, Tensor) or result.dim() != len(shape) or result.dim() < 2:
        return None
    if result.shape[0] != 1 or tuple(result.shape[2:]) != tuple(shape[2:]):
        return None
    spatial = math.prod(shape[2:])
    flat = result[0].reshape(result.shape[1], spatial)
    index = flat[:, 0] // spatial
    if not torch.equal(flat, index[:, None] * spatial + torch.arange(spatial)):
        return None
    return index


def gathered(name: str, x: Value, index: Tensor, channels: int) -> Value:
    """x's channels `index` (each at most once) as the value of the integer tensor `name`:
    channel c holds x's channel index[c], and its function and unit are that channel's."""
    f, lo = x.f, x.lo

    def f_out(v: Tensor) -> Tensor:
        full = torch.full((channels, v.shape[1]), lo, dtype=v.dtype)
        full[index] = v  # the other channels' values are read by no one
        return f(full)[index]

    unit = None if x.unit is None else x.unit[index]
    return Value(name, x.lo, x.hi, f_out, unit, x.monotone)
