"""The lowering's bookkeeping: each value the network computes as f(v) of one integer tensor,
and the steps that only move integers around (pool windows, flatten, concatenation)."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx

from edmips.export.ir import Graph
from edmips.export.prepare import ExportError


@dataclass
class Value:
    """f(v) for the graph's integer tensor `name` with values in [lo, hi]."""

    name: str
    lo: int
    hi: int
    f: Callable[[Tensor], Tensor]  # float64 [channels, n] -> [channels, n]
    unit: Tensor | None  # [channels] where f is exactly v * unit, else None
    monotone: bool = True  # False after a step such as SiLU: f can rise and fall with v

    def then(self, step: Callable[[Tensor], Tensor], monotone: bool = True) -> "Value":
        f = self.f
        rises = self.monotone and monotone
        return Value(self.name, self.lo, self.hi, lambda v: step(f(v)), None, rises)


def per_channel(module_or_fn, rank: int) -> Callable[[Tensor], Tensor]:
    """An elementwise step on [channels, n] values, run as the network runs it (on N x C x 1 x 1
    for a feature map, N x C for features)."""

    def step(y: Tensor) -> Tensor:
        shaped = y.t().reshape(y.shape[1], y.shape[0], *[1] * (rank - 2))
        return module_or_fn(shaped).reshape(y.shape[1], y.shape[0]).t()

    return step


class ShapeSteps:
    """Pooling, flattening and concatenation of integer tensors (a part of the lowering, which
    provides `graph`, `values`, `shape` and `exact`)."""

    graph: Graph
    values: dict

    def window(self, name: str, x: Value, pool, in_shape, op: str) -> Value:
        """A pool as the input positions of each output position (`windows`)."""
        _, channels, height, width = in_shape
        positions, divisors, (out_h, out_w) = windows(pool, height, width)
        count = positions.shape[1]
        if op == "windowmax":
            if not x.monotone:  # the max of f(v) is not f of the max of v
                raise ExportError(f"node {name}: max pooling of a function that is not monotone")
            sign = self.direction(x, channels)
            lo, hi, f, unit = x.lo, x.hi, x.f, x.unit
            arrays = {"windows": positions.numpy().astype(np.int32), "sign": sign}
        else:
            divisor = round(float(divisors[0]))
            if not bool(((divisors - divisor).abs() < 1e-9).all()):
                raise ExportError(f"node {name}: average pooling with unequal divisors")
            if count == 1 and divisor == 1:  # each window one position: a gather, f unchanged
                f, unit = x.f, x.unit
            else:
                x = self.exact(name, x, "average pooling")
                unit = x.unit / divisor
                f = lambda v, unit=unit: v * unit[:, None]  # noqa: E731
            lo, hi = min(x.lo, 0) * count, max(x.hi, 0) * count
            arrays = {"windows": positions.numpy().astype(np.int32)}
        self.graph.add(op, name, [x.name], out_hw=[out_h, out_w], range=[lo, hi], arrays=arrays)
        return Value(name, lo, hi, f, unit)

    def direction(self, x: Value, channels: int) -> np.ndarray:
        """+1 where f rises with v, -1 where it falls (max pooling takes the max of sign * v)."""
        ends = x.f(torch.tensor([[x.lo, x.hi]], dtype=torch.float64).expand(channels, 2))
        return np.where((ends[:, 1] >= ends[:, 0]).numpy(), 1, -1).astype(np.int8)

    def flatten(self, node: fx.Node, x: Value) -> Value:
        shape_in, shape_out = self.shape(node.args[0]), self.shape(node)
        if len(shape_out) != 2 or shape_out[0] != shape_in[0]:
            raise ExportError(f"node {node.name}: only flattening to N x features is lowered")
        channels, spatial = shape_in[1], int(np.prod(shape_in[2:], dtype=np.int64))
        self.graph.add("flatten", node.name, [x.name], range=[x.lo, x.hi], scale=None)
        if spatial == 1:
            return Value(node.name, x.lo, x.hi, x.f, x.unit, x.monotone)
        f = x.f

        def per_feature(v: Tensor) -> Tensor:  # feature c * spatial + p belongs to channel c
            n = v.shape[1]
            return f(v.reshape(channels, spatial * n)).reshape(channels * spatial, n)

        unit = None if x.unit is None else x.unit.repeat_interleave(spatial)
        return Value(node.name, x.lo, x.hi, per_feature, unit, x.monotone)

    def concat(self, node: fx.Node) -> Value:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % len(self.shape(node)) != 1:
            raise ExportError(f"node {node.name}: concatenation along dim {dim} is not lowered")
        parts = [self.values[t] for t in tensors]
        sizes = [self.shape(t)[1] for t in tensors]
        self.graph.add(
            "concat",
            node.name,
            [p.name for p in parts],
            range=[min(p.lo for p in parts), max(p.hi for p in parts)],
            scale=None,
        )
        fs = [p.f for p in parts]

        def f(v: Tensor) -> Tensor:
            return torch.cat([g(c) for g, c in zip(fs, v.split(sizes))])

        units = [p.unit for p in parts]
        unit = None if any(u is None for u in units) else torch.cat(units)
        lo, hi = min(p.lo for p in parts), max(p.hi for p in parts)
        return Value(node.name, lo, hi, f, unit, all(p.monotone for p in parts))


def windows(pool, height: int, width: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The input positions of each output position of a 2-D pool ([outputs, k], the index
    height * width where a window has fewer than k), each window's divisor (for an average)
    and the output size. Found by running the pool itself on one-hot rows and columns, so
    every option (padding, dilation, ceil mode, adaptive) is torch's own: a 2-D pool's window
    is its rows times its columns."""
    f64 = dict(dtype=torch.float64)
    one_row = torch.eye(height, **f64)[:, None, :, None].expand(-1, 1, -1, width).contiguous()
    one_col = torch.eye(width, **f64)[:, None, None, :].expand(-1, 1, height, -1).contiguous()
    rows = [r.nonzero().flatten() for r in (pool(one_row)[:, 0] != 0).any(2).t()]
    cols = [c.nonzero().flatten() for c in (pool(one_col)[:, 0] != 0).any(1).t()]
    count = max(len(r) for r in rows) * max(len(c) for c in cols)
    windows = torch.full((len(rows) * len(cols), count), height * width, dtype=torch.int64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            idx = (r[:, None] * width + c[None, :]).flatten()
            windows[i * len(cols) + j, : len(idx)] = idx
    sizes = torch.tensor([len(r) * len(c) for r in rows for c in cols], **f64)
    divisors = sizes / pool(torch.ones(1, 1, height, width, **f64)).flatten()  # mean = sum / d
    return windows, divisors, (len(rows), len(cols))


def int_dtype(magnitude: int):
    """The narrowest numpy integer type for weights of magnitude below `magnitude`."""
    return np.int8 if magnitude < 128 else np.int16 if magnitude < 2**15 else np.int32


def is_constant(arg) -> bool:
    return isinstance(arg, (int, float)) or (isinstance(arg, fx.Node) and arg.op == "get_attr")


def bound(node: fx.Node) -> Callable[[Tensor], Tensor]:
    """A pooling call with its tensor argument left open."""
    return lambda t: node.target(t, *node.args[1:], **node.kwargs)


def describe(target) -> str:
    return getattr(target, "__name__", None) or str(target)
