"""Write the integer graph as a QONNX model: standard ONNX ops plus MultiThreshold nodes.

Tensors hold integer values in float32 (onnxruntime's Conv is float32-only), which is exact
while every accumulator stays within 2^24: a graph that would exceed it is refused, naming
the layer. The classifier's accumulator is wider, so it runs in float64 (MatMul, Add).
Tensors carry QONNX integer datatype annotations (UINT8 input, INTn / UINTn activations).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from edmips.export.graph import Graph
from edmips.export.lower import ExportError

FLOAT32_EXACT_BITS = 25  # signed: |x| <= 2^24


def _datatype(lo: int, hi: int) -> DataType:
    if lo >= 0:
        return DataType[f"UINT{max(1, int(hi).bit_length())}"]
    bits = max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1
    return DataType[f"INT{bits}"] if bits <= 32 else DataType["FLOAT32"]


def _windows(node, const) -> list[onnx.NodeProto]:
    """windowsum / windowmax: gather each output's input positions, then sum or max them.
    The index H*W reads one extra position holding what a missing position adds."""
    out, a = node.name, node.arrays
    ops = []

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        ops.append(helper.make_node(kind, inputs, [f"{out}/{name}"], **attrs))
        return f"{out}/{name}"

    flat = op("Reshape", [node.inputs[0], const(f"{out}/flat_shape", np.array([0, 0, -1]))], "flat")
    sign = None
    if node.op == "windowmax" and (a["sign"] < 0).any():
        sign = const(f"{out}/sign", a["sign"].astype(np.float32).reshape(1, -1, 1))
        flat = op("Mul", [flat, sign], "signed")
    empty = np.float32(0.0 if node.op == "windowsum" else -(2.0**30))
    first = op(
        "Slice", [flat, *(const(f"{out}/slice{i}", np.array([i])) for i in (0, 1, 2))], "first"
    )
    extra = op(
        "Add",
        [
            op("Mul", [first, const(f"{out}/zero", np.float32(0))], "zeros"),
            const(f"{out}/empty", empty),
        ],
        "extra",
    )
    padded = op("Concat", [flat, extra], "padded", axis=2)
    windows = const(f"{out}/windows", a["windows"].astype(np.int64))
    gathered = op("Gather", [padded, windows], "gathered", axis=2)
    if node.op == "windowsum":
        reduced = op(
            "ReduceSum", [gathered, const(f"{out}/axes", np.array([3]))], "reduced", keepdims=0
        )
    else:  # ReduceMax takes its axes as an attribute before opset 18
        reduced = op("ReduceMax", [gathered], "reduced", axes=[3], keepdims=0)
    if sign is not None:
        reduced = op("Mul", [reduced, sign], "unsigned")
    h_out, w_out = node.attrs["out_hw"]
    shape = const(f"{out}/shape", np.array([0, 0, h_out, w_out]))
    ops.append(helper.make_node("Reshape", [reduced, shape], [out]))
    return ops


def to_qonnx(graph: Graph) -> ModelWrapper:
    nodes, inits, ranges, ranks = [], [], {}, {}

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    c, h, w = graph.input_shape
    for node in graph.nodes:
        a, attrs, out = node.arrays, node.attrs, node.name
        x = node.inputs[0] if node.inputs else None
        rank = ranks[node.name] = 2 if node.op in ("flatten", "linear") else ranks.get(x, 4)
        channel_shape = (1, -1, 1, 1) if rank == 4 else (1, -1)
        if node.op == "input":
            zp = a["zero_point"].astype(np.float32).reshape(1, -1, 1, 1)
            nodes.append(helper.make_node("Sub", ["image", const(f"{out}/zp", zp)], [out]))
        elif node.op == "conv":
            if attrs["acc_bits"] > FLOAT32_EXACT_BITS:
                raise ExportError(
                    f"layer {out}: a {attrs['acc_bits']}-bit accumulator is not exact "
                    "in the float32 of ONNX Conv (at most 25 bits)"
                )
            pads = list(attrs["padding"]) * 2
            inputs = [x, const(f"{out}/w", a["weight"].astype(np.float32))]
            if "bias" in a:
                inputs.append(const(f"{out}/b", a["bias"].astype(np.float32)))
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    strides=list(attrs["stride"]),
                    pads=pads,
                    dilations=list(attrs.get("dilation", (1, 1))),
                    group=attrs["groups"],
                )
            )
        elif node.op in ("windowsum", "windowmax"):
            nodes.extend(_windows(node, const))
        elif node.op == "concat":
            nodes.append(helper.make_node("Concat", node.inputs, [out], axis=1))
        elif node.op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
        elif node.op == "threshold":
            if (a["sign"] < 0).any():
                sign = a["sign"].astype(np.float32).reshape(channel_shape)
                nodes.append(
                    helper.make_node("Mul", [x, const(f"{out}/sign", sign)], [f"{out}/signed"])
                )
                x = f"{out}/signed"
            lo, hi = attrs["range"]
            nodes.append(
                helper.make_node(
                    "MultiThreshold",
                    [x, const(f"{out}/t", a["thresholds"].astype(np.float32))],
                    [out],
                    domain="qonnx.custom_op.general",
                    out_dtype=_datatype(lo, hi).name,
                    out_bias=float(attrs["out_bias"]),
                    out_scale=1.0,
                )
            )
        elif node.op == "add":
            lo, hi = attrs["range"]
            nodes.append(helper.make_node("Add", node.inputs, [f"{out}/sum"]))
            nodes.append(
                helper.make_node(
                    "Clip",
                    [
                        f"{out}/sum",
                        const(f"{out}/lo", np.float32(lo)),
                        const(f"{out}/hi", np.float32(hi)),
                    ],
                    [out],
                )
            )
        elif node.op == "sumpool":
            nodes.append(
                helper.make_node(
                    "ReduceSum", [x, const(f"{out}/axes", np.array([2, 3]))], [out], keepdims=0
                )
            )
        elif node.op == "linear":  # in float64: the logits' accumulator can be wide
            nodes.append(helper.make_node("Cast", [x], [f"{out}/x64"], to=TensorProto.DOUBLE))
            weight = a["weight"].astype(np.float64).T.copy()
            classes = weight.shape[1]
            nodes.append(
                helper.make_node(
                    "MatMul", [f"{out}/x64", const(f"{out}/w", weight)], [f"{out}/acc"]
                )
            )
            last = node is graph.nodes[-1]
            sum_name = "logits" if last else f"{out}/sum"
            nodes.append(
                helper.make_node(
                    "Add",
                    [f"{out}/acc", const(f"{out}/b", a["bias"].astype(np.float64))],
                    [sum_name],
                )
            )
            if not last:  # integers held in float32 again, for the MultiThreshold after it
                nodes.append(helper.make_node("Cast", [sum_name], [out], to=TensorProto.FLOAT))
        else:
            raise ExportError(f"node {out}: op {node.op!r} has no QONNX form")
        ranges[out] = attrs.get("range")

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])
    logits = helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", classes])
    onnx_graph = helper.make_graph(nodes, graph.model, [image], [logits], inits)
    model = helper.make_model(
        onnx_graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("qonnx.custom_op.general", 1),
        ],
    )
    wrapper = ModelWrapper(model)
    wrapper.set_tensor_datatype("image", DataType["UINT8"])
    for name, rng in ranges.items():
        if rng is not None and wrapper.get_tensor_shape(name) is not None:
            wrapper.set_tensor_datatype(name, _datatype(*rng))
    return wrapper


def save_qonnx(graph: Graph, path: str | Path) -> Path:
    model = to_qonnx(graph)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model.model, str(tmp))
    tmp.replace(path)
    return path


def run_qonnx(path_or_model, codes: np.ndarray) -> np.ndarray:
    """Execute with qonnx (its MultiThreshold, onnxruntime for the standard ops)."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = (
        path_or_model
        if isinstance(path_or_model, ModelWrapper)
        else ModelWrapper(str(path_or_model))
    )
    fixed = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(codes.shape))
    model.graph.input[0].CopyFrom(fixed)
    model = model.transform(InferShapes())
    return execute_onnx(model, {"image": codes.astype(np.float32)})["logits"]
