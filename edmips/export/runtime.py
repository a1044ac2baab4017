"""Reference runtime for an integer bundle: integer results only after the input.

Every tensor between nodes holds integers: levels in the narrowest integer type that holds them,
a float convolution's accumulators in its float type (where they are exact, below), other values
in int32 or int64 (accumulators wider than 31 bits use int64).

A convolution or linear layer is a sum of integer products. It runs as a float32 or float64
`F.conv2d` / matrix product (oneDNN, BLAS, batched) where its bound proves that exact, and as
im2col plus an int64 matrix product elsewhere:

    bound = max over output channels of sum_k |w_k| * max(|lo|, |hi|) + |bias|  (input in [lo, hi])

Every product and every partial sum of an output, in whatever order the library adds them, is
an integer of magnitude at most `bound`; a float type represents every integer below 2^p
exactly (p = 24 for float32, 53 for float64), so below that the float result is the integer
result, bit for bit. The library must add products directly (no Winograd or FFT transform):
oneDNN and BLAS do on the CPU; on a GPU, cuDNN is bypassed and float32 is not used (its
convolutions and products may run in TF32).

A threshold node's levels are read from a table that its integer search fills once (Levels).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edmips.export.ir import Graph, load_bundle
from edmips.export.thresholds import apply_thresholds


def image_codes(images: Tensor) -> Tensor:
    """Images in [0, 1] (float) to the uint8 codes the network reads: round(255 x)."""
    return torch.round(images.detach().double().clamp(0, 1) * 255).to(torch.uint8)


def _conv(x: Tensor, weight: Tensor, stride, padding, groups: int, dilation=(1, 1)) -> Tensor:
    """Integer convolution as im2col and an integer matrix product (in x's dtype)."""
    n = x.shape[0]
    cout, cin_g, kh, kw = weight.shape
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    patches = x.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
    patches = patches[..., :: dilation[0], :: dilation[1]]  # n, cin, ho, wo, kh, kw
    ho, wo = patches.shape[2:4]
    cout_g = cout // groups
    outs = []
    for g in range(groups):
        p = patches[:, g * cin_g : (g + 1) * cin_g].permute(0, 2, 3, 1, 4, 5)
        cols = p.reshape(n * ho * wo, cin_g * kh * kw)
        outs.append(cols @ weight[g * cout_g : (g + 1) * cout_g].reshape(cout_g, -1).t())
    return torch.cat(outs, 1).view(n, ho, wo, cout).permute(0, 3, 1, 2)


def _float_conv(x: Tensor, weight: Tensor, bias, stride, padding, groups: int, dilation) -> Tensor:
    """The convolution in weight's float type (exact where the bound allows: module docstring)."""
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN may pick a Winograd or FFT kernel
        return F.conv2d(x.to(weight.dtype), weight, bias, stride, padding, dilation, groups)


EXACT_BELOW = {torch.float32: 2**24, torch.float64: 2**53}


def product_type(weight: np.ndarray, bias, in_range, device: torch.device) -> torch.dtype:
    """The type a layer's sums of products (and its bias) run in: the narrowest float type that
    holds every partial sum exactly (module docstring), int64 where none does."""
    peak = max(abs(int(in_range[0])), abs(int(in_range[1])))
    magnitudes = np.abs(weight.reshape(weight.shape[0], -1).astype(np.int64)).sum(1)
    biases = np.zeros_like(magnitudes) if bias is None else np.abs(bias.astype(np.int64))
    # Python integers: the bound of a wide layer may not fit int64
    bound = max((int(m) * peak + int(b) for m, b in zip(magnitudes, biases)), default=0)
    for dtype in (torch.float32, torch.float64):
        if bound < EXACT_BELOW[dtype] and not (dtype == torch.float32 and device.type == "cuda"):
            return dtype
    return torch.int64


def _windows(x: Tensor, windows: Tensor, out_hw, reduce: str) -> Tensor:
    """Sum or max of x [N, C, H, W] over each output position's input positions (`windows`
    [outputs, k]; the index H * W marks no position), one window slot at a time."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    empty = 0 if reduce == "sum" else torch.iinfo(x.dtype).min
    flat = torch.cat([flat, flat.new_full((n, c, 1), empty)], 2)
    out = flat[:, :, windows[:, 0]]
    for slot in windows[:, 1:].t():
        out = out + flat[:, :, slot] if reduce == "sum" else torch.maximum(out, flat[:, :, slot])
    return out.view(n, c, *out_hw)


def _table(x: Tensor, table: Tensor, in_lo: int) -> Tensor:
    """table[c, x - in_lo] for x [N, C, ...] (a table of one row serves every channel): one
    gather on the flat table, row c starting at c * width."""
    channels, width = table.shape
    rows = torch.arange(channels, device=x.device) * width - in_lo
    rows = rows.view([1, -1] + [1] * (x.dim() - 2))
    index = x.to(torch.int64) + rows
    return table.flatten().index_select(0, index.flatten()).view(index.shape)


def _dtype(lo: int, hi: int):
    """int32 where the range fits (faster products and searches), else int64."""
    return torch.int32 if -(2**31) <= lo and hi < 2**31 - 1 else torch.int64  # T <= hi + 1


TABLE_ENTRIES = 2**20  # the most entries (buckets x channels) of a threshold node's table


def _level_type(lo: int, hi: int) -> torch.dtype:
    """The narrowest integer type that holds every level in [lo, hi]."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if torch.iinfo(dtype).min <= lo and hi <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


class Levels:
    """A threshold node's output as a function of its integer input x in [lo, hi], read from a
    table that the integer search (apply_thresholds) fills once.

    The input range is cut into buckets of 2^s values, s the smallest that keeps the table
    within TABLE_ENTRIES. With s = 0 the table holds every value's level. With s > 0, where no
    bucket holds two of a channel's change points (the values whose level differs from the one
    below), a bucket holds the level at its first value, the change point t inside it (hi + 1
    where there is none) and the change of level there, so for every x in the bucket

        level(x) = start + change * (x >= t)

    exactly. Elsewhere (thresholds dense over a wide range) the search runs on the values."""

    def __init__(self, node, in_range, device: torch.device):
        thresholds = torch.from_numpy(node.arrays["thresholds"].astype(np.int64))
        sign = torch.from_numpy(node.arrays["sign"].astype(np.int64))
        self.thresholds, self.sign = thresholds.to(device), sign.to(device)
        self.out_bias = node.attrs["out_bias"]
        self.out_dtype = _level_type(*node.attrs["range"])
        lo, hi = int(in_range[0]), int(in_range[1])
        channels = thresholds.shape[0]
        self.shift = 0
        while channels * ((hi - lo) // 2**self.shift + 1) > TABLE_ENTRIES:
            self.shift += 1
        buckets = (hi - lo) // 2**self.shift + 1
        # Levels change at x = T where they rise with x, at x = 1 - T where they fall.
        changes = torch.where(sign[:, None] > 0, thresholds, 1 - thresholds)
        inside = (changes > lo) & (changes <= hi)
        ordered = torch.where(inside, changes, hi + 1).sort(1).values  # outside: past hi
        gaps = ordered.diff(1)
        crowded = (gaps > 0) & (gaps < 2**self.shift) & (ordered[:, 1:] <= hi)
        self.start = None
        if bool(crowded.any()):
            return

        def levels(v: Tensor) -> Tensor:  # [channels, n] -> the node's output
            found = apply_thresholds(v, thresholds, sign, channel_dim=0) + self.out_bias
            return found.to(self.out_dtype)

        starts = lo + torch.arange(buckets) * 2**self.shift
        start_level = levels(starts.expand(channels, buckets))
        self.start = start_level.flatten().to(device)
        # bucket = (x - lo) >> s plus the channel's first bucket, in one add and one shift
        offsets = torch.arange(channels) * (buckets << self.shift) - lo
        self.index_peak = channels * (buckets << self.shift)  # x + offset stays below
        self.index_type = torch.int32 if self.index_peak < 2**31 else torch.int64
        self.offsets = offsets.to(device, self.index_type)
        if self.shift == 0:
            return
        # Each change point's bucket, the point and the change of level there (equal
        # thresholds are one point; the crowding check left no bucket two points).
        at = ((changes - lo) >> self.shift).clamp(0, buckets - 1)
        change = levels(changes.clamp(lo, hi)) - start_level.gather(1, at)
        where = torch.arange(channels)[:, None] * buckets + at
        point = torch.full((channels * buckets,), hi + 1, dtype=_dtype(lo, hi + 1))
        point[where[inside]] = changes[inside].to(point.dtype)
        self.point = point.to(device)
        self.change = torch.zeros(channels * buckets, dtype=self.out_dtype)
        self.change[where[inside]] = change[inside]
        self.change = self.change.to(device)

    def __call__(self, x: Tensor) -> Tensor:
        if self.start is None:
            x = x.to(torch.int64) if x.is_floating_point() else x
            out = apply_thresholds(x, self.thresholds.to(x.dtype), self.sign.to(x.dtype))
            return out.to(self.out_dtype) + self.out_bias
        offsets = self.offsets.view([1, -1] + [1] * (x.dim() - 2))
        if x.is_floating_point() and self.index_peak >= EXACT_BELOW[x.dtype]:
            x = x.to(torch.int64)
        if x.is_floating_point():  # integers in floats: the index sum is exact too
            index = (x + offsets.to(x.dtype)).to(self.index_type)
        else:
            index = x + offsets
        if self.shift:
            index >>= self.shift
        flat = index.reshape(-1)
        out = self.start.index_select(0, flat)
        if self.shift:
            crossed = x.reshape(-1) >= self.point.index_select(0, flat)
            out.add_(self.change.index_select(0, flat) * crossed)
        return out.view(index.shape)


class IntegerRuntime:
    """Runs a graph on `device`; its arrays are converted to tensors once, then reused for every
    batch. `float_products=False` runs every sum of products in int64 (the slow path the float
    one is tested against) and every threshold node as a search (no table)."""

    def __init__(self, graph: Graph, device="cpu", float_products: bool = True):
        self.graph = graph
        self.device = torch.device(device)
        ranges = {node.name: node.attrs["range"] for node in graph.nodes}
        self.arrays, self.plans = [], []
        for node in graph.nodes:
            arrays = {k: torch.from_numpy(v.astype(np.int64)) for k, v in node.arrays.items()}
            plan = None
            in_range = ranges[node.inputs[0]] if node.inputs else None
            if float_products and node.op in ("conv", "linear"):
                bias = node.arrays.get("bias")
                plan = product_type(node.arrays["weight"], bias, in_range, self.device)
                if plan.is_floating_point:
                    arrays["weight"] = arrays["weight"].to(plan)
                    if bias is not None:
                        arrays["bias"] = arrays["bias"].to(plan)
            elif float_products and node.op == "threshold":
                plan = Levels(node, in_range, self.device)
            self.arrays.append({k: v.to(self.device) for k, v in arrays.items()})
            self.plans.append(plan)

    def __call__(self, codes: Tensor) -> Tensor:
        """Integer logits [N, classes] (int64) for uint8 image codes [N, C, H, W]."""
        return self.run_all(codes)[self.graph.output].to(torch.int64)

    @torch.no_grad()
    def run_all(self, codes: Tensor) -> dict[str, Tensor]:
        """Every tensor of the graph, by node name."""
        if codes.dtype != torch.uint8:
            raise TypeError(f"the integer runtime reads uint8 image codes, got {codes.dtype}")
        values: dict[str, Tensor] = {}
        codes = codes.to(self.device)
        for node, a, plan in zip(self.graph.nodes, self.arrays, self.plans):
            x = [values[i] for i in node.inputs]
            out_dtype = _dtype(*node.attrs["range"])
            if node.op == "input":
                out = codes.to(out_dtype) - a["zero_point"].view(1, -1, 1, 1).to(out_dtype)
            elif node.op == "conv":
                attrs = node.attrs
                shape = (attrs["stride"], attrs["padding"], attrs["groups"])
                dilation = attrs.get("dilation", (1, 1))
                if plan is not None and plan.is_floating_point:
                    bias = a.get("bias")
                    out = _float_conv(x[0], a["weight"], bias, *shape, dilation)
                else:
                    out = _conv(x[0].to(out_dtype), a["weight"].to(out_dtype), *shape, dilation)
                    if "bias" in a:
                        out = out + a["bias"].view(1, -1, 1, 1).to(out_dtype)
            elif node.op == "threshold":
                if plan is not None:
                    out = plan(x[0])
                else:
                    thresholds = a["thresholds"].to(x[0].dtype)
                    out = apply_thresholds(x[0], thresholds, a["sign"].to(x[0].dtype))
                    out = out.to(out_dtype) + node.attrs["out_bias"]
            elif node.op == "windowsum":
                out = _windows(x[0].to(out_dtype), a["windows"], node.attrs["out_hw"], "sum")
            elif node.op == "windowmax":  # max of sign * x, where the value falls with x
                sign = a["sign"].view(1, -1, 1, 1).to(out_dtype)
                windows, hw = a["windows"], node.attrs["out_hw"]
                out = sign * _windows(sign * x[0].to(out_dtype), windows, hw, "max")
            elif node.op == "concat":
                out = torch.cat([t.to(out_dtype) for t in x], 1)
            elif node.op == "gather_channels":
                out = x[0].to(out_dtype).index_select(1, a["index"])
            elif node.op == "relu":
                out = x[0].to(out_dtype).clamp_min(0)
            elif node.op == "flatten":
                out = x[0].to(out_dtype).flatten(1)
            elif node.op == "add":
                out = x[0].to(out_dtype) + x[1].to(out_dtype)
            elif node.op == "mul":  # products of codes: the range bounds them (int64 if wide)
                out = x[0].to(out_dtype) * x[1].to(out_dtype)
            elif node.op == "table":
                out = _table(x[0], a["table"], node.attrs["in_lo"]).to(out_dtype)
            elif node.op == "sumpool":
                out = x[0].to(out_dtype).sum(dim=(2, 3), dtype=out_dtype)
            elif node.op == "linear":
                if plan is not None and plan.is_floating_point:
                    out = F.linear(x[0].to(plan), a["weight"], a["bias"]).to(out_dtype)
                else:
                    out = x[0].to(out_dtype) @ a["weight"].to(out_dtype).t()
                    out = out + a["bias"].to(out_dtype)
            else:
                raise ValueError(f"node {node.name}: unknown op {node.op!r}")
            values[node.name] = out
        return values


def run(graph: Graph, codes: Tensor) -> Tensor:
    """Integer logits [N, classes] (int64) for uint8 image codes [N, C, H, W]."""
    return IntegerRuntime(graph)(codes)


def run_all(graph: Graph, codes: Tensor) -> dict[str, Tensor]:
    return IntegerRuntime(graph).run_all(codes)


def run_bundle(path, codes: Tensor) -> Tensor:
    return run(load_bundle(path), codes)
