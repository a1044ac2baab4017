"""The "qonnx" form, `model.onnx`: standard ops plus qonnx's MultiThreshold for the thresholds;
reads the image's uint8 codes and gives the integer logits. Run by qonnx's execute_onnx.
Tensors carry QONNX integer datatype annotations (UINT8 input, INTn / UINTn activations)."""

import numpy as np
import onnx
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from edmips.export.ir import Node
from edmips.export.onnx import Form, register
from edmips.export.onnx.common import Writer


def _datatype(lo: int, hi: int) -> DataType:
    if lo >= 0:
        return DataType[f"UINT{max(1, int(hi).bit_length())}"]
    bits = max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1
    return DataType[f"INT{bits}"] if bits <= 32 else DataType["FLOAT32"]


class QonnxWriter(Writer):
    def weight(self, name: str, codes: np.ndarray, dtype) -> str:
        return self.const(name, codes.astype(dtype))

    def image_codes(self) -> str:
        return "image"

    def op_threshold(self, node: Node, x: str) -> None:
        a, out = node.arrays, node.name
        wide = self.wide_input(x)  # compared in float64, the levels cast back to float32
        dtype = np.float64 if wide else np.float32
        if (a["sign"] < 0).any():
            sign = a["sign"].astype(dtype).reshape(self.channel_shape(x))
            x = self.add("Mul", [x, self.const(f"{out}/sign", sign)], f"{out}/signed")
        lo, hi = node.attrs["range"]
        self.add(
            "MultiThreshold",
            [x, self.const(f"{out}/t", a["thresholds"].astype(dtype))],
            f"{out}/levels" if wide else out,
            domain="qonnx.custom_op.general",
            out_dtype=_datatype(lo, hi).name,
            out_bias=float(node.attrs["out_bias"]),
            out_scale=1.0,
        )
        if wide:
            self.add("Cast", [f"{out}/levels"], out, to=TensorProto.FLOAT)

    def logits(self, acc: str, node: Node) -> None:  # the integer logits
        self.add("Identity", [acc], "logits")

    def opsets(self) -> list:
        return [*super().opsets(), helper.make_opsetid("qonnx.custom_op.general", 1)]

    def finish(self, model: onnx.ModelProto) -> onnx.ModelProto:
        wrapper = ModelWrapper(model)
        wrapper.set_tensor_datatype("image", DataType["UINT8"])
        for name, rng in self.ranges.items():
            if rng is not None and wrapper.get_tensor_shape(name) is not None:
                wrapper.set_tensor_datatype(name, _datatype(*rng))
        return wrapper.model


def run_qonnx(path_or_model, codes: np.ndarray) -> np.ndarray:
    """Integer logits of the qonnx form (a path or a ModelProto) for uint8 image codes, executed
    by qonnx (its MultiThreshold, onnxruntime for the standard ops)."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    if not isinstance(path_or_model, onnx.ModelProto):
        path_or_model = str(path_or_model)
    model = ModelWrapper(path_or_model)
    fixed = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(codes.shape))
    model.graph.input[0].CopyFrom(fixed)
    model = model.transform(InferShapes())
    return execute_onnx(model, {"image": codes.astype(np.float32)})["logits"]


# No runner for the check of an export: qonnx's executor is slow, and the standard ops it runs
# are those of the qdq form, which is checked.
register(Form("qonnx", "model.onnx", lambda graph: QonnxWriter(graph).model()))
