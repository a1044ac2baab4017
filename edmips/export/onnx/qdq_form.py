"""The "qdq" form, `model_qdq.onnx`: standard ONNX with no integer convolution op (its convs
are float Convs, between DequantizeLinear and QuantizeLinear or on integer codes), which plain
onnxruntime runs.

It takes one of two models, by what the graph's thresholds are:

- requantizations: where the int8 form runs every conv on QLinearConv (or on a float Conv),
  as it does for every family trained or calibrated in its int8 forms (`deploy=int8`), the
  int8 model with each QLinearConv written as DequantizeLinear (input, weights, int32 bias)
  -> Conv -> QuantizeLinear with the same scales and zero points. onnxruntime fuses each such
  group back into a QLinearConv at its default optimization level, so the file computes the
  int8 model's integers on int8 kernels; the classifier stays on MatMulInteger. One
  difference: a conv whose int8 weights reach beyond +-64 (8-bit weights: the first conv's,
  say) takes them as uint8 with zero point 128, on which onnxruntime's kernels widen the
  products before summing them; int8 weights beside uint8 inputs are summed a pair at a time
  in 16 bits on an x86 CPU without VNNI (AVX2), where 2 * 255 * 65 no longer fits, so the
  int8 model can saturate there and this one does not. It costs speed where the kernel has
  VNNI (tv_resnet18's stem: bench/README.md). A runtime that computes the group in float
  instead (onnxruntime with its optimizations off) rounds the products of the weights and
  their per-channel scale: a code can then move by one.
- counted thresholds (the int8 form counts them on ConvInteger's accumulators) or no int8
  form: the float-op model of `qdq.py`, exact in float32 arithmetic on any runtime, but
  slower than the float network (its convolutions are the float network's, on codes).
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edmips.export.ir import Graph
from edmips.export.onnx import Form, register
from edmips.export.onnx.int8 import Int8Writer
from edmips.export.onnx.qdq import QdqWriter, qdq_runtime
from edmips.export.prepare import ExportError

# |w| at most this: a uint8 input times int8 weights stays within int16 a pair of products at a
# time (2 * 255 * 64 < 2^15), as onnxruntime's x86 kernels without VNNI sum them
PAIR_SAFE_WEIGHT = 64


def qdq_model(graph: Graph) -> onnx.ModelProto:
    """The graph's `model_qdq.onnx` (the module docstring says which)."""
    try:
        int8 = Int8Writer(graph).model()
    except ExportError:
        return QdqWriter(graph).model()
    if any(node.op_type == "ConvInteger" for node in int8.graph.node):
        return QdqWriter(graph).model()
    return in_qdq_notation(int8)


def in_qdq_notation(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, rewritten in place, with each QLinearConv(x, x_scale, x_zero, w, w_scale,
    w_zero, y_scale, y_zero, bias) as DequantizeLinear(x), DequantizeLinear(w) and
    DequantizeLinear(bias, scale x_scale * w_scale) into a Conv of the same attributes, then
    QuantizeLinear(y_scale, y_zero); int8 weights beyond PAIR_SAFE_WEIGHT, in a conv that sums
    more than one product per output, as uint8 with their zero point moved by 128."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "QLinearConv":
            nodes.append(node)
            continue
        x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, *bias = node.input
        out = node.output[0]
        nodes.append(helper.make_node("DequantizeLinear", [x, x_scale, x_zero], [f"{out}/x"]))
        codes = constants.get(w)
        if codes is not None and _pairs_can_saturate(codes):
            moved = {f"{out}/w_u8": codes, f"{out}/w_zero_u8": constants[w_zero]}
            for name, values in moved.items():
                shifted = (values.astype(np.int16) + 128).astype(np.uint8)
                graph.initializer.append(numpy_helper.from_array(shifted, name))
            w, w_zero = moved
        weight = [w, w_scale, w_zero]
        nodes.append(helper.make_node("DequantizeLinear", weight, [f"{out}/w"], axis=0))
        conv = [f"{out}/x", f"{out}/w"]
        if bias:
            scale = constants[x_scale] * constants[w_scale]
            graph.initializer.append(numpy_helper.from_array(scale, f"{out}/bias_scale"))
            dequantize = [bias[0], f"{out}/bias_scale"]
            nodes.append(helper.make_node("DequantizeLinear", dequantize, [f"{out}/b"], axis=0))
            conv.append(f"{out}/b")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("Conv", conv, [f"{out}/y"], **attrs))
        nodes.append(helper.make_node("QuantizeLinear", [f"{out}/y", y_scale, y_zero], [out]))
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]  # the int8 weights replaced
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _pairs_can_saturate(codes: np.ndarray) -> bool:
    """Whether int8 weights [out, in, kh, kw] sum more than one product per output with some
    beyond PAIR_SAFE_WEIGHT."""
    if codes.dtype != np.int8 or codes[0].size == 1:
        return False
    return int(np.abs(codes.astype(np.int16)).max()) > PAIR_SAFE_WEIGHT


register(Form("qdq", "model_qdq.onnx", qdq_model, qdq_runtime))
