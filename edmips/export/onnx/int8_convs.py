"""The int8 form's convs on QLinearConv: a threshold on a conv's accumulator as the kernel's
requantization (several thresholds on one conv as one QLinearConv), else a float Conv and the
reference's float64 requantization, else the thresholds counted on the exact int32 accumulator
(edmips.export.onnx.int8_accumulators); the weights in the narrowest integer type that holds
them."""

import numpy as np
from onnx import TensorProto, helper

from edmips.export.ir import Node
from edmips.export.onnx.common import FLOAT32_EXACT_BITS
from edmips.export.onnx.requant import accumulator_range, fit_conv, qlinear
from edmips.export.prepare import ExportError


def _packed_tensor(name: str, kind: int, codes: np.ndarray):
    """An INT2 or INT4 initializer: the two's-complement codes packed from the least
    significant bits of each byte up, first element first."""
    bits = 2 if kind == TensorProto.INT2 else 4
    u = (codes.reshape(-1).astype(np.int64) & (2**bits - 1)).astype(np.uint8)
    per_byte = 8 // bits
    u = np.concatenate([u, np.zeros(-len(u) % per_byte, np.uint8)]).reshape(-1, per_byte)
    packed = (u << (np.arange(per_byte, dtype=np.uint8) * bits)).sum(1).astype(np.uint8)
    return helper.make_tensor(name, kind, codes.shape, packed.tobytes(), raw=True)


def _narrow(codes: np.ndarray) -> int | None:
    """The narrowest ONNX integer type below INT8 that holds the codes, if any."""
    for kind, (lo, hi) in ((TensorProto.INT2, (-2, 1)), (TensorProto.INT4, (-8, 7))):
        if lo <= codes.min() and codes.max() <= hi:
            return kind
    return None


def levels_key(node: Node) -> tuple:
    """What gives a threshold node's levels: its input, range, bias, signs and thresholds."""
    a, (lo, hi) = node.arrays, node.attrs["range"]
    t = a["thresholds"]
    return (
        node.inputs[0],
        lo,
        hi,
        node.attrs["out_bias"],
        a["sign"].tobytes(),
        t.shape,
        t.tobytes(),
    )


class QLinearConvs:
    """A part of Int8Writer, which provides `const`, `add`, `nodes`, `inits`, `offset`,
    `merged`, `pending`, `graph`, `f32`, `uint8`, `clip`, `ranges_in`, `_conv_input`,
    `_counted_conv`, `_max_pool` and `_float_windows`."""

    def _shared_conv(self, node: Node, source: Node) -> bool:
        """Thresholds that read one conv (directly or through one max pool), each a QLinearConv
        requantization, as one QLinearConv: the weights repeated for each, each with its own
        multipliers, and a y zero point that holds every one's levels; pooled once, split into
        the thresholds' codes and each clamped to its levels. The conv's input is read once
        (tv_resnet18's stem, read by its block's and its residual stream's quantizers, had two
        7x7 convs and two pools), and a pool's clamp reads the pooled codes, a quarter of the
        conv's. False where one threshold reads the conv directly, or where one that reads it
        is no QLinearConv requantization (each written alone)."""
        if node.name in self.merged:
            return True  # written with the first of them
        conv = self.pending.get(source.inputs[0]) if source.op == "windowmax" else source
        if conv is None or conv.op != "conv" or self._conv_input(conv) is None:
            return False
        readers = {}
        for other in self.graph.nodes:
            if other.op == "threshold" and other.inputs[0] == source.name:
                readers.setdefault(levels_key(other), other)
        if any((r.arrays["sign"] < 0).any() for r in readers.values()):
            return False
        if len(readers) < 2 and source.op == "conv":
            return False
        fits = [fit_conv(r, conv) for r in readers.values()]
        # stored = level + zero for each: one zero point within every reader's levels' bounds
        zero = max(0, *(-f.low for f in fits))
        if (
            any(f.multiplier is None for f in fits)
            or zero < 0
            or max(f.high for f in fits) + zero > 255
        ):
            return False
        self._merged_qlinear_conv(conv, source, list(readers.values()), fits, zero)
        return True

    def _merged_qlinear_conv(self, conv: Node, source: Node, readers, fits, zero: int) -> None:
        out, count, channels = f"{conv.name}/merged", len(readers), len(conv.arrays["weight"])
        multiplier = np.concatenate([f.multiplier for f in fits])
        codes = self._qlinear(out, conv, count, multiplier, zero)
        self.offset[codes] = -zero
        if source.op == "windowmax":  # pooled before the clamps: the max commutes with them
            if not self._max_pool(source, codes, f"{out}/pooled"):
                pooled = self._float_windows(source, self.f32(codes), f"{out}/pooled/f32")
                self.uint8(pooled, f"{out}/pooled", -zero)
            codes = f"{out}/pooled"
        parts = [codes]
        if count > 1:
            split = self.const(f"{out}/split", np.full(count, channels, np.int64))
            parts = [f"{r.name}/part" for r in readers]
            self.nodes.append(helper.make_node("Split", [codes, split], parts, axis=1))
        for part, reader, fit in zip(parts, readers, fits):
            reach = self._reach(conv, fit.multiplier, zero)
            self.clip(part, reader.name, fit.low + zero, fit.high + zero, reach)
            self.offset[reader.name] = -zero
            self.merged.add(reader.name)

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
        lo, fit = node.attrs["range"][0], fit_conv(node, conv)
        if fit.multiplier is not None and self._conv_input(conv) is not None:
            self._qlinear_conv(node, conv, fit.multiplier, fit.low - lo, fit.high - lo, out)
            return True
        if not fit.float_exact:
            return self._counted_conv(node, conv, out)
        unit, step, shift, low, high = fit.unit, fit.step, fit.shift, fit.low, fit.high
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

    def _qlinear_conv(self, node: Node, conv: Node, multiplier, low: int, high: int, out) -> None:
        lo = node.attrs["range"][0]
        codes = self._qlinear(out, conv, 1, multiplier, -lo)
        self.clip(codes, out, low, high, self._reach(conv, multiplier, -lo))
        self.offset[out] = lo

    def _qlinear(self, out: str, conv: Node, copies: int, multiplier, y_zero: int) -> str:
        """The conv on QLinearConv, its weights repeated `copies` times (`multiplier`: per
        output channel of them all), x_scale = y_scale = 1, the output's zero point `y_zero`:
        the stored codes, `{out}/q`."""
        attrs = conv.attrs
        read, x_zero, pads, bias = self._conv_input(conv)
        one = self.const(f"{out}/one", np.float32(1.0))
        weight = np.concatenate([conv.arrays["weight"]] * copies)
        inputs = [
            read,
            one,
            self.const(f"{out}/x_zero", np.uint8(x_zero)),
            self.int_weight(f"{out}/w", weight),
            self.const(f"{out}/m", multiplier),
            self.const(f"{out}/w_zero", np.zeros(len(weight), np.int8)),
            one,
            self.const(f"{out}/y_zero", np.uint8(y_zero)),
            self.const(f"{out}/b", np.concatenate([bias] * copies).astype(np.int32)),
        ]
        return self.add(
            "QLinearConv",
            inputs,
            f"{out}/q",
            strides=list(attrs["stride"]),
            pads=pads,
            dilations=list(attrs.get("dilation", (1, 1))),
            group=attrs["groups"],
        )

    def _reach(self, conv: Node, multiplier, zero: int) -> tuple[int, int]:
        """The stored codes a QLinearConv of the conv can give, before saturation: its
        requantization rises with the accumulator, so the accumulator's bounds on the conv's
        input range give them (an 8-bit output often needs no clamp there)."""
        acc = np.array([accumulator_range(conv, self.ranges_in(conv))] * len(multiplier))
        ends = qlinear(acc, np.asarray(multiplier, np.float32)) + zero
        return int(ends.min()), int(ends.max())

    def int_weight(self, name: str, codes: np.ndarray) -> str:
        """int8 weights for QLinearConv, stored in the narrowest ONNX integer type that holds
        them (INT2, INT4: a Cast to INT8 that onnxruntime folds when it loads the model). Odd
        codes 2k + 1 (mid-rise levels: the Gaussian-step weights') store k so, and 2k + 1 is
        computed from it in int32, which onnxruntime folds too."""
        kind = _narrow(codes)
        if kind is not None:
            self.inits.append(_packed_tensor(f"{name}/codes", kind, codes))
            return self.add("Cast", [f"{name}/codes"], name, to=TensorProto.INT8)
        half = (codes - 1) // 2
        kind = _narrow(half)
        if kind is None or not (codes % 2).all():
            return self.const(name, codes.astype(np.int8))
        self.inits.append(_packed_tensor(f"{name}/half", kind, half))
        wide = self.add("Cast", [f"{name}/half"], f"{name}/half32", to=TensorProto.INT32)
        twice = self.add("Mul", [wide, self.const(f"{name}/two", np.int32(2))], f"{name}/twice")
        odd = self.add("Add", [twice, self.const(f"{name}/one", np.int32(1))], f"{name}/odd")
        return self.add("Cast", [odd], name, to=TensorProto.INT8)

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
