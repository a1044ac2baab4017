"""The float-op model of `model_qdq.onnx` (`qdq_form.py` says where it is the one written):
standard ops only, in float arithmetic, which plain onnxruntime runs. The image in [0, 1]
enters through QuantizeLinear (its uint8 codes), weights are integers behind a Cast (folded
when onnxruntime loads the model, so the convolutions get constant, prepacked weights), and
the logits come out scaled by their units.

A threshold node, level = #{k : u >= T_k} + out_bias with u = sign * x (per channel c, the
thresholds T_ck rising in k), takes the first of three forms its thresholds allow:

- affine: where each channel's thresholds are (nearly) evenly spaced (any uniform quantizer
  after a folded batch norm), one per-channel affine map, a clip and a floor,
  `floor(clip(x * a_c + b_c, out_bias, top))`: a 1x1 depthwise Conv (weights a, bias b;
  onnxruntime fuses the Clip into it, and cannot fold it into the integer Conv before, as
  it would a Mul) and a Floor; Mul and Add on a flat tensor.
- corrected: where the map is only held within one level (exact ties that the reference's
  float64 broke one way here and the other there, a slope float32 resolves too coarsely),
  it is set to give the level or the one above, and one exact comparison with the estimate's
  own threshold takes the excess off: `level = e - (u < T_e)`, T_e gathered from a flat
  per-channel table (-inf, T_c1 .. T_c(L-1), +inf). A Gather is as slow as some 25
  elementwise ops: this form is kept for the nodes that need it.
- binary search: irregular thresholds; about five ops (Gather among them) per halving.

The map is chosen at export and checked there in numpy. The real value r(u) = u * slope + b
rises with u, and one or two float32 roundings (Mul then Add, or a fused multiply-add) move it
by at most 2^-24 of each result; with a margin twice that bound, which grows with |u|, r
minus the margin is concave and r plus it convex in u, so they are farthest outside the
bounds of a run of one level at its ends: each threshold, the input below it, and the ends of
the input range (the range of the node before). A form is taken only where every channel is
within its bounds at all of them. The inputs, thresholds and table entries are integers within
2^24, which float32 holds exactly.
"""

from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper

from edmips.export.ir import Node
from edmips.export.onnx.common import Writer, scoped, widest

FLOAT32_INTEGERS = 2**24  # every integer of at most this magnitude is exact in float32


class QdqWriter(Writer):
    def weight(self, name: str, codes: np.ndarray, dtype) -> str:
        """Integer weights behind a Cast, which onnxruntime folds when it loads the model: the
        Conv gets constant weights, which it packs once (behind a DequantizeLinear, which it
        keeps, it repacks them on every run: twice the time)."""
        stored = codes.astype(np.int8 if np.abs(codes).max() <= 127 else np.int32)
        to = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        return self.add("Cast", [self.const(f"{name}/codes", stored)], name, to=to)

    def image_codes(self) -> str:  # images in [0, 1] to their uint8 codes, round(255 x)
        scale = self.const("image/scale", np.float32(1 / 255))
        quantize = ["image", scale, self.const("image/zero", np.uint8(0))]
        codes = self.add("QuantizeLinear", quantize, "image/codes")
        return self.add("Cast", [codes], "image/float", to=TensorProto.FLOAT)

    def op_threshold(self, node: Node, x: str) -> None:
        if self.wide_input(x):
            ops = _binary_search(node, x, self.channel_shape(x), self.const, np.float64)
        else:
            ops = threshold_ops(node, x, self.ranges.get(x), self.channel_shape(x), self.const)
        self.nodes.extend(ops)

    def logits(self, acc: str, node: Node) -> None:  # integers times their units
        unit = np.broadcast_to(np.asarray(node.attrs["scale"], np.float64), (self.classes,))
        self.add("Mul", [acc, self.const(f"{node.name}/unit", unit.copy())], "logits")


def threshold_form(node: Node, x_range) -> tuple[str, tuple | None]:
    """The form a threshold node on inputs in x_range = [lo, hi] (the range of the node before,
    None where unknown) takes, and its per-channel affine map (a, b) in float32: ("affine",
    (a, b)), ("corrected", (a, b)) or ("binary search", None)."""
    for form, spread in (("affine", 1), ("corrected", 2)):
        fitted = level_estimate(node, x_range, spread)
        if fitted is not None:
            return form, fitted
    return "binary search", None


def level_estimate(node: Node, x_range, spread: int) -> tuple | None:
    """Per-channel float32 a (of the sign of the channel's `sign`) and b for which the estimate
    e = clip(floor(x * a + b), out_bias, out_bias + L - 2 + spread), computed in float32 with
    one or two roundings, is within [level, level + spread - 1] for every integer x in x_range
    (L levels), or None.

    The slope is the one with the widest interval of offsets b that meet the bounds at the
    check points (that width is concave in the slope: a ternary search), b the middle of it."""
    if x_range is None:
        return None
    lo, hi = (int(v) for v in x_range)
    thresholds = node.arrays["thresholds"].astype(np.int64)
    sign = node.arrays["sign"].astype(np.int64)
    if max(-lo, hi, int(np.abs(thresholds).max(initial=0))) > FLOAT32_INTEGERS:
        return None  # u or a threshold would not be exact in float32
    top = thresholds.shape[1] - 1 + spread  # the estimate's highest level, less out_bias
    u, levels = _check_points(thresholds, sign, lo, hi)
    # e >= level needs floor(v) >= level unless the clip lifts it there (level 0); e <= level +
    # spread - 1 needs v < level + spread unless the clip lowers it there (top)
    lower = np.where(levels > 0, levels, -np.inf)
    upper = np.where(levels + spread <= top, levels + spread, np.inf)
    u = u.astype(np.float64)
    # At a slope >= 0 a run of one level bounds b from below at its lowest input (each threshold,
    # the range's ends) and from above at its highest (each threshold less one, the ends): the
    # other points bound it no further, and the search reads half the points.
    n = thresholds.shape[1]
    by_low = np.r_[0:n, 2 * n : 2 * n + 2]
    by_high = np.r_[n : 2 * n, 2 * n : 2 * n + 2]
    lower_at, u_low = lower[:, by_low], u[:, by_low]
    upper_at, u_high = upper[:, by_high], u[:, by_high]

    def offsets(slope):  # the interval [low, high) of offsets b that meet every bound
        low = (lower_at - slope[:, None] * u_low).max(1)
        return low, (upper_at - slope[:, None] * u_high).min(1)

    def width(slope):
        low, high = offsets(slope)
        return high - low

    slope = widest(width, np.zeros(len(u)), np.full(len(u), top + 1.0))
    slope = slope.astype(np.float32).astype(np.float64)
    low, high = offsets(slope)
    # the middle, or 1/2 inside the one bounded end, or 0 where neither end is bounded
    low_open, high_open = np.isinf(low), np.isinf(high)
    low = np.where(low_open, np.where(high_open, -0.5, high - 1), low)
    middle = (low + np.where(high_open, low + 1, high)) / 2
    out_bias = node.attrs["out_bias"]
    slope, b = slope.astype(np.float32), (middle + out_bias).astype(np.float32)
    # The estimate's real value at the check points (a float32 product is exact in float64),
    # and twice a bound on what one or two float32 roundings (Mul then Add, or a fused product
    # and sum; each at most 2^-24 of its result) move it: the estimate is within its bounds
    # where the real value is that far inside them.
    scaled = slope.astype(np.float64)[:, None] * u
    v = scaled + b.astype(np.float64)[:, None] - out_bias
    error = (np.abs(scaled) + np.abs(v + out_bias)) * 2.0**-23
    if not ((v - error >= lower) & (v + error < upper)).all():
        return None
    return sign.astype(np.float32) * slope, b  # x * a = u * slope: the sign folded in


def _check_points(thresholds: np.ndarray, sign: np.ndarray, lo: int, hi: int):
    """Per channel, the inputs u = sign * x in the range where an estimate rising with u can
    stray farthest from the level (each threshold, the input below it, the range's ends: the
    ends of the runs of one level), and the levels there (less out_bias)."""
    u_lo = np.where(sign > 0, lo, -hi)[:, None]
    u_hi = np.where(sign > 0, hi, -lo)[:, None]
    ends = np.concatenate(np.broadcast_arrays(u_lo, u_hi), axis=1)
    points = np.clip(np.concatenate([thresholds, thresholds - 1, ends], axis=1), u_lo, u_hi)
    levels = [np.searchsorted(t, p, side="right") for t, p in zip(thresholds, points)]
    return points, np.stack(levels)


def threshold_ops(node: Node, x: str, x_range, channel_shape, const) -> list:
    """A threshold node in standard ops, in the first form its thresholds allow (the module's
    docstring): the nodes, their per-channel constants made by `const(name, array)`."""
    form, fitted = threshold_form(node, x_range)
    if form == "binary search":
        return _binary_search(node, x, channel_shape, const)
    out, a = node.name, node.arrays
    ops, op = scoped(out)
    count = a["thresholds"].shape[1]  # L - 1
    low = node.attrs["out_bias"]
    top = low + count + (form == "corrected")
    slope, offset = fitted
    if len(channel_shape) == 4:  # a 1x1 depthwise Conv, which the conv before cannot absorb
        weight = const(f"{out}/a", slope.reshape(-1, 1, 1, 1))
        conv = [x, weight, const(f"{out}/b", offset)]
        v = op("Conv", conv, "v", group=len(slope), kernel_shape=[1, 1])
    else:
        scaled = op("Mul", [const(f"{out}/a", slope.reshape(channel_shape)), x], "scaled")
        v = op("Add", [const(f"{out}/b", offset.reshape(channel_shape)), scaled], "v")
    # clip then floor (the bounds are integers): onnxruntime fuses a Clip into the Conv
    bounds = [const(f"{out}/low", np.float32(low)), const(f"{out}/top", np.float32(top))]
    clipped = op("Clip", [v, *bounds], "clipped")
    if form == "affine":
        ops.append(helper.make_node("Floor", [clipped], [out]))
        return ops
    # corrected: the estimate e is the level or the one above; one above where u < T_e
    e = op("Floor", [clipped], "estimate")
    channels = len(a["sign"])
    table = np.full((channels, count + 2), np.inf, np.float32)  # T_e for e = 0 .. L, less bias
    table[:, 0] = -np.inf  # level 0 is never one too many
    table[:, 1:-1] = a["thresholds"]  # integers within 2^24: exact
    rows = np.arange(channels, dtype=np.float32) * (count + 2) - low  # each channel's row
    index = op("Add", [e, const(f"{out}/rows", rows.reshape(channel_shape))], "at")
    index = op("Cast", [index], "index", to=TensorProto.INT32)
    t_e = op("Gather", [const(f"{out}/table", table.reshape(-1)), index], "t_e")
    u = x
    if (a["sign"] < 0).any():
        sign = a["sign"].astype(np.float32).reshape(channel_shape)
        u = op("Mul", [x, const(f"{out}/sign", sign)], "u")
    excess = op("Cast", [op("Less", [u, t_e], "above")], "excess", to=TensorProto.FLOAT)
    ops.append(helper.make_node("Sub", [e, excess], [out]))
    return ops


def _binary_search(node: Node, x: str, channel_shape, const, dtype=np.float32) -> list:
    """A threshold node in standard ops: level = #{k : u >= T_k}, u = sign * x, found by
    testing T at lo + 2^j - 1 for j from high to low (thresholds rise with k). The search
    walks an int32 position in the flat table and adds each step as reached * 2^j: onnxruntime
    runs that about three times faster than a Where on int64. `dtype` is x's: float32, or
    float64 for integers beyond float32's (the thresholds then are too)."""
    out, a = node.name, node.arrays
    thresholds = a["thresholds"].astype(dtype)  # integers within the type's exact range
    channels, count = thresholds.shape
    steps = max(1, int(count).bit_length())  # 2^steps - 1 >= count
    width = 2**steps - 1
    table = np.full((channels, width), np.inf, dtype)  # past the last: never reached
    table[:, :count] = thresholds
    ops, op = scoped(out)

    u = op("Mul", [x, const(f"{out}/sign", a["sign"].astype(dtype).reshape(channel_shape))], "u")
    table = const(f"{out}/table", table.reshape(-1))
    rows = const(
        f"{out}/rows", (np.arange(channels, dtype=np.int32) * width).reshape(channel_shape)
    )
    zero = helper.make_tensor(f"{out}/zero", TensorProto.INT32, [1], [0])
    zeros = op("ConstantOfShape", [op("Shape", [u], "shape")], "zeros", value=zero)
    at = op("Add", [zeros, rows], "start")  # where each element's channel's T start
    for j in reversed(range(steps)):
        probe = op("Add", [at, const(f"{out}/offset{j}", np.int32(2**j - 1))], f"probe{j}")
        reached = op("GreaterOrEqual", [u, op("Gather", [table, probe], f"t{j}")], f"reached{j}")
        step = op("Cast", [reached], f"step{j}", to=TensorProto.INT32)
        jump = op("Mul", [step, const(f"{out}/size{j}", np.int32(2**j))], f"jump{j}")
        at = op("Add", [at, jump], f"at{j}")
    level = op("Sub", [at, rows], "level")
    level = op("Add", [level, const(f"{out}/bias", np.int32(node.attrs["out_bias"]))], "biased")
    ops.append(helper.make_node("Cast", [level], [out], to=TensorProto.FLOAT))
    return ops


def qdq_runtime(path: str | Path):
    """The qdq model under plain onnxruntime, as a function of a batch of images in [0, 1]."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # No spinning after a run: the check runs torch between the sessions' runs, and spinning
    # threads would take its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.float().numpy()})[0])
