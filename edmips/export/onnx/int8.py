"""The "int8" form, `model_int8.onnx`: the integer graph on onnxruntime's int8 kernels, for speed.

Codes travel as uint8 (a tensor of range [lo, hi] stores `value - lo`), and every threshold
node becomes the arithmetic that onnxruntime runs fast, checked against its thresholds before
it is written:

- a threshold on a conv's accumulator: `QLinearConv` (uint8 input with its zero point, int8
  weights, the int32 bias), x_scale = y_scale = 1 and w_scale[c] = M_c, the units' ratio in
  float32, so that the kernel's multiplier x_scale * w_scale / y_scale is M_c and its output
  is `clamp(rne(float32(acc + B) * M_c) + z)`, with a `Clip` where the levels stop below 255.
  The image's codes, whose zero points are per channel while QLinearConv's is one number, are
  padded with each channel's zero point and its sum over the kernel taken off the bias. A conv
  whose levels that product does not give (a float bias, a multiplier whose float32 rounding
  moves a level) runs as a float `Conv` (exact: accumulators within 2^24) followed by the
  reference's float64 requantization in float ops. Where neither gives the levels (a batch
  norm between the conv and its quantizer, as the post-training and qatsim families have;
  levels falling with the accumulator; an accumulator float32 does not hold, as W8A8's 3x3
  convs of 64 channels have), the thresholds are counted on the exact int32 accumulator:
  `ConvInteger` (weights beyond 8 bits split into base-256 digits, a ConvInteger each), then
  where the accumulators (bounded by the weights and the input's range) and the thresholds
  are within 2^24, the accumulator in float32 and the qdq form's affine or corrected map on
  it (qdq.threshold_ops, checked at export), else a binary search over each channel's
  thresholds in int32, exact for any thresholds but slower.
- a threshold on codes (a pre-activation batch norm and the quantizer after it, a residual
  stream moved onto another grid): a 1x1 depthwise `QLinearConv`, rne(float32(w_c s + B_c) *
  M_c) on the stored codes s, an affine map fitted to the node's thresholds and checked on
  every input value; one uint8 pass that keeps the int8 kernels' channels-last layout.
- a residual sum's threshold (or a threshold on codes the depthwise conv does not fit):
  `DequantizeLinear` (a float32 factor A_c), `Add` (a per-channel C_c), `QuantizeLinear`
  (scale 1, so rounding half to even and saturation), the sum's two operands dequantized apart
  (A_c a power of two keeps that exact), fitted and checked the same way; where no such pair
  exists (a batch norm whose shift falls between the codes), a lookup table (`Gather`), exact
  for any thresholds but about 15 times slower.

Weights that fit INT4 or INT2 (the int8sim family's codes of 2 to 4 bits) are stored so, each
behind a Cast to INT8 that onnxruntime folds when it loads the model: the file holds about as
many bits per weight as the architecture gives them (opset 25).

A max pool between a conv and its threshold (after a ReLU) pools the requantized codes: a
monotonic requantization commutes with the max.

Only standard ONNX ops are used, no com.microsoft contrib op (QLinearAdd, QLinearAveragePool):
standard ops are specified to the bit (QuantizeLinear rounds half to even and saturates), while
the contrib ops' arithmetic is the implementation's (MLAS's QLinearAdd computes in fixed point
on x86, its ties rounded up). Pools and the classifier run on exact
integers held in floats, as in the other forms. The `int8sim` family (edmips.quant.pow2)
trains with exactly QLinearConv's requantization and runs on it; other families mostly count
their thresholds on ConvInteger. The form is refused (the export writes the others and logs
why, in one line) where an accumulator can leave int32, or where a threshold that reads
neither a conv nor codes spans more than MAX_TABLE inputs.
QLinearConv's int32 accumulation is exact on a CPU with VNNI (vpdpbusd); AVX2 without VNNI
saturates u8 x s8 pair sums at 16 bits, which the check of an export (`int8_agreement`) shows.
ConvInteger's weights are stored u8 (zero point 128), whose products MLAS widens to 16 bits
before summing: no saturation there.
"""

import numpy as np
from onnx import TensorProto, helper
from torch import nn

from edmips.export.ir import Node
from edmips.export.onnx import Form, register
from edmips.export.onnx.common import FLOAT32_EXACT_BITS, _windows, check_float32_sum
from edmips.export.onnx.qdq import QdqWriter, qdq_runtime, threshold_form, threshold_ops
from edmips.export.prepare import ExportError
from edmips.export.values import windows

MAX_TABLE = 4096  # the widest input range a threshold on codes is enumerated over
_FIT_STEPS = 100  # ternary-search steps for a fitted factor (the bracket shrinks by 2/3 each)
_BIG = 1e9  # the bound of a clamped level's open side


def levels(node: Node, a: np.ndarray) -> np.ndarray:
    """The threshold node's levels for integer inputs a [channels, n]: #{k : sign x >= T_k}."""
    t, sign = node.arrays["thresholds"].astype(np.int64), node.arrays["sign"].astype(np.int64)
    u = sign[:, None] * a
    return (u[:, :, None] >= t[:, None, :]).sum(2) + node.attrs["out_bias"]


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
    a_lo, a_hi = np.full(len(out), -span), np.full(len(out), span)
    for _ in range(_FIT_STEPS):
        m1, m2 = a_lo + (a_hi - a_lo) / 3, a_hi - (a_hi - a_lo) / 3
        better = margin(m1) < margin(m2)
        a_lo, a_hi = np.where(better, m1, a_lo), np.where(better, a_hi, m2)
    return (a_lo + a_hi) / 2, shift_range


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


def _packed_tensor(name: str, kind: int, codes: np.ndarray):
    """An INT2 or INT4 initializer: the two's-complement codes packed from the least
    significant bits of each byte up, first element first."""
    bits = 2 if kind == TensorProto.INT2 else 4
    u = (codes.reshape(-1).astype(np.int64) & (2**bits - 1)).astype(np.uint8)
    per_byte = 8 // bits
    u = np.concatenate([u, np.zeros(-len(u) % per_byte, np.uint8)]).reshape(-1, per_byte)
    packed = (u << (np.arange(per_byte, dtype=np.uint8) * bits)).sum(1).astype(np.uint8)
    return helper.make_tensor(name, kind, codes.shape, packed.tobytes(), raw=True)


def _pool_params(positions: np.ndarray, oh: int, ow: int):
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


class Int8Writer(QdqWriter):
    opset = 25  # INT2 weights

    def __init__(self, graph):
        super().__init__(graph)
        self.offset: dict[str, int] = {}  # uint8 tensors: value = stored + offset
        self.pending: dict[str, Node] = {}  # convs and adds, written where they are read
        self.floats: dict[str, str] = {}  # a tensor's values held in float32
        self.zero_points: dict[str, np.ndarray] = {}  # the image's codes: value = code - zp_c
        self.accumulators: dict[str, str] = {}  # a conv's exact int32 accumulator (ConvInteger)

    # -- representations ---------------------------------------------------------------------
    def image_codes(self) -> str:
        scale = self.const("image/scale", np.float32(1 / 255))
        quantize = ["image", scale, self.const("image/zero", np.uint8(0))]
        return self.add("QuantizeLinear", quantize, "image/codes")

    def f32(self, name: str) -> str:
        """The tensor's integer values in float32 (written once)."""
        if name in self.floats:
            return self.floats[name]
        if name in self.pending:
            node = self.pending[name]
            if node.op == "conv":
                out = self._float_conv(node, f"{name}/acc")  # exact: at most 25 bits
            elif node.op == "windowmax":
                out = self._float_windows(node, self.f32(node.inputs[0]))
            else:
                out = self.add("Add", [self.f32(i) for i in node.inputs], f"{name}/f32")
        elif name in self.zero_points:
            codes = self.add("Cast", [name], f"{name}/f32", to=TensorProto.FLOAT)
            zp = self.zero_points[name].astype(np.float32).reshape(1, -1, 1, 1)
            out = self.add("Sub", [codes, self.const(f"{name}/zp", zp)], f"{name}/value")
        else:
            out = self.add("Cast", [name], f"{name}/f32", to=TensorProto.FLOAT)
            if self.offset[name]:
                offset = self.const(f"{name}/offset", np.float32(self.offset[name]))
                out = self.add("Add", [out, offset], f"{name}/value")
        self.floats[name] = out
        return out

    def uint8(self, values: str, out: str, lo: int) -> None:
        """Float32 values of range [lo, lo + 255] stored as uint8 `out`."""
        if lo:
            values = self.add("Sub", [values, self.const(f"{out}/lo", np.float32(lo))], f"{out}/s")
        self.add("Cast", [values], out, to=TensorProto.UINT8)
        self.offset[out] = lo

    def clip(self, x: str, out: str, low: int, high: int) -> None:
        """uint8 x clamped to [low, high] (QuantizeLinear and QLinearConv saturate at 0, 255)."""
        if (low, high) == (0, 255):
            self.add("Identity", [x], out)
            return
        bounds = [self.const(f"{out}/min", np.uint8(low)), self.const(f"{out}/max", np.uint8(high))]
        self.add("Clip", [x, *bounds], out)

    # -- ops ---------------------------------------------------------------------------------
    def op_input(self, node: Node, x) -> None:
        self.add("Identity", [self.image_codes()], node.name)
        self.offset[node.name] = 0
        zero = node.arrays["zero_point"]
        if zero.any():  # value = code - zero point, per channel
            self.zero_points[node.name] = zero.astype(np.int64)

    def op_conv(self, node: Node, x: str) -> None:
        self.pending[node.name] = node

    op_add = op_conv

    def op_threshold(self, node: Node, x: str) -> None:
        lo, hi = node.attrs["range"]
        if hi - lo > 255:
            raise ExportError(f"node {node.name}: {hi - lo + 1} levels do not fit in uint8")
        source = self.pending.get(x)
        if source is not None and source.op == "conv" and self._requantized_conv(node, source):
            return
        rising = (node.arrays["sign"] > 0).all()
        if source is not None and source.op == "windowmax" and rising:
            # the max commutes with a requantization that rises with the accumulator
            codes = f"{node.name}/codes"
            if self._requantized_conv(node, self.pending[source.inputs[0]], codes):
                if not self._max_pool(source, codes, node.name):
                    pooled = self._float_windows(source, self.f32(codes), f"{node.name}/pooled")
                    self.uint8(pooled, node.name, self.offset[codes])
                return
        if source is not None and source.op == "add" and self._requantized_add(node, source):
            return
        self._codes_threshold(node, x)

    def op_windowsum(self, node: Node, x: str) -> None:
        check_float32_sum(node)
        self.floats[node.name] = self._float_windows(node, self.f32(x))

    def op_windowmax(self, node: Node, x: str) -> None:
        """Max pooling of a conv's accumulator waits for the threshold after it, which pools
        the requantized codes instead (a monotonic requantization commutes with the max)."""
        source = self.pending.get(x)
        if source is not None and source.op == "conv" and (node.arrays["sign"] > 0).all():
            self.pending[node.name] = node
        else:
            self.op_windowsum(node, x)

    def _max_pool(self, node: Node, codes: str, out: str) -> bool:
        """A windowmax of uint8 codes as onnxruntime's uint8 MaxPool, where its windows are
        those of a square torch MaxPool2d (stride, padding, ceil mode found by trying them)."""
        oh, ow = node.attrs["out_hw"]
        found = _pool_params(node.arrays["windows"], oh, ow)
        if found is None or (node.arrays["sign"] < 0).any():
            return False
        k, stride, pad, ceil = found
        self.add(
            "MaxPool",
            [codes],
            out,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            ceil_mode=int(ceil),
        )
        self.offset[out] = self.offset[codes]  # the max of value - lo is the max's
        return True

    def _float_windows(self, node: Node, values: str, out: str | None = None) -> str:
        """The window sum or max of float32 values (the other forms' ops), named `out`."""
        inner = Node(node.op, out or f"{node.name}/f32", [values], node.attrs, node.arrays)
        self.nodes.extend(_windows(inner, self.const, self.opset))
        return inner.name

    def op_concat(self, node: Node, x: str) -> None:
        self.floats[node.name] = self.add(
            "Concat", [self.f32(i) for i in node.inputs], node.name, axis=1
        )

    def op_flatten(self, node: Node, x: str) -> None:
        self.floats[node.name] = self.add("Flatten", [self.f32(x)], node.name, axis=1)

    def op_gather_channels(self, node: Node, x: str) -> None:
        """uint8 codes gathered as they are (the same offset), anything else in float32."""
        index = self.const(f"{node.name}/index", node.arrays["index"].astype(np.int64))
        if self.codes(x):
            self.add("Gather", [x, index], node.name, axis=1)
            self.offset[node.name] = self.offset[x]
        else:
            self.floats[node.name] = self.add("Gather", [self.f32(x), index], node.name, axis=1)

    def op_relu(self, node: Node, x: str) -> None:
        self.floats[node.name] = self.add("Relu", [self.f32(x)], node.name)

    def integers(self, name: str) -> str:
        return self.f32(name)

    def op_mul(self, node: Node, x: str) -> None:
        """On the operands' values in float32 (exact within 2^24, as in the other forms); the
        threshold after it counts on those values (a lookup table where its range is small)."""
        inputs = [self.f32(i) for i in node.inputs]
        super().op_mul(Node(node.op, node.name, inputs, node.attrs, node.arrays), x)
        self.floats[node.name] = node.name

    def op_table(self, node: Node, x: str) -> None:
        """table[c, x - in_lo] as stored codes (level - lo, uint8): a Gather on the flat
        table at x's value plus row c's start less in_lo."""
        out, (lo, hi) = node.name, node.attrs["range"]
        if hi - lo > 255:
            raise ExportError(f"node {out}: {hi - lo + 1} levels do not fit in uint8")
        table = node.arrays["table"]
        channels, width = table.shape
        rows = np.arange(channels, dtype=np.int64) * width - node.attrs["in_lo"]
        rows = self.const(f"{out}/rows", rows.reshape(self.channel_shape(x)))
        index = self.add("Cast", [self.f32(x)], f"{out}/x", to=TensorProto.INT64)
        index = self.add("Add", [index, rows], f"{out}/index")
        stored = self.const(f"{out}/table", (table - lo).astype(np.uint8).reshape(-1))
        self.add("Gather", [stored, index], out, axis=0)
        self.offset[out] = lo

    def op_sumpool(self, node: Node, x: str) -> None:
        super().op_sumpool(node, self.f32(x))
        self.floats[node.name] = node.name

    def op_linear(self, node: Node, x: str) -> None:
        super().op_linear(node, self.f32(x))
        self.floats[node.name] = node.name

    # -- requantizations ---------------------------------------------------------------------
    def _requantized_conv(self, node: Node, conv: Node, out: str | None = None) -> bool:
        """The threshold as QLinearConv's requantization rne(float32(acc) * M_c), M_c the
        units' ratio in float32, or as a float conv and the float64 arithmetic of the
        reference in float ops (an input that is not uint8 codes, a float bias, a multiplier
        whose float32 rounding moves a level), where that reproduces every level; else its
        thresholds counted on the exact int32 accumulator (`_counted_conv`). False where none
        of them can read the conv's input."""
        out = out or node.name
        if (node.arrays["sign"] < 0).any():  # levels falling with the accumulator
            return self._counted_conv(node, conv, out)
        lo = node.attrs["range"][0]
        acc_lo, acc_hi = conv.attrs["range"]
        channels = conv.arrays["weight"].shape[0]
        unit = np.broadcast_to(np.asarray(conv.attrs["scale"], np.float64), (channels,))
        step = np.broadcast_to(np.asarray(node.attrs["scale"], np.float64), unit.shape)
        shift = conv.arrays.get("float_bias")
        # Both sides are monotonic: equal where the levels change and at the ends, equal
        # everywhere in the accumulator's range.
        t = node.arrays["thresholds"].astype(np.int64)
        bounds = np.array([[acc_lo, acc_hi]]).repeat(channels, 0)
        points = np.clip(np.concatenate([t, t - 1, bounds], 1), acc_lo, acc_hi)
        want = levels(node, points)
        low, high = int(want.min()), int(want.max())
        multiplier = (unit / step).astype(np.float32)
        # QLinearConv accumulates in int32 and rounds float32(acc) as `qlinear` does, so any
        # accumulator int32 holds is checked here, not only those float32 holds.
        if (
            shift is None
            and conv.attrs["acc_bits"] <= 32
            and np.abs(conv.arrays["weight"]).max() <= 127
            and np.array_equal(np.clip(qlinear(points, multiplier), low, high), want)
            and self._conv_input(conv) is not None
        ):
            self._qlinear_conv(node, conv, multiplier, low - lo, high - lo, out)
            return True
        if conv.attrs["acc_bits"] > FLOAT32_EXACT_BITS or not np.array_equal(
            np.clip(requantize(points, unit, step, shift), low, high), want
        ):
            return self._counted_conv(node, conv, out)
        shape = (1, -1, 1, 1)
        value = self.add("Cast", [self.f32(conv.name)], f"{out}/acc64", to=TensorProto.DOUBLE)
        value = self.add("Mul", [value, self.const(f"{out}/unit", unit.reshape(shape))], f"{out}/v")
        if shift is not None:
            value = self.add(
                "Add", [value, self.const(f"{out}/shift", shift.reshape(shape))], f"{out}/b"
            )
        value = self.add("Div", [value, self.const(f"{out}/step", step.reshape(shape))], f"{out}/y")
        product = self.add("Cast", [value], f"{out}/y32", to=TensorProto.FLOAT)
        # Named low / high: `uint8` writes {out}/lo, the offset of the stored codes.
        clamp = [self.const(f"{out}/{k}", np.float32(v)) for k, v in (("low", low), ("high", high))]
        clipped = self.add("Clip", [self.add("Round", [product], f"{out}/r"), *clamp], f"{out}/cl")
        self.uint8(clipped, out, lo)
        return True

    def _conv_input(self, conv: Node):
        """(uint8 input, its zero point, pads, int64 bias) with which an int8 kernel computes
        the conv's accumulator, or None where its input is not uint8 codes it can read."""
        source, attrs = conv.inputs[0], conv.attrs
        weight, pads = conv.arrays["weight"], list(attrs["padding"]) * 2
        bias = conv.arrays.get("bias", np.zeros(len(weight), np.int64)).astype(np.int64)
        if source in self.zero_points:
            if attrs["groups"] != 1:
                return None
            # The kernels' input zero point is one number: the codes, padded with each
            # channel's zero point, and sum(w * zp) taken off the bias.
            zero = self.zero_points[source]
            bias = bias - (weight.sum((2, 3)).astype(np.int64) @ zero)
            return self._padded_codes(source, attrs["padding"]), 0, [0] * 4, bias
        if source not in self.offset or not -255 <= self.offset[source] <= 0:
            return None  # a zero point (-offset) uint8 cannot hold
        return source, -self.offset[source], pads, bias

    def _counted_conv(self, node: Node, conv: Node, out: str) -> bool:
        """The threshold counted on the conv's exact int32 accumulator: any thresholds (a batch
        norm between the conv and its quantizer, a step on no power-of-two grid, levels falling
        with the accumulator), where no requantization reproduces them. False where the conv's
        input is not uint8 codes."""
        acc = self._int32_accumulator(conv)
        if acc is None:
            return False
        self._counted_levels(node, acc, out, accumulator_range(conv, self.ranges_in(conv)))
        return True

    def _int32_accumulator(self, conv: Node) -> str | None:
        """The conv's accumulator as int32 (written once, whoever reads it), or None where its
        input is not uint8 codes. ConvInteger multiplies the codes by weights stored as uint8
        with zero point 128: MLAS sums u8 x u8 products exactly, where u8 x s8 pair sums
        saturate at 16 bits on a CPU without VNNI. Weights beyond 8 bits (bias-corrected codes,
        the image's per-channel grids) are split into base-256 digits, a ConvInteger each,
        scaled and summed in int32. An ExportError where a partial sum can leave int32."""
        if conv.name in self.accumulators:
            return self.accumulators[conv.name]
        read = self._conv_input(conv)
        if read is None:
            return None
        source, x_zero, pads, bias = read
        attrs, weight = conv.attrs, conv.arrays["weight"].astype(np.int64)
        digits, rest = [], weight
        while not digits or rest.any():
            digit = (rest + 128) % 256 - 128
            digits.append(digit)
            rest = (rest - digit) // 256
        # A kernel sums K products of two bytes (before its zero points are taken off); the
        # k-th digit's partial sum, scaled, is at most 255 * sum |digit| * 256^k; their total
        # and the bias bound the accumulator.
        partials = [
            255 * int(np.abs(d).reshape(len(d), -1).sum(1).max()) * 256**k
            for k, d in enumerate(digits)
        ]
        peak = max(weight[0].size * 255 * 255, sum(partials) + int(np.abs(bias).max()))
        if peak >= 2**31 - 1:
            raise ExportError(
                f"layer {conv.name}: a {peak.bit_length() + 1}-bit accumulator does not fit "
                "the int32 of ConvInteger"
            )
        name = f"{conv.name}/int32"
        zeros = [
            self.const(f"{name}/x_zero", np.uint8(x_zero)),
            self.const(f"{name}/w_zero", np.uint8(128)),
        ]
        acc = None
        for k, digit in enumerate(digits):
            stored = self.const(f"{name}/w{k}", (digit + 128).astype(np.uint8))
            part = self.add(
                "ConvInteger",
                [source, stored, *zeros],
                f"{name}/digit{k}",
                strides=list(attrs["stride"]),
                pads=pads,
                dilations=list(attrs.get("dilation", (1, 1))),
                group=attrs["groups"],
            )
            if k:
                scale = self.const(f"{name}/scale{k}", np.int32(256**k))
                part = self.add("Mul", [part, scale], f"{name}/digit{k}/scaled")
                part = self.add("Add", [acc, part], f"{name}/sum{k}")
            acc = part
        if bias.any():
            b = self.const(f"{name}/b", bias.astype(np.int32).reshape(1, -1, 1, 1))
            acc = self.add("Add", [acc, b], f"{name}/biased")
        self.accumulators[conv.name] = acc
        return acc

    def _counted_levels(self, node: Node, acc: str, out: str, acc_range) -> None:
        """uint8 `out` (level - lo) of int32 accumulators in acc_range: #{k : sign acc >= T_k}.
        Where the qdq form's affine or corrected map holds (its `threshold_form`, checked at
        export: the accumulators and thresholds within 2^24, which float32 holds), the
        accumulator cast to float32 and that map, on a node whose out_bias is less lo so that
        it gives the stored code (a small integer: exact) itself; else a binary search over
        each channel's thresholds, in int32 (exact for any thresholds and accumulators)."""
        lo = node.attrs["range"][0]
        attrs = {**node.attrs, "out_bias": node.attrs["out_bias"] - lo}
        shifted = Node(node.op, f"{out}/level", [acc], attrs, node.arrays)
        if threshold_form(shifted, acc_range)[0] != "binary search":
            values = self.add("Cast", [acc], f"{shifted.name}/acc", to=TensorProto.FLOAT)
            shape = (1, -1, 1, 1)
            self.nodes.extend(threshold_ops(shifted, values, acc_range, shape, self.const))
            self.add("Cast", [shifted.name], out, to=TensorProto.UINT8)
            self.offset[out] = lo
            return
        t, sign = node.arrays["thresholds"].astype(np.int64), node.arrays["sign"]
        channels, count = t.shape
        shape = (1, -1, 1, 1)
        if (sign < 0).any():
            sign = self.const(f"{out}/sign", sign.astype(np.int32).reshape(shape))
            acc = self.add("Mul", [acc, sign], f"{out}/signed")
        steps = max(1, int(count).bit_length())  # 2^steps - 1 >= count
        width = 2**steps - 1
        # Past the last threshold: never reached (|acc| < 2^31 - 1); one below int32: always.
        top = 2**31 - 1
        table = np.full((channels, width), top, np.int64)
        table[:, :count] = np.clip(t, -top, top)
        table = self.const(f"{out}/table", table.astype(np.int32).reshape(-1))
        rows = np.arange(channels, dtype=np.int64) * width  # where each channel's T start
        at = self.const(f"{out}/rows", rows.astype(np.int32).reshape(shape))
        for j in reversed(range(steps)):
            probe = self.add(
                "Add", [at, self.const(f"{out}/probe{j}", np.int32(2**j - 1))], f"{out}/p{j}"
            )
            reached = self.add(
                "GreaterOrEqual",
                [acc, self.add("Gather", [table, probe], f"{out}/t{j}", axis=0)],
                f"{out}/ge{j}",
            )
            # at + reached * 2^j: about three times faster than a Where under onnxruntime
            step = self.add("Cast", [reached], f"{out}/s{j}", to=TensorProto.INT32)
            jump = self.const(f"{out}/jump{j}", np.int32(2**j))
            at = self.add("Add", [at, self.add("Mul", [step, jump], f"{out}/j{j}")], f"{out}/at{j}")
        # level - lo = position - row + out_bias - lo
        start = (rows - node.attrs["out_bias"] + lo).astype(np.int32).reshape(shape)
        stored = self.add("Sub", [at, self.const(f"{out}/start", start)], f"{out}/level")
        self.add("Cast", [stored], out, to=TensorProto.UINT8)
        self.offset[out] = lo

    def _qlinear_conv(self, node: Node, conv: Node, multiplier, low: int, high: int, out) -> None:
        attrs, weight = conv.attrs, conv.arrays["weight"]
        lo = node.attrs["range"][0]
        source, x_zero, pads, bias = self._conv_input(conv)
        one = self.const(f"{out}/one", np.float32(1.0))
        inputs = [
            source,
            one,
            self.const(f"{out}/x_zero", np.uint8(x_zero)),
            self.int_weight(f"{out}/w", weight),
            self.const(f"{out}/m", multiplier),
            self.const(f"{out}/w_zero", np.zeros(len(multiplier), np.int8)),
            one,
            self.const(f"{out}/y_zero", np.uint8(-lo)),
            self.const(f"{out}/b", bias.astype(np.int32)),
        ]
        self.add(
            "QLinearConv",
            inputs,
            f"{out}/q",
            strides=list(attrs["stride"]),
            pads=pads,
            dilations=list(attrs.get("dilation", (1, 1))),
            group=attrs["groups"],
        )
        self.clip(f"{out}/q", out, low, high)
        self.offset[out] = lo

    def _padded_codes(self, name: str, padding) -> str:
        """The image's uint8 codes with each channel padded by its own zero point (a value of 0),
        one Pad per channel (a Pad pads with one number)."""
        (ph, pw), zero = padding, self.zero_points[name]
        out = f"{name}/padded{ph}x{pw}"
        if out in self.offset:
            return out
        channels = [f"{out}/{c}" for c in range(len(zero))]
        split = self.const(f"{out}/split", np.ones(len(zero), np.int64))
        self.nodes.append(helper.make_node("Split", [name, split], channels, axis=1))
        pads = self.const(f"{out}/pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
        padded = [
            self.add("Pad", [c, pads, self.const(f"{c}/zp", np.uint8(z))], f"{c}/pad")
            for c, z in zip(channels, zero)
        ]
        self.add("Concat", padded, out, axis=1)
        self.offset[out] = 0
        return out

    def int_weight(self, name: str, codes: np.ndarray) -> str:
        """int8 weights for QLinearConv, stored in the narrowest ONNX integer type that holds
        them (INT2, INT4: a Cast to INT8 that onnxruntime folds when it loads the model)."""
        for kind, (lo, hi) in ((TensorProto.INT2, (-2, 1)), (TensorProto.INT4, (-8, 7))):
            if lo <= codes.min() and codes.max() <= hi:
                self.inits.append(_packed_tensor(f"{name}/codes", kind, codes))
                return self.add("Cast", [f"{name}/codes"], name, to=TensorProto.INT8)
        return self.const(name, codes.astype(np.int8))

    def _float_conv(self, conv: Node, out: str) -> str:
        """The accumulator in float32 (exact: the conv's width is at most 25 bits)."""
        if conv.attrs["acc_bits"] > FLOAT32_EXACT_BITS:
            raise ExportError(
                f"layer {conv.name}: a {conv.attrs['acc_bits']}-bit accumulator is not exact "
                "in the float32 of ONNX Conv (at most 25 bits)"
            )
        super().op_conv(conv, self.f32(conv.inputs[0]))
        self.nodes[-1].output[0] = out  # the Conv, named for its tensor
        return out

    def _requantized_add(self, node: Node, add: Node) -> bool:
        """A residual sum's threshold as two DequantizeLinear, an Add and a QuantizeLinear,
        where a power-of-two factor (exact on each operand and on their sum) reproduces every
        level."""
        if not all(self.codes(i) for i in add.inputs):
            return False
        lo_in, hi_in = add.attrs["range"]
        values = np.arange(lo_in, hi_in + 1)
        out = levels(node, np.broadcast_to(values, (len(node.arrays["sign"]), len(values))))
        offset = sum(self.offset[i] for i in add.inputs)
        ratio = self.ratio(add.inputs[0], node)
        guess = (ratio, None if ratio is None else ratio * offset)
        fitted = fit_affine(out, values - offset, guess, True)
        if fitted is None:
            return False
        self._affine(node, add.inputs, *fitted, out)
        return True

    def _codes_threshold(self, node: Node, x: str) -> None:
        """A threshold on codes: a 1x1 depthwise QLinearConv (one uint8 pass, which keeps the
        int8 kernels' channels-last layout), else a fitted DequantizeLinear, Add and
        QuantizeLinear, else a lookup table."""
        lo_in, hi_in = self.ranges_in(node)
        if not self.codes(x) or hi_in - lo_in >= MAX_TABLE:
            self._table(node, self.f32(x))
            return
        values = np.arange(lo_in, hi_in + 1)
        out = levels(node, np.broadcast_to(values, (len(node.arrays["sign"]), len(values))))
        offset = self.offset[x]
        # The conv reads stored - x_zero: the values themselves where -offset fits uint8.
        zero = -offset if -255 <= offset <= 0 else 0
        ratio = self.ratio(x, node) if zero == -offset else None
        if -255 <= node.attrs["range"][0] <= 0:  # the levels' lowest, as the y zero point
            fitted = fit_depthwise(out, values - offset - zero, ratio)
            if fitted is not None:
                self._depthwise(node, x, zero, *fitted, out)
                return
        ratio = self.ratio(x, node)
        guess = (ratio, None if ratio is None else ratio * lo_in)
        fitted = fit_affine(out, values - lo_in, guess)
        if fitted is None:
            self._table(node, self.f32(x))
            return
        self._affine(node, [x], *fitted, out)

    def _depthwise(self, node: Node, x: str, x_zero: int, weight, bias, multiplier, out_levels):
        """rne(float32(w_c (x - x_zero) + B_c) * M_c), stored as level - lo (the y zero point)
        and clamped to the levels."""
        out, lo = node.name, node.attrs["range"][0]
        one = self.const(f"{out}/one", np.float32(1.0))
        inputs = [
            x,
            one,
            self.const(f"{out}/x_zero", np.uint8(x_zero)),
            self.int_weight(f"{out}/w", weight.reshape(-1, 1, 1, 1)),
            self.const(f"{out}/m", multiplier),
            self.const(f"{out}/w_zero", np.zeros(len(weight), np.int8)),
            one,
            self.const(f"{out}/y_zero", np.uint8(-lo)),
            self.const(f"{out}/b", bias),
        ]
        self.add("QLinearConv", inputs, f"{out}/q", group=len(weight))
        self.clip(f"{out}/q", out, int(out_levels.min()) - lo, int(out_levels.max()) - lo)
        self.offset[out] = lo

    def _affine(self, node: Node, inputs, factor, shift, out_levels: np.ndarray) -> None:
        """rne(A_c * (sum of the uint8 inputs) + C_c), stored and clamped to the levels: each
        input dequantized (one DequantizeLinear where A is one number, MLAS's vectorized kernel;
        else a Cast and a per-channel Mul, faster than its per-axis form), summed, shifted by C,
        then QuantizeLinear (scale 1: rounding half to even; its zero point is added after the
        rounding, whose ties an odd shift before it would move). Where A is one power of two
        and C is A times the inputs' offsets, the offsets are the DequantizeLinear zero points
        (exact, as is A * s + C) and no Add is written."""
        out, lo = node.name, node.attrs["range"][0]
        offsets = [self.offset[x] for x in inputs]
        uniform = bool((factor == factor[0]).all())
        absorbed = (
            uniform
            and np.frexp(factor[0])[0] == 0.5
            and all(-255 <= o <= 0 for o in offsets)
            and bool((shift == np.float32(factor[0] * sum(offsets))).all())
        )
        parts = []
        for k, x in enumerate(inputs):
            if uniform:
                zero = np.uint8(-offsets[k] if absorbed else 0)
                scale, zero = (
                    self.const(f"{out}/{k}/scale", factor[0]),
                    self.const(f"{out}/{k}/zero", zero),
                )
                parts.append(self.add("DequantizeLinear", [x, scale, zero], f"{out}/{k}/dq"))
            else:
                values = self.add("Cast", [x], f"{out}/{k}/f32", to=TensorProto.FLOAT)
                scale = self.const(f"{out}/{k}/scale", factor.reshape(self.channel_shape(x)))
                parts.append(self.add("Mul", [values, scale], f"{out}/{k}/scaled"))
        total = parts[0] if len(parts) == 1 else self.add("Add", parts, f"{out}/sum")
        if not absorbed and shift.any():
            shift = self.const(f"{out}/shift", shift.reshape(self.channel_shape(node.inputs[0])))
            total = self.add("Add", [total, shift], f"{out}/c")
        one, zero = self.const(f"{out}/one", np.float32(1.0)), self.const(f"{out}/z", np.uint8(-lo))
        self.add("QuantizeLinear", [total, one, zero], f"{out}/q")
        self.clip(f"{out}/q", out, int(out_levels.min()) - lo, int(out_levels.max()) - lo)
        self.offset[out] = lo

    def _table(self, node: Node, values: str) -> None:
        """Any threshold on a small range [lo, hi], as a lookup table per channel."""
        out = node.name
        lo_in, hi_in = self.ranges_in(node)
        width = hi_in - lo_in + 1
        if width > MAX_TABLE:
            raise ExportError(
                f"node {out}: no int8 requantization reproduces its thresholds on {width} "
                "values (a network of quant=int8sim has one)"
            )
        channels = len(node.arrays["sign"])
        a = np.arange(lo_in, hi_in + 1)[None, :].repeat(channels, 0)
        table = (levels(node, a) - node.attrs["range"][0]).astype(np.uint8).reshape(-1)
        start = (np.arange(channels) * width - lo_in).astype(np.int32)
        index = self.add("Cast", [values], f"{out}/int", to=TensorProto.INT32)
        start = self.const(f"{out}/start", start.reshape(self.channel_shape(node.inputs[0])))
        index = self.add("Add", [index, start], f"{out}/index")
        self.add("Gather", [self.const(f"{out}/table", table), index], out, axis=0)
        self.offset[out] = node.attrs["range"][0]

    def codes(self, x: str) -> bool:
        """Whether x is uint8 codes of values stored + offset."""
        return x in self.offset and x not in self.zero_points

    def ratio(self, x: str, node: Node):
        """The unit of x over the step of the threshold node reading it (None: x has none)."""
        unit = self.graph.node(x).attrs.get("scale")
        if unit is None:
            return None
        return np.asarray(unit, np.float64) / np.asarray(node.attrs["scale"], np.float64)

    def ranges_in(self, node: Node) -> tuple[int, int]:
        return tuple(self.graph.node(node.inputs[0]).attrs["range"])


register(Form("int8", "model_int8.onnx", lambda graph: Int8Writer(graph).model(), qdq_runtime))
