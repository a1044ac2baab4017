"""Reference runtime for an integer bundle: integer arithmetic only after the input.

Every tensor is int32 or int64 (accumulators wider than 31 bits use int64); there is no
floating point anywhere in the graph's execution. Convolutions are im2col plus an integer
matrix product; thresholds are a sorted search over integers.
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


def _dtype(lo: int, hi: int):
    """int32 where the range fits (faster products and searches), else int64."""
    return torch.int32 if -(2**31) <= lo and hi < 2**31 - 1 else torch.int64  # T <= hi + 1


class IntegerRuntime:
    """Runs a graph; its arrays are converted to tensors once, then reused for every batch."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.arrays = [
            {k: torch.from_numpy(v.astype(np.int64)) for k, v in node.arrays.items()}
            for node in graph.nodes
        ]

    def __call__(self, codes: Tensor) -> Tensor:
        """Integer logits [N, classes] (int64) for uint8 image codes [N, C, H, W]."""
        return self.run_all(codes)[self.graph.output].to(torch.int64)

    def run_all(self, codes: Tensor) -> dict[str, Tensor]:
        """Every tensor of the graph, by node name."""
        if codes.dtype != torch.uint8:
            raise TypeError(f"the integer runtime reads uint8 image codes, got {codes.dtype}")
        values: dict[str, Tensor] = {}
        for node, a in zip(self.graph.nodes, self.arrays):
            x = [values[i] for i in node.inputs]
            out_dtype = _dtype(*node.attrs["range"])
            if node.op == "input":
                out = codes.to(out_dtype) - a["zero_point"].view(1, -1, 1, 1).to(out_dtype)
            elif node.op == "conv":
                out = _conv(
                    x[0].to(out_dtype),
                    a["weight"].to(out_dtype),
                    node.attrs["stride"],
                    node.attrs["padding"],
                    node.attrs["groups"],
                    node.attrs.get("dilation", (1, 1)),
                )
                if "bias" in a:
                    out = out + a["bias"].view(1, -1, 1, 1).to(out_dtype)
            elif node.op == "threshold":
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
            elif node.op == "flatten":
                out = x[0].to(out_dtype).flatten(1)
            elif node.op == "add":
                out = x[0].to(out_dtype) + x[1].to(out_dtype)
            elif node.op == "sumpool":
                out = x[0].to(out_dtype).sum(dim=(2, 3), dtype=out_dtype)
            elif node.op == "linear":
                out = x[0].to(out_dtype) @ a["weight"].to(out_dtype).t() + a["bias"].to(out_dtype)
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
