"""The int8 form's conv accumulators on int8 kernels: the uint8 input a kernel reads (the
image's codes padded with their per-channel zero points), and a threshold counted on the conv's
exact int32 accumulator (ConvInteger) where no requantization gives its levels."""

import numpy as np
from onnx import TensorProto, helper

from edmips.export.ir import Node
from edmips.export.onnx.qdq import threshold_form, threshold_ops
from edmips.export.onnx.requant import accumulator_range, convinteger_digits, search_table


class Int32Accumulators:
    """A part of Int8Writer, which provides `const`, `add`, `nodes`, `offset`, `zero_points`,
    `accumulators` and `ranges_in`."""

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
        attrs, digits = conv.attrs, convinteger_digits(conv, bias)
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
        sign, shape = node.arrays["sign"], (1, -1, 1, 1)
        if (sign < 0).any():
            sign = self.const(f"{out}/sign", sign.astype(np.int32).reshape(shape))
            acc = self.add("Mul", [acc, sign], f"{out}/signed")
        steps, table, rows = search_table(node)
        table = self.const(f"{out}/table", table)
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
