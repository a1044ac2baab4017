"""The "int8" form, `model_int8.onnx`: the integer graph on onnxruntime's int8 kernels, for speed.

Codes travel as uint8 (a tensor of range [lo, hi] stores `value - lo`, a residual sum's
requantized codes at times `value - lo + 1`: below), and every threshold node becomes the
arithmetic that onnxruntime runs fast, checked against its thresholds before it is written:

- a threshold on a conv's accumulator: `QLinearConv` (uint8 input with its zero point, int8
  weights, the int32 bias), x_scale = y_scale = 1 and w_scale[c] = M_c, the units' ratio in
  float32, so that the kernel's multiplier x_scale * w_scale / y_scale is M_c and its output
  is `clamp(rne(float32(acc + B) * M_c) + z)`, with a `Clip` where the levels stop below 255
  and the accumulator's bounds (the weights on the input's range) can requantize past them.
  Several thresholds on one conv (tv_resnet18's stem, read by its block's and its residual
  stream's quantizers) are one QLinearConv of the weights repeated, each with its own M_c,
  split after it (and after its max pool); two with the same levels on one tensor are one.
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
  every input value; one uint8 pass that keeps the int8 kernels' channels-last layout. On the
  image's own codes (its normalization), channels-first, the elementwise form below first.
- a residual sum's threshold (or a threshold on codes the depthwise conv does not fit):
  `DequantizeLinear` (a float32 factor A_c), `Add` (a per-channel C_c), `QuantizeLinear`
  (scale 1, so rounding half to even and saturation), the sum's two operands dequantized apart
  (A_c a power of two keeps that exact), fitted and checked the same way; where no such pair
  exists (a batch norm whose shift falls between the codes), a lookup table (`Gather`), exact
  for any thresholds but about 15 times slower.

Weights that fit INT4 or INT2 (the int8sim family's codes of 2 to 4 bits) are stored so, each
behind a Cast to INT8 that onnxruntime folds when it loads the model: the file holds about as
many bits per weight as the architecture gives them (opset 25).

A max pool between a conv and its threshold (after a ReLU) pools the requantized codes (a
QLinearConv's clamped after it, on a quarter of them): a monotonic requantization and a clamp
commute with the max.

Only standard ONNX ops are used, no com.microsoft contrib op (QLinearAdd, QLinearAveragePool):
standard ops are specified to the bit (QuantizeLinear rounds half to even and saturates), while
the contrib ops' arithmetic is the implementation's (MLAS's QLinearAdd computes in fixed point
on x86, its ties rounded up). onnxruntime itself fuses a residual sum's two DequantizeLinear,
Add and QuantizeLinear into QLinearAdd, whose float kernel adds the output zero point before
it rounds: exact with a power-of-two factor and an even zero point, so levels that start at
an odd value (-127) are stored from 1, or, where 256 levels leave no room, written with Cast
and Mul, which nothing fuses. Pools run on exact integers held in floats, as in the other
forms; the classifier on MatMulInteger (its pooled inputs as two uint8 digits) where its sums
stay within int32, else in float64 as there. The `int8sim` family (edmips.quant.pow2)
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
from onnx import TensorProto

from edmips.export.ir import Node
from edmips.export.onnx import Form, register
from edmips.export.onnx.common import _windows, check_float32_sum
from edmips.export.onnx.int8_accumulators import Int32Accumulators
from edmips.export.onnx.int8_convs import QLinearConvs, levels_key
from edmips.export.onnx.qdq import QdqWriter, qdq_runtime
from edmips.export.onnx.requant import (
    affine,
    depthwise,
    fit_affine,
    fit_depthwise,
    input_levels,
    max_pool_params,
    offsets_absorbed,
)
from edmips.export.prepare import ExportError

MAX_TABLE = 4096  # the widest input range a threshold on codes is enumerated over


class Int8Writer(QLinearConvs, Int32Accumulators, QdqWriter):
    opset = 25  # INT2 weights

    def __init__(self, graph):
        super().__init__(graph)
        self.offset: dict[str, int] = {}  # uint8 tensors: value = stored + offset
        self.pending: dict[str, Node] = {}  # convs and adds, written where they are read
        self.floats: dict[str, str] = {}  # a tensor's values held in float32
        self.zero_points: dict[str, np.ndarray] = {}  # the image's codes: value = code - zp_c
        self.accumulators: dict[str, str] = {}  # a conv's exact int32 accumulator (ConvInteger)
        self.written: dict[tuple, str] = {}  # each threshold written, by what gives its levels
        self.merged: set[str] = set()  # thresholds written with another's QLinearConv

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

    def clip(self, x: str, out: str, low: int, high: int, reach=(0, 255)) -> None:
        """uint8 x clamped to [low, high], where x's stored values, within `reach` (QuantizeLinear
        and QLinearConv saturate at 0, 255), can leave it."""
        if low <= max(reach[0], 0) and min(reach[1], 255) <= high:
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
        # A residual stream's quantizer and the next layer's input quantizer often have the
        # same levels on the same tensor (mobilenet_v2's): one requantization serves both.
        key = levels_key(node)
        if key in self.written:
            self.add("Identity", [self.written[key]], node.name)
            self.offset[node.name] = self.offset[self.written[key]]
            return
        self.written[key] = node.name
        source = self.pending.get(x)
        if source is not None and self._shared_conv(node, source):
            return
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
        found = max_pool_params(node.arrays["windows"], oh, ow)
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
        lo, hi = self.graph.node(x).attrs["range"]
        weight = np.abs(node.arrays["weight"].astype(np.int64))
        peak = int(weight.sum(1).max()) * hi  # the products' sum, the bias added in float64
        last = node is self.graph.nodes[-1]  # the logits: float64 after the int32 sum
        if not last or lo < 0 or hi >= 2**16 or weight.max() > 127 or peak >= 2**31:
            super().op_linear(node, self.f32(x))
        else:
            self._integer_linear(node, x)
        self.floats[node.name] = node.name

    def _integer_linear(self, node: Node, x: str) -> None:
        """The classifier (the last node) on int8 kernels: its inputs (a pool's sums, below
        2^16) as two uint8 digits, each times the weights by MatMulInteger (stored u8 with zero
        point 128, as ConvInteger's: no 16-bit saturation), summed in int32 (exact where the
        weights' and the inputs' bounds keep the sum within it), then the bias and the units in
        float64. The float64 MatMul read eight bytes a weight: at batch 1 it was the slowest
        node of tv_mobilenet_v2."""
        out, weight = node.name, node.arrays["weight"]
        values = self.add("Cast", [self.f32(x)], f"{out}/x32", to=TensorProto.INT32)
        base = self.const(f"{out}/base", np.int32(256))
        high = self.add("Div", [values, base], f"{out}/high32")  # floor: values >= 0
        low = self.add(
            "Sub", [values, self.add("Mul", [high, base], f"{out}/h256")], f"{out}/low32"
        )
        stored = self.const(f"{out}/w", (weight.T.astype(np.int64) + 128).astype(np.uint8))
        zeros = [
            self.const(f"{out}/x_zero", np.uint8(0)),
            self.const(f"{out}/w_zero", np.uint8(128)),
        ]
        parts = []
        for digit in (low, high):
            codes = self.add("Cast", [digit], f"{digit}/u8", to=TensorProto.UINT8)
            parts.append(self.add("MatMulInteger", [codes, stored, *zeros], f"{digit}/acc"))
        acc = self.add(
            "Add", [parts[0], self.add("Mul", [parts[1], base], f"{out}/high_acc")], f"{out}/acc32"
        )
        acc = self.add("Cast", [acc], f"{out}/acc", to=TensorProto.DOUBLE)
        self.classes = len(weight)
        bias = self.const(f"{out}/b", node.arrays["bias"].astype(np.float64))
        self.logits(self.add("Add", [acc, bias], f"{out}/sum"), node)

    def _requantized_add(self, node: Node, add: Node) -> bool:
        """A residual sum's threshold as two DequantizeLinear, an Add and a QuantizeLinear,
        where a power-of-two factor (exact on each operand and on their sum) reproduces every
        level."""
        if not all(self.codes(i) for i in add.inputs):
            return False
        values, out = input_levels(node, *add.attrs["range"])
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
        QuantizeLinear, else a lookup table. On the image's codes, the model's channels-first
        input, the elementwise ops come first: they cost a fraction of a depthwise conv of
        three channels, which reorders them to channels-last first."""
        lo_in, hi_in = self.ranges_in(node)
        if not self.codes(x) or hi_in - lo_in >= MAX_TABLE:
            self._table(node, self.f32(x))
            return
        values, out = input_levels(node, lo_in, hi_in)
        image = self.graph.node(x).op == "input"
        if not image and self._fitted_depthwise(node, x, values, out):
            return
        ratio, offset = self.ratio(x, node), self.offset[x]  # stored = value - offset
        guess = (ratio, None if ratio is None else ratio * offset)
        fitted = fit_affine(out, values - offset, guess)
        if fitted is not None:
            self._affine(node, [x], *fitted, out, affine(values[None] - offset, *fitted[:2]))
        elif not (image and self._fitted_depthwise(node, x, values, out)):
            self._table(node, self.f32(x))

    def _fitted_depthwise(self, node: Node, x: str, values, out) -> bool:
        """The threshold on codes x as a 1x1 depthwise QLinearConv, where one gives its levels
        `out` on every input value."""
        if not -255 <= node.attrs["range"][0] <= 0:  # the lowest level is the y zero point
            return False
        offset = self.offset[x]
        # The conv reads stored - x_zero: the values themselves where -offset fits uint8.
        zero = -offset if -255 <= offset <= 0 else 0
        ratio = self.ratio(x, node) if zero == -offset else None
        read = values - offset - zero
        fitted = fit_depthwise(out, read, ratio)
        if fitted is None:
            return False
        self._depthwise(node, x, zero, *fitted, out, depthwise(read, *fitted))
        return True

    def _depthwise(self, node, x: str, x_zero: int, weight, bias, multiplier, out_levels, reach):
        """rne(float32(w_c (x - x_zero) + B_c) * M_c), stored as level - lo (the y zero point)
        and clamped to the levels where it can leave them (`reach`, its levels unclamped on
        every input)."""
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
        self._clip_levels(f"{out}/q", out, lo, out_levels, reach)
        self.offset[out] = lo

    def _clip_levels(self, x: str, out: str, lo: int, out_levels, reach=None) -> None:
        """Stored codes x (level - lo) clamped to the levels' extremes, where the levels before
        the clamp (`reach`, on every input; None: unknown) can leave them."""
        low, high = int(out_levels.min()) - lo, int(out_levels.max()) - lo
        bounds = (0, 255) if reach is None else (int(reach.min()) - lo, int(reach.max()) - lo)
        self.clip(x, out, low, high, bounds)

    def _affine(self, node: Node, inputs, factor, shift, out_levels, reach=None) -> None:
        """rne(A_c * (sum of the uint8 inputs) + C_c), stored and clamped to the levels: each
        input dequantized (one DequantizeLinear where A is one number, MLAS's vectorized kernel;
        else a Cast and a per-channel Mul, faster than its per-axis form, but on the image's
        channels-first codes the per-axis form: one pass over the image less), summed, shifted
        by C, then QuantizeLinear (scale 1: rounding half to even; its zero point is added
        after the rounding, whose ties an odd shift before it would move). Where A is one power
        of two and C is A times the inputs' offsets, the offsets are the DequantizeLinear zero
        points (exact, as is A * s + C) and no Add is written."""
        out, lo = node.name, node.attrs["range"][0]
        offsets = [self.offset[x] for x in inputs]
        uniform = bool((factor == factor[0]).all())
        absorbed = offsets_absorbed(factor, shift, offsets)
        if len(inputs) == 2 and uniform and (absorbed or not shift.any()) and lo % 2:
            # onnxruntime fuses two DequantizeLinear, the Add and the QuantizeLinear into its
            # QLinearAdd, which adds the zero point before it rounds: an odd one rounds ties to
            # odd. Stored one higher (an even zero point), or no such group where that leaves
            # uint8.
            if 0 <= 1 - lo <= 255 and int(out_levels.max()) - lo + 1 <= 255:
                lo -= 1
            else:
                uniform = absorbed = False
        parts = []
        for k, x in enumerate(inputs):
            if uniform:
                zero = np.uint8(-offsets[k] if absorbed else 0)
                scale, zero = (
                    self.const(f"{out}/{k}/scale", factor[0]),
                    self.const(f"{out}/{k}/zero", zero),
                )
                parts.append(self.add("DequantizeLinear", [x, scale, zero], f"{out}/{k}/dq"))
            elif self.graph.node(x).op == "input":
                scale = self.const(f"{out}/{k}/scale", factor)
                zero = self.const(f"{out}/{k}/zero", np.zeros(len(factor), np.uint8))
                parts.append(
                    self.add("DequantizeLinear", [x, scale, zero], f"{out}/{k}/dq", axis=1)
                )
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
        self._clip_levels(f"{out}/q", out, lo, out_levels, reach)
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
        table = (input_levels(node, lo_in, hi_in)[1] - node.attrs["range"][0]).astype(np.uint8)
        start = (np.arange(len(node.arrays["sign"])) * width - lo_in).astype(np.int32)
        index = self.add("Cast", [values], f"{out}/int", to=TensorProto.INT32)
        start = self.const(f"{out}/start", start.reshape(self.channel_shape(node.inputs[0])))
        index = self.add("Add", [index, start], f"{out}/index")
        self.add("Gather", [self.const(f"{out}/table", table.reshape(-1)), index], out, axis=0)
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
