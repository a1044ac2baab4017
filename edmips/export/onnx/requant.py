"""The int8 form's requantizations, fitted: which integer arithmetic of onnxruntime's int8 ops
gives a threshold node's levels, checked on every input it can read before the writer
(edmips.export.onnx.int8) writes it. Nothing here writes ONNX.

- on a conv's accumulator: QLinearConv's rne(float32(acc) * M_c), M_c the units' ratio in
  float32 (`qlinear`), checked where the levels change and at the accumulator's ends (both
  sides are monotonic); else the reference's float64 requantization (`requantize`); else the
  thresholds counted on the exact int32 accumulator, the weights split into the base-256
  digits ConvInteger takes (`convinteger_digits`), by a binary search over each channel's
  thresholds (`search_table`) where the qdq form's maps do not hold.
- on codes s: a 1x1 depthwise QLinearConv, rne(float32(w_c s + B_c) * M_c) (`fit_depthwise`),
  or DequantizeLinear, Add, QuantizeLinear, rne(float32(float32(s A_c) + C_c)) (`fit_affine`):
  the units' ratio where it is a float32 number that gives the levels (a requantization
  without a batch norm between, ties half to even included), else the slope of the widest
  interval of shifts around the half-integers (a ternary search: the width is concave in the
  slope), saturating at the levels' extremes; None where no candidate gives every level.
- a max pool of requantized codes: the square MaxPool2d whose windows are the node's
  (`max_pool_params`), found by trying them.
"""

from typing import NamedTuple

import numpy as np
from torch import nn

from edmips.export.ir import Node
from edmips.export.onnx.common import FLOAT32_EXACT_BITS, widest
from edmips.export.prepare import ExportError
from edmips.export.values import windows

_BIG = 1e9  # the bound of a clamped level's open side


def levels(node: Node, a: np.ndarray) -> np.ndarray:
    """The threshold node's levels for integer inputs a [channels, n]: #{k : sign x >= T_k}."""
    t, sign = node.arrays["thresholds"].astype(np.int64), node.arrays["sign"].astype(np.int64)
    u = sign[:, None] * a
    return (u[:, :, None] >= t[:, None, :]).sum(2) + node.attrs["out_bias"]


def input_levels(node: Node, lo_in: int, hi_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Every input value in [lo_in, hi_in] and the node's levels of each, per channel."""
    values = np.arange(lo_in, hi_in + 1)
    return values, levels(node, np.broadcast_to(values, (len(node.arrays["sign"]), len(values))))


def requantize(acc: np.ndarray, unit: np.ndarray, step, shift: np.ndarray | None) -> np.ndarray:
    """The levels rne(float32((acc * unit + shift) / step)) of integer accumulators [channels, n],
    in float64 then float32 as the reference computes them (the step a power of two)."""
    value = acc.astype(np.float64) * unit[:, None]
    if shift is not None:
        value = value + shift[:, None]
    return np.rint((value / step[:, None]).astype(np.float32)).astype(np.int64)


def qlinear(acc: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """QLinearConv's requantization before its zero point and saturation: rne(float32(acc) *
    M), the product in float32. Where M = unit / step is a float32 number (the int8sim
    family) it is `requantize`: acc * M is exact in float64, so both round the same product."""
    return np.rint(acc.astype(np.float32) * multiplier[:, None]).astype(np.int64)


class ConvFit(NamedTuple):
    """A threshold on a conv's accumulator as a requantization: `multiplier` QLinearConv's M_c
    (None where it moves a level), `float_exact` whether the reference's float64 arithmetic on
    the accumulator in float32 gives every level; the levels' extremes low, high."""

    multiplier: np.ndarray | None
    float_exact: bool
    unit: np.ndarray
    step: np.ndarray
    shift: np.ndarray | None
    low: int
    high: int


def fit_conv(node: Node, conv: Node) -> ConvFit:
    """The requantizations of a rising threshold on the conv's accumulator, each checked where
    the levels change and at the accumulator's ends: both sides are monotonic, so equal there
    is equal everywhere in the accumulator's range."""
    acc_lo, acc_hi = conv.attrs["range"]
    channels = conv.arrays["weight"].shape[0]
    unit = np.broadcast_to(np.asarray(conv.attrs["scale"], np.float64), (channels,))
    step = np.broadcast_to(np.asarray(node.attrs["scale"], np.float64), unit.shape)
    shift = conv.arrays.get("float_bias")
    t = node.arrays["thresholds"].astype(np.int64)
    bounds = np.array([[acc_lo, acc_hi]]).repeat(channels, 0)
    points = np.clip(np.concatenate([t, t - 1, bounds], 1), acc_lo, acc_hi)
    want = levels(node, points)
    low, high = int(want.min()), int(want.max())
    multiplier = (unit / step).astype(np.float32)
    # QLinearConv accumulates in int32 and rounds float32(acc) as `qlinear` does, so any
    # accumulator int32 holds is checked here, not only those float32 holds.
    qlinear_exact = (
        shift is None
        and conv.attrs["acc_bits"] <= 32
        and np.abs(conv.arrays["weight"]).max() <= 127
        and np.array_equal(np.clip(qlinear(points, multiplier), low, high), want)
    )
    float_exact = conv.attrs["acc_bits"] <= FLOAT32_EXACT_BITS and np.array_equal(
        np.clip(requantize(points, unit, step, shift), low, high), want
    )
    return ConvFit(multiplier if qlinear_exact else None, float_exact, unit, step, shift, low, high)


def accumulator_range(conv: Node, x_range) -> tuple[int, int]:
    """Bounds [lo, hi] on every output channel's accumulator, for inputs in x_range: the bias
    plus each product w x at its extreme over the inputs and 0 (a padded position), within the
    conv's own range."""
    x_lo, x_hi = (int(v) for v in x_range)
    weight = conv.arrays["weight"].astype(np.int64)
    weight = weight.reshape(len(weight), -1)
    bias = conv.arrays.get("bias", np.zeros(len(weight), np.int64)).astype(np.int64)
    products = np.stack([weight * x_lo, weight * x_hi, np.zeros_like(weight)])
    low = products.min(0).sum(1) + bias
    high = products.max(0).sum(1) + bias
    acc_lo, acc_hi = conv.attrs["range"]
    return max(int(low.min()), acc_lo), min(int(high.max()), acc_hi)


def convinteger_digits(conv: Node, bias: np.ndarray) -> list[np.ndarray]:
    """The conv's integer weights as base-256 digits in [-128, 127] (one ConvInteger each, the
    k-th scaled by 256^k), lowest first; an ExportError where a partial sum can leave int32."""
    weight = conv.arrays["weight"].astype(np.int64)
    digits, rest = [], weight
    while not digits or rest.any():
        digit = (rest + 128) % 256 - 128
        digits.append(digit)
        rest = (rest - digit) // 256
    # A kernel sums K products of two bytes (before its zero points are taken off); the
    # k-th digit's partial sum, scaled, is at most 255 * sum |digit| * 256^k; their total
    # and the bias bound the accumulator.
    partials = [
        255 * int(np.abs(d).reshape(len(d), -1).sum(1).max()) * 256**k for k, d in enumerate(digits)
    ]
    peak = max(weight[0].size * 255 * 255, sum(partials) + int(np.abs(bias).max()))
    if peak >= 2**31 - 1:
        raise ExportError(
            f"layer {conv.name}: a {peak.bit_length() + 1}-bit accumulator does not fit "
            "the int32 of ConvInteger"
        )
    return digits


def search_table(node: Node) -> tuple[int, np.ndarray, np.ndarray]:
    """The binary search's table over each channel's thresholds: (steps, the flat int32 table,
    each channel's row start), each row padded with thresholds never reached to 2^steps - 1."""
    t = node.arrays["thresholds"].astype(np.int64)
    channels, count = t.shape
    steps = max(1, int(count).bit_length())  # 2^steps - 1 >= count
    width = 2**steps - 1
    # Past the last threshold: never reached (|acc| < 2^31 - 1); one below int32: always.
    top = 2**31 - 1
    table = np.full((channels, width), top, np.int64)
    table[:, :count] = np.clip(t, -top, top)
    rows = np.arange(channels, dtype=np.int64) * width  # where each channel's T start
    return steps, table.astype(np.int32).reshape(-1), rows


def affine(stored: np.ndarray, factor: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """rne(float32(float32(s * A) + C)): DequantizeLinear, Add, QuantizeLinear, in float32."""
    scaled = stored.astype(np.float32) * factor.astype(np.float32)[:, None]
    return np.rint(scaled + shift.astype(np.float32)[:, None]).astype(np.int64)


def _level_bounds(out: np.ndarray):
    """The open bounds (level - 1/2, level + 1/2) that A s + C must fall within to round to
    each level, and the levels' extremes low, high, where a clamp bounds one side only."""
    low, high = int(out.min()), int(out.max())
    lower = np.where(out == low, -_BIG, out - 0.5)
    upper = np.where(out == high, _BIG, out + 0.5)
    return lower, upper, low, high


def _widest_slope(out: np.ndarray, stored: np.ndarray):
    """Per channel, the slope A with the widest interval of shifts C for which rne(A s + C)
    gives the levels `out` (the interval's width is concave in A: a ternary search), and the
    function that gives that interval, (lowest C, highest C), for any slopes."""
    lower, upper, low, high = _level_bounds(out)
    s = stored.astype(np.float64)[None, :]

    def shift_range(a):
        return (lower - s * a[:, None]).max(1), (upper - s * a[:, None]).min(1)

    def margin(a):
        lo, hi = shift_range(a)
        return hi - lo

    span = float(high - low + 1)
    return widest(margin, np.full(len(out), -span), np.full(len(out), span)), shift_range


def _inside(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A point of each interval (lo, hi): the middle, or 1 past the one finite end."""
    return np.where(lo <= -_BIG / 2, hi - 1, np.where(hi >= _BIG / 2, lo + 1, (lo + hi) / 2))


def fit_affine(out: np.ndarray, stored: np.ndarray, guess, power_of_two: bool = False):
    """A_c, C_c (float32 [channels]) with clamp(affine(stored), low, high) == out[c], low and
    high the levels' extremes, or None: `guess` (the units' ratio, which a requantization
    without a batch norm between has, ties half to even included) if it is one, else the
    widest margin around the half-integers; the float32 pair is checked on every input.
    `power_of_two`: A a power of two (or 0), which a sum of two dequantized operands needs to
    stay exact."""
    low, high = int(out.min()), int(out.max())

    def fits(a32, c32):
        got = np.clip(affine(np.broadcast_to(stored, out.shape), a32, c32), low, high)
        return np.array_equal(got, out)

    if guess[0] is not None:
        guess = [np.broadcast_to(np.asarray(g, np.float64), (len(out),)) for g in guess]
        a32, c32 = (g.astype(np.float32) for g in guess)
        exact = all(bool((g32 == g).all()) for g32, g in zip((a32, c32), guess))
        if exact and fits(a32, c32):
            return a32, c32
    a, shift_range = _widest_slope(out, stored)
    if power_of_two:
        magnitude = np.abs(a)
        snapped = np.sign(a) * 2.0 ** np.round(np.log2(np.where(magnitude > 0, magnitude, 1)))
        a = np.where(magnitude > 1e-30, snapped, 0.0)
    a32, c32 = a.astype(np.float32), _inside(*shift_range(a)).astype(np.float32)
    return (a32, c32) if fits(a32, c32) else None


def offsets_absorbed(factor: np.ndarray, shift: np.ndarray, offsets) -> bool:
    """Whether A s + C is DequantizeLinear's own (s - zero point) A on each input: A one power
    of two (exact), C A times the inputs' offsets, each offset a uint8 zero point."""
    return (
        bool((factor == factor[0]).all())
        and np.frexp(factor[0])[0] == 0.5
        and all(-255 <= o <= 0 for o in offsets)
        and bool((shift == np.float32(factor[0] * sum(offsets))).all())
    )


def depthwise(stored: np.ndarray, weight, bias, multiplier) -> np.ndarray:
    """A 1x1 depthwise QLinearConv before its saturation: rne(float32(w s + B) * M) per
    channel (the product in float32), for stored inputs s [n]."""
    acc = weight.astype(np.int64)[:, None] * stored.astype(np.int64)[None, :] + bias[:, None]
    return qlinear(acc, multiplier.astype(np.float32))


def fit_depthwise(out: np.ndarray, read: np.ndarray, ratio=None):
    """int8 weights w_c, int32 biases B_c and float32 multipliers M_c with which a 1x1
    depthwise QLinearConv, clamped to the levels' extremes, gives the levels `out` [channels,
    n] on the inputs it reads, or None. A channel takes
    w = 1, B = 0 and M = `ratio` (the units' ratio, that of a requantization without a batch
    norm between, ties half to even included) where that is a float32 number that gives its
    levels; else the affine map A s + C of the widest margin becomes M (w s + B) with w = +-127
    (then smaller magnitudes), M = |A| / |w| and B the integer that puts B M inside the margin.
    Each candidate is checked on every input; the widest margin is searched for only where
    the ratio leaves channels."""
    channels = len(out)
    _, _, low, high = _level_bounds(out)

    def candidates():
        if ratio is not None:
            r = np.broadcast_to(np.asarray(ratio, np.float64), (channels,))
            if (r.astype(np.float32) == r).all():
                yield np.ones(channels, np.int64), np.zeros(channels, np.int64), r
        a, shift_range = _widest_slope(out, read)
        for magnitude in range(127, 63, -1):
            w = np.where(a < 0, -magnitude, magnitude)
            m = (np.abs(a) / magnitude).astype(np.float32)
            m = np.where(m > 0, m, np.float32(1))
            c = _inside(*shift_range(w * m.astype(np.float64)))
            yield w, np.clip(np.rint(c / m), -(2**31), 2**31 - 1).astype(np.int64), m

    weight = np.zeros(channels, np.int64)
    bias = out[:, 0].astype(np.int64)  # a channel of one level: w = 0, B = that level, M = 1
    multiplier = np.ones(channels, np.float32)
    todo = (out != out[:, :1]).any(1)
    for w, b, m in candidates():
        if not todo.any():
            break
        m = m.astype(np.float32)
        good = todo & (np.clip(depthwise(read, w, b, m), low, high) == out).all(1)
        weight[good], bias[good], multiplier[good] = w[good], b[good], m[good]
        todo &= ~good
    if todo.any():
        return None
    return weight.astype(np.int8), bias.astype(np.int32), multiplier


def max_pool_params(positions: np.ndarray, oh: int, ow: int):
    """(kernel, stride, padding, ceil_mode) of the square max pool whose windows these are."""
    for k in (2, 3, 5, 7):
        for stride in (1, 2, 3):
            for pad in range(k // 2 + 1):
                for ceil in (False, True):
                    pool = nn.MaxPool2d(k, stride, pad, ceil_mode=ceil)
                    low = stride * (oh - 1) + k - 2 * pad - (stride - 1 if ceil else 0)
                    for h in range(max(1, low), low + stride + 1):
                        w = h + (ow - oh) * stride
                        if w < 1:
                            continue
                        got, _, out_hw = windows(pool, h, w)
                        if out_hw == (oh, ow) and np.array_equal(got.numpy(), positions):
                            return k, stride, pad, ceil
    return None
