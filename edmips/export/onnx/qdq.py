"""The "qdq" form, `model_qdq.onnx`: standard ops only, which plain onnxruntime runs. The image
in [0, 1] enters through QuantizeLinear (its uint8 codes), weights are integers behind
DequantizeLinear, and each threshold node is a binary search over its sorted thresholds
(Gather, GreaterOrEqual, Where); the logits come out scaled by their units."""

from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper

from edmips.export.ir import Node
from edmips.export.onnx import Form, register
from edmips.export.onnx.common import Writer, scoped


class QdqWriter(Writer):
    def weight(self, name: str, codes: np.ndarray, dtype) -> str:
        """Integer weights behind a DequantizeLinear."""
        stored = codes.astype(np.int8 if np.abs(codes).max() <= 127 else np.int32)
        inputs = [self.const(f"{name}/codes", stored), self.const(f"{name}/one", np.float32(1.0))]
        f32 = self.add("DequantizeLinear", inputs, f"{name}/f32")
        return f32 if dtype == np.float32 else self.add("Cast", [f32], name, to=TensorProto.DOUBLE)

    def image_codes(self) -> str:  # images in [0, 1] to their uint8 codes, round(255 x)
        scale = self.const("image/scale", np.float32(1 / 255))
        quantize = ["image", scale, self.const("image/zero", np.uint8(0))]
        codes = self.add("QuantizeLinear", quantize, "image/codes")
        return self.add("Cast", [codes], "image/float", to=TensorProto.FLOAT)

    def op_threshold(self, node: Node, x: str) -> None:
        self.nodes.extend(_binary_search(node, x, self.channel_shape(x), self.const))

    def logits(self, acc: str, node: Node) -> None:  # integers times their units
        unit = np.broadcast_to(np.asarray(node.attrs["scale"], np.float64), (self.classes,))
        self.add("Mul", [acc, self.const(f"{node.name}/unit", unit.copy())], "logits")


def _binary_search(node: Node, x: str, channel_shape, const) -> list:
    """A threshold node in standard ops: level = #{k : u >= T_k}, u = sign * x, found by
    testing T at lo + 2^j - 1 for j from high to low (thresholds rise with k). The search
    walks an int32 position in the flat table and adds each step as reached * 2^j: onnxruntime
    runs that about three times faster than a Where on int64."""
    out, a = node.name, node.arrays
    thresholds = a["thresholds"].astype(np.float32)  # integers within 2^24: exact
    channels, count = thresholds.shape
    steps = max(1, int(count).bit_length())  # 2^steps - 1 >= count
    width = 2**steps - 1
    table = np.full((channels, width), 2.0**30, np.float32)  # past the last: never reached
    table[:, :count] = thresholds
    ops, op = scoped(out)

    u = op(
        "Mul", [x, const(f"{out}/sign", a["sign"].astype(np.float32).reshape(channel_shape))], "u"
    )
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

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.float().numpy()})[0])


register(Form("qdq", "model_qdq.onnx", lambda graph: QdqWriter(graph).model(), qdq_runtime))
