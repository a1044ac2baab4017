"""The integer runtime's fast path (float convolutions where the bound proves them exact, threshold
tables) equals its int64 path bit for bit, and refuses the float type where the bound does not
allow it."""

import numpy as np
import pytest
import torch

from edmips.export import lower
from edmips.export import runtime as runtime_module
from edmips.export.ir import Graph, Node
from edmips.export.runtime import IntegerRuntime, Levels, image_codes, product_type
from edmips.export.thresholds import apply_thresholds
from edmips.models import create_model
from edmips.nn import default_searched, to_fixed
from edmips.nn.convert import first_and_last


def conv_graph(weight: np.ndarray, bias=None) -> Graph:
    """uint8 codes (zero point 0, so inputs in [0, 255]) into one conv."""
    graph = Graph("conv", [weight.shape[1], 4, 4])
    zero = np.zeros(weight.shape[1], np.int64)
    graph.add("input", "input", [], range=[0, 255], arrays={"zero_point": zero})
    arrays = {"weight": weight} | ({} if bias is None else {"bias": bias})
    shape = {"stride": [1, 1], "padding": [1, 1], "groups": 1}
    graph.add("conv", "conv", ["input"], **shape, range=[-(2**62), 2**62], arrays=arrays)
    return graph


def all_255(channels: int) -> torch.Tensor:
    return torch.full((2, channels, 4, 4), 255, dtype=torch.uint8)


@pytest.mark.parametrize(
    "bound,dtype",
    [(2**24 - 1, torch.float32), (2**24 + 1, torch.float64), (2**53 + 1, torch.int64)],
)
def test_a_conv_takes_the_narrowest_exact_type_and_equals_the_int64_path(bound, dtype):
    """A 3-channel 3x3 conv whose peak |acc| (all inputs 255, interior positions) is `bound`:
    odd sums just above 2^24 are where float32 would round."""
    per_weight, rest = divmod(bound, 27 * 255)
    weight = np.full((2, 3, 3, 3), per_weight, np.int64)
    bias = np.array([rest, -rest], np.int64)  # the remainder, so the peak is exactly `bound`
    weight[1] *= -1
    graph = conv_graph(weight, bias)
    assert product_type(weight, bias, [0, 255], torch.device("cpu")) == dtype
    fast, slow = IntegerRuntime(graph), IntegerRuntime(graph, float_products=False)
    codes = torch.cat([all_255(3), torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)])
    expected = slow.run_all(codes)["conv"]
    assert int(expected.abs().max()) == bound
    assert torch.equal(fast.run_all(codes)["conv"], expected)
    if dtype == torch.float64:  # the test can fail: float32 does lose this sum
        w, b = torch.from_numpy(weight).float(), torch.from_numpy(bias).float()
        lossy = torch.nn.functional.conv2d(codes.float(), w, b, padding=1)
        assert not torch.equal(lossy.long(), expected)


def test_float32_is_not_used_on_a_gpu():
    weight = np.ones((1, 1, 1, 1), np.int64)
    assert product_type(weight, None, [0, 255], torch.device("cuda")) == torch.float64


def threshold_node(thresholds: np.ndarray, sign: np.ndarray, out_bias: int = 0) -> Node:
    levels = thresholds.shape[1] + 1
    attrs = {"out_bias": out_bias, "range": [out_bias, out_bias + levels - 1]}
    return Node("threshold", "t", ["x"], attrs, {"thresholds": thresholds, "sign": sign})


def random_thresholds(channels: int, count: int, lo: int, hi: int, gap: int, seed: int):
    """Thresholds on u = sign * x, rising, at least `gap` apart and within the range; some
    channels falling (sign -1), one channel's upper levels never reached and one's lower
    levels always reached."""
    g = np.random.default_rng(seed)
    values = lo + 1 + np.cumsum(g.integers(gap, 2 * gap, size=(channels, count)), 1)
    sign = np.where(np.arange(channels) % 2 == 0, 1, -1)
    thresholds = np.where(sign[:, None] > 0, values, -values[:, ::-1])
    thresholds[0, count // 2 :] = hi + 1  # never reached (sign +1: u = x <= hi)
    thresholds[1, : count // 2] = -hi  # always reached (sign -1: u = -x >= -hi)
    return thresholds, sign


@pytest.mark.parametrize(
    "entries,count,gap,kind",
    [
        (2**22, 15, 1, "table"),  # every value's level
        (2**14, 15, 300, "buckets"),  # 2^s values a bucket, at most one change point in each
        (2**14, 255, 1, "search"),  # dense thresholds over a wide range: no table
    ],
)
def test_threshold_tables_equal_the_search_on_every_input_value(
    entries, count, gap, kind, monkeypatch
):
    monkeypatch.setattr(runtime_module, "TABLE_ENTRIES", entries)
    lo, hi, channels = -4000, 5000, 6
    if kind == "search":
        lo, hi = -40000, 50000
    thresholds, sign = random_thresholds(channels, count, lo, hi, gap, seed=count + gap)
    levels = Levels(threshold_node(thresholds, sign, out_bias=-3), [lo, hi], torch.device("cpu"))
    assert (levels.start is None) == (kind == "search")
    assert (levels.start is not None and levels.shift > 0) == (kind == "buckets")
    x = torch.arange(lo, hi + 1, dtype=torch.int32)[None, :, None].expand(2, -1, channels)
    x = x.permute(0, 2, 1).contiguous()  # [N, C, every value]: ties and their neighbours too
    t, s = torch.from_numpy(thresholds), torch.from_numpy(sign)
    expected = apply_thresholds(x.long(), t, s) - 3
    assert torch.equal(levels(x).long(), expected)
    assert all(expected[0, c].unique().numel() > 2 for c in range(2, channels))  # levels vary


BITS = list(zip(range(1, 9), [2, 3, 4, 5, 6, 7, 8, 2]))  # weights 1-8, activations 2-8


def quantized(name: str, size: int, seed: int):
    """A network whose searched layers cycle through every weight and activation width 1-8
    (the first conv and classifier at 8, reading the image's 8-bit codes), batch norms and
    signed ranges as a few training steps set them."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    searched = default_searched(model)
    to_fixed(model, {n: BITS[(i + seed) % len(BITS)] for i, n in enumerate(searched)})
    to_fixed(model, {n: (8, 8) for n in first_and_last(model) if n not in searched})
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, size, size))
    return model.eval()


@pytest.mark.parametrize(
    "name,seed",
    [
        ("resnet8", 0),  # residual adds
        ("resnet8", 3),
        ("resnet_tiny", 5),
        ("tv_resnet18", 0),  # max pooling
        ("tv_mobilenet_v2", 1),  # depthwise convolutions
        ("tv_googlenet", 2),  # concatenation, max pools of every kind
        ("tv_mobilenet_v3_small", 0),  # tables and gates
        ("tv_shufflenet_v2_x0_5", 0),  # channel moves
    ],
)
def test_the_fast_path_equals_the_int64_path_on_every_node(name, seed):
    model = quantized(name, 32, seed)
    graph = lower(model, (3, 32, 32))
    codes = image_codes(torch.rand(3, 3, 32, 32))
    fast = IntegerRuntime(graph).run_all(codes)
    slow = IntegerRuntime(graph, float_products=False).run_all(codes)
    assert fast.keys() == slow.keys()
    for node in graph.nodes:
        assert torch.equal(fast[node.name].long(), slow[node.name].long()), node.name
    plans = IntegerRuntime(graph).plans
    assert torch.float32 in plans and any(isinstance(p, Levels) for p in plans)  # fast path
