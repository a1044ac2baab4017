"""Quantizers on the lowering's values as nodes of the integer graph: a threshold node where
f rises or falls with v, a table node of every code's level where it rises and falls (SiLU),
and the check that a threshold on a product of codes gives the reference's level on every pair
of codes."""

import numpy as np
import torch

from edmips.export.ir import Graph
from edmips.export.prepare import ExportError
from edmips.export.thresholds import apply_thresholds, compute_thresholds
from edmips.export.values import Value, per_channel
from edmips.quant import ActivationQuantizer

MAX_TABLE = 2**16  # the most input values a table node maps


class QuantizerNodes:
    """Threshold and table nodes (a part of the lowering, which provides `graph`, `requantized`
    and `products`)."""

    graph: Graph
    requantized: dict[tuple, Value]  # (value, quantizer) -> threshold node
    products: dict[str, tuple]  # mul node -> its operands and its f

    def threshold(self, x: Value, name: str, shape, q: ActivationQuantizer) -> Value:
        """A threshold node: the quantizer q applied to f(v), its codes shifted to start at 0.
        q runs on the network's layout (`shape`, the node's), as a step per channel needs."""
        key = (x.name, id(x.f), q.grid())
        if key in self.requantized:
            return self.requantized[key]
        if not x.monotone:
            self.requantized[key] = self.table(x, name, shape, q)
            return self.requantized[key]
        channels, codes = shape[1], per_channel(q.codes, len(shape))
        num_levels, out_bias = q.num_levels, q.lowest
        unit = torch.as_tensor(q.unit(), dtype=torch.float64)

        def levels(v):
            return codes(x.f(v)) - out_bias

        thresholds, sign = compute_thresholds(levels, channels, num_levels, x.lo, x.hi)
        dtype = np.int32 if max(abs(x.lo), abs(x.hi)) < 2**31 - 1 else np.int64
        hi = out_bias + num_levels - 1
        self.graph.add(
            "threshold",
            name,
            [x.name],
            out_bias=out_bias,
            range=[out_bias, hi],
            scale=unit.tolist(),  # a list for a step per channel
            arrays={
                "thresholds": thresholds.numpy().astype(dtype),
                "sign": sign.numpy().astype(np.int8),
            },
        )
        if x.name in self.products:
            self.check_product(name, x, q, shape, thresholds, sign, out_bias)
        unit = unit.expand(channels)
        out = Value(name, out_bias, hi, lambda v: v * unit[:, None], unit)
        self.requantized[key] = out
        return out

    def table(self, x: Value, name: str, shape, q: ActivationQuantizer) -> Value:
        """A table node: the quantizer q's code of f(v) for every integer v in x's range, f a
        function that rises and falls (SiLU, Hardswish, GELU) of codes.

        Exact by construction: each entry is q.codes(f(v)), the reference's own arithmetic
        run on v, and every v the input can hold has its entry. (One caveat, torch's: its
        vectorized and scalar float64 kernels of exp-based functions, SiLU and GELU, differ in
        the last bit for a few per cent of inputs, which moves a level only where the value
        lies within an ulp of a level boundary.)"""
        size = x.hi - x.lo + 1
        if size > MAX_TABLE:
            raise ExportError(f"node {name}: a table of {size} inputs (at most {MAX_TABLE})")
        channels = shape[1]
        v = torch.arange(x.lo, x.hi + 1, dtype=torch.float64).expand(channels, size)
        table = per_channel(q.codes, len(shape))(x.f(v)).round().long()
        if bool((table == table[:1]).all()):
            table = table[:1]  # one table for every channel
        lo, hi = q.lowest, q.lowest + q.num_levels - 1
        unit = torch.as_tensor(q.unit(), dtype=torch.float64)
        self.graph.add(
            "table",
            name,
            [x.name],
            in_lo=x.lo,
            range=[lo, hi],
            scale=unit.tolist(),
            arrays={"table": table.numpy().astype(np.int16 if hi < 2**15 else np.int32)},
        )
        unit = unit.expand(channels)
        return Value(name, lo, hi, lambda v: v * unit[:, None], unit)

    def check_product(self, name: str, x: Value, q, shape, thresholds, sign, out_bias) -> None:
        """The thresholds on a product of codes p = a * b are bisected on p * (unit_a unit_b);
        the reference computes (a unit_a) * (b unit_b), rounded otherwise. Every pair of codes
        is checked to give the reference's level (channels alike in their units and q's
        step checked once), and a pair that does not is refused by its codes."""
        a, b, f = self.products[x.name]
        if x.f is not f:
            raise ExportError(f"node {name}: float steps between a product and its quantizer")
        step = torch.as_tensor(q.unit(), dtype=torch.float64).expand(shape[1])
        keys = torch.stack([a.unit, b.unit, step], 1)
        codes_a = torch.arange(a.lo, a.hi + 1, dtype=torch.float64)[:, None]
        codes_b = torch.arange(b.lo, b.hi + 1, dtype=torch.float64)[None, :]
        width = 1 if torch.as_tensor(q.unit()).numel() == 1 else shape[1]  # q's channels
        for c in np.unique(keys.numpy(), axis=0, return_index=True)[1]:
            value = (codes_a * a.unit[c]) * (codes_b * b.unit[c])  # the reference's roundings
            lanes = torch.zeros(1, width, *[1] * (len(shape) - 2), dtype=torch.float64)
            lanes = lanes + value.reshape(-1, *[1] * (len(shape) - 1))  # in channel c's lane
            want = q.codes(lanes).reshape(value.numel(), width)[:, min(c, width - 1)]
            product = (codes_a * codes_b).long().reshape(1, -1)
            got = apply_thresholds(product, thresholds[c : c + 1], sign[c : c + 1], 0)[0]
            wrong = (got + out_bias != want).nonzero()
            if len(wrong):
                i = int(wrong[0])
                code_a, code_b = a.lo + i // codes_b.numel(), b.lo + i % codes_b.numel()
                raise ExportError(
                    f"node {name}: the product of codes {code_a} and {code_b} rounds to "
                    "another level in the reference"
                )
