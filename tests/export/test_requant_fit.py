"""The int8 form's requantizations fitted directly (edmips.export.onnx.requant), without a
network: each fit gives a threshold node's level on every input it can read, ties rounded half
to even included, with levels that fall with the input and levels that saturate at the int8
ends; thresholds no requantization gives are refused (None, or a conv's fit with neither
requantization, which the writer counts on the accumulator instead)."""

import numpy as np
import pytest
import torch
from torch import nn

from edmips.export import ExportError
from edmips.export.ir import Node
from edmips.export.onnx.requant import (
    affine,
    convinteger_digits,
    depthwise,
    fit_affine,
    fit_conv,
    fit_depthwise,
    input_levels,
    levels,
    max_pool_params,
    qlinear,
    search_table,
)
from edmips.export.values import windows

NEVER = 2**31 - 1  # a threshold no input reaches


def threshold_node(out: np.ndarray, lo: int, sign: np.ndarray, scale=1.0) -> Node:
    """The threshold node whose levels on the inputs lo, lo + 1, ... are `out` [channels, n],
    each channel's levels rising with the input where its sign is 1, falling where it is -1."""
    x = np.arange(lo, lo + out.shape[1])
    low, high = int(out.min()), int(out.max())
    thresholds = np.full((len(out), high - low), NEVER, np.int64)
    for c, (row, s) in enumerate(zip(out, sign)):
        u = s * x  # rising in u, so T_k is the lowest u of a level above low + k
        for k in range(high - low):
            reached = u[row > low + k]
            if len(reached):
                thresholds[c, k] = reached.min()
    attrs = {"out_bias": low, "range": [low, high], "scale": scale}
    arrays = {"thresholds": thresholds, "sign": np.asarray(sign, np.int8)}
    return Node("threshold", "q", ["x"], attrs, arrays)


def rne_affine(stored: np.ndarray, a, c, low: int, high: int) -> np.ndarray:
    """clamp(rne(A s + C)) per channel, in float64: the levels a requantization is fitted to."""
    a, c = np.asarray(a, np.float64)[:, None], np.asarray(c, np.float64)[:, None]
    return np.clip(np.rint(a * stored[None, :] + c), low, high).astype(np.int64)


def assert_fits_on_every_input(node: Node, lo_in: int, hi_in: int, power_of_two=False):
    """fit_affine and fit_depthwise each give the node's level on every input, clamped to its
    levels' extremes; returns the fitted factors A."""
    values, want = input_levels(node, lo_in, hi_in)
    stored = values - lo_in
    low, high = int(want.min()), int(want.max())
    factor, shift = fit_affine(want, stored, (None, None), power_of_two)
    got = np.clip(affine(np.broadcast_to(stored, want.shape), factor, shift), low, high)
    assert np.array_equal(got, want)
    weight, bias, multiplier = fit_depthwise(want, stored)
    assert weight.dtype == np.int8 and bias.dtype == np.int32 and multiplier.dtype == np.float32
    assert np.array_equal(np.clip(depthwise(stored, weight, bias, multiplier), low, high), want)
    return factor, weight


def test_a_fit_gives_the_thresholds_level_on_every_input_code():
    rng = np.random.default_rng(0)
    stored = np.arange(0, 256)
    a, c = rng.uniform(0.01, 0.09, 6), rng.uniform(-8, 3, 6)
    out = rne_affine(stored, a, c, -8, 7)
    node = threshold_node(out, 0, np.ones(6))
    assert np.array_equal(input_levels(node, 0, 255)[1], out)  # the node is the function
    assert_fits_on_every_input(node, 0, 255)
    # a residual sum's factor: one power of two, which keeps each operand's product exact
    out = rne_affine(stored, [2**-3, 2**-5, -(2**-4)], rng.uniform(-3, 3, 3), -8, 7)
    node = threshold_node(out, 0, np.array([1, 1, -1]))
    factor, _ = assert_fits_on_every_input(node, 0, 255, power_of_two=True)
    assert factor.tolist() == [2**-3, 2**-5, -(2**-4)]
    # where the units' ratio gives the levels, it is the fit itself (w = 1, B = 0, M = ratio)
    ratio = np.full(6, 2.0**-4)
    out = rne_affine(stored, ratio, np.zeros(6), 0, 15)
    assert fit_affine(out, stored, (ratio, np.zeros(6)))[0].tolist() == ratio.tolist()
    weight, bias, multiplier = fit_depthwise(out, stored, ratio)
    assert (weight == 1).all() and (bias == 0).all() and (multiplier == ratio).all()


def conv_node(node: Node, acc_range, ratio: float) -> Node:
    """A conv read by the threshold node, with accumulators in acc_range and a unit `ratio`
    times the node's step."""
    weight = np.ones((len(node.arrays["sign"]), 1, 1, 1), np.int64)
    attrs = {"range": list(acc_range), "acc_bits": 16, "scale": ratio * node.attrs["scale"]}
    return Node("conv", "conv", ["x"], attrs, {"weight": weight})


def test_a_conv_s_requantization_is_the_units_ratio_on_every_accumulator():
    acc = np.arange(-3000, 3001)
    m = np.float32(3 / 64)  # the int8sim family's: a float32 number
    out = np.clip(np.rint(acc * np.float64(m)), -8, 7)[None, :].repeat(2, 0).astype(np.int64)
    node = threshold_node(out, int(acc[0]), np.ones(2))
    fit = fit_conv(node, conv_node(node, (-3000, 3000), float(m)))
    assert (fit.multiplier == m).all() and fit.float_exact
    want = levels(node, np.broadcast_to(acc, (2, len(acc))))
    got = np.clip(qlinear(np.broadcast_to(acc, (2, len(acc))), fit.multiplier), fit.low, fit.high)
    assert np.array_equal(got, want)


def test_ties_round_half_to_even_and_ties_rounded_up_are_fitted_otherwise():
    """A ratio of 1/2 puts every odd input on a tie: QLinearConv's rounding (half to even) is
    the reference's, so the ratio is the fit; levels whose ties round up are no QLinearConv
    multiplier of that ratio, but an affine map with a shift just above 0 gives them."""
    acc = np.arange(-40, 41)
    even = np.rint(acc / 2).astype(np.int64)[None, :]  # numpy rounds half to even
    up = np.floor(acc / 2 + 0.5).astype(np.int64)[None, :]
    assert not np.array_equal(even, up)
    for out, ratio_fits in ((even, True), (up, False)):
        node = threshold_node(out, -40, np.ones(1))
        fit = fit_conv(node, conv_node(node, (-40, 40), 0.5))
        assert (fit.multiplier is not None) == fit.float_exact == ratio_fits
        factor, shift = fit_affine(out, acc + 40, (np.array([0.5]), np.array([-20.0])))
        assert (factor[0] == 0.5 and shift[0] == -20.0) == ratio_fits
        got = affine(acc[None, :] + 40, factor, shift)
        assert np.array_equal(np.clip(got, out.min(), out.max()), out)
        assert_fits_on_every_input(node, -40, 40)


def test_a_negative_scale_gives_levels_falling_with_the_input():
    rng = np.random.default_rng(1)
    stored = np.arange(0, 200)
    a, c = -rng.uniform(0.02, 0.08, 4), rng.uniform(2, 9, 4)
    out = rne_affine(stored, a, c, -8, 7)
    node = threshold_node(out, 0, -np.ones(4))
    assert np.array_equal(input_levels(node, 0, 199)[1], out)
    factor, weight = assert_fits_on_every_input(node, 0, 199)
    assert (factor < 0).all() and (weight < 0).all()
    # one channel rising, one falling: each gets its own sign
    mixed = np.stack([out[0], out[1, ::-1]])
    node = threshold_node(mixed, 0, np.array([-1, 1]))
    factor, weight = assert_fits_on_every_input(node, 0, 199)
    assert factor[0] < 0 < factor[1] and weight[0] < 0 < weight[1]


def test_levels_saturate_at_the_int8_ends():
    """Wide inputs, steep slopes: long runs of -128 and of 127 at both ends, which the fits
    hold by the clamp (QLinearConv's saturation), not by the slope."""
    stored = np.arange(0, 4096)
    out = rne_affine(stored, [0.2531, -0.3071], [-600.37, 700.13], -128, 127)
    assert (out == -128).sum(1).min() > 100 and (out == 127).sum(1).min() > 100
    node = threshold_node(out, 0, np.array([1, -1]))
    assert_fits_on_every_input(node, 0, 4095)
    acc = np.arange(-(2**14), 2**14)
    m = np.float32(3 / 64)
    conv_out = np.clip(np.rint(acc * np.float64(m)), -128, 127)[None, :].astype(np.int64)
    node = threshold_node(conv_out, int(acc[0]), np.ones(1))
    fit = fit_conv(node, conv_node(node, (acc[0], acc[-1]), float(m)))
    assert (fit.low, fit.high) == (-128, 127) and (fit.multiplier == m).all()
    got = np.clip(qlinear(acc[None, :], fit.multiplier), fit.low, fit.high)
    assert np.array_equal(got, levels(node, acc[None, :]))


def test_thresholds_no_requantization_gives_are_refused():
    """Runs of one level 5 inputs long, then 2: a rounded affine map's runs differ by one at
    most, so neither fit holds; on a conv, neither QLinearConv nor the float requantization."""
    out = np.array([[0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 4]])
    node = threshold_node(out, 0, np.ones(1))
    stored = np.arange(out.shape[1])
    assert fit_affine(out, stored, (np.array([0.3]), np.array([0.0]))) is None
    assert fit_affine(out, stored, (None, None), True) is None
    assert fit_depthwise(out, stored, np.array([0.25])) is None
    fit = fit_conv(node, conv_node(node, (0, 14), 0.3))
    assert fit.multiplier is None and not fit.float_exact


def test_weights_split_into_convinteger_s_digits_and_a_peak_beyond_int32_is_refused():
    rng = np.random.default_rng(2)
    weight = rng.integers(-70_000, 70_000, (4, 3, 3, 3))
    conv = Node("conv", "wide", ["x"], {}, {"weight": weight})
    digits = convinteger_digits(conv, np.zeros(4, np.int64))
    assert len(digits) == 3 and all(-128 <= d.min() and d.max() <= 127 for d in digits)
    assert np.array_equal(sum(d * 256**k for k, d in enumerate(digits)), weight)
    conv.arrays["weight"] = np.full((1, 64, 3, 3), 2**20)
    with pytest.raises(ExportError, match="layer wide: a .*-bit accumulator does not fit"):
        convinteger_digits(conv, np.zeros(1, np.int64))


def test_the_binary_search_table_gives_every_level():
    """The search the int8 form writes in int32, run here in numpy on its table."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(-5000, 5000, (3, 11)), 1)
    sign = np.array([1, -1, 1], np.int8)
    node = Node("threshold", "q", ["x"], {"out_bias": -4}, {"thresholds": t, "sign": sign})
    steps, table, rows = search_table(node)
    x = rng.integers(-6000, 6000, (3, 500))
    at = rows[:, None].repeat(500, 1)
    for j in reversed(range(steps)):
        at = at + (sign[:, None] * x >= table[at + 2**j - 1]) * 2**j
    assert np.array_equal(at - rows[:, None] - 4, levels(node, x))


def test_a_max_pool_s_parameters_give_its_windows():
    pool = nn.MaxPool2d(3, 2, 1)
    positions, _, (oh, ow) = windows(pool, 9, 7)
    k, stride, pad, ceil = max_pool_params(positions.numpy(), oh, ow)
    found = nn.MaxPool2d(k, stride, pad, ceil_mode=ceil)
    x = torch.randn(1, 1, 9, 7)
    assert torch.equal(found(x), pool(x))
