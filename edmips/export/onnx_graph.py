"""Export a converted model (`edmips.nn.quantize`) from its traced graph to QDQ ONNX.

Every fx node becomes standard ONNX ops, so plain onnxruntime runs the model, no custom op:
an activation quantizer is Clip, QuantizeLinear and DequantizeLinear; weights are stored as
integers (int8, or int32 where 8-bit codes need 9 bits) with a per-output-channel
DequantizeLinear, and a layer's bias is the float value the network adds. Batch norm,
pooling, residual adds and concatenations stay float32 ops between the quantizers, computing
what the fake-quantized network computes (up to float32 rounding; the integer-only forms are
the bundle and its QONNX model, edmips.export.lower_graph). Anything without a lowering is
refused with an ExportError naming the node and its operation.
"""

import copy
import functools
import operator
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torch.fx.passes.shape_prop import ShapeProp

from edmips.export.lower import ExportError, check_exportable
from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.quant import HWGQ_STEPS, SignedQuant, integer_weight

OPSET = 17

_MODULE_OPS = {nn.ReLU: "Relu", nn.Dropout: "Identity", nn.Identity: "Identity"}
_BINARY_OPS = {
    operator.add: "Add",
    operator.iadd: "Add",
    torch.add: "Add",
    operator.sub: "Sub",
    operator.mul: "Mul",
    operator.truediv: "Div",
}
_UNARY_OPS = {F.relu: "Relu", torch.relu: "Relu", F.dropout: "Identity"}
_IDENTITY_METHODS = {"contiguous", "clone"}


class _Builder:
    def __init__(self, model: fx.GraphModule):
        self.model = model
        self.modules = dict(model.named_modules())
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.env: dict[fx.Node, str] = {}

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, inputs: list[str], out: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    # quantizers

    def quantizer(self, x: str, out: str, step: float, lo: int, hi: int) -> str:
        """The value step * round(clamp(x / step, lo, hi)) (lo = 0 or -hi)."""
        scale = self.const(f"{out}/scale", np.float32(step))
        zero = self.const(f"{out}/zero", np.uint8(0) if lo == 0 else np.int8(0))
        clipped = self.clip(x, f"{out}/clipped", lo * step, hi * step)  # HWGQ's clip at lo = 0
        codes = self.add("QuantizeLinear", [clipped, scale, zero], f"{out}/codes")
        return self.add("DequantizeLinear", [codes, scale, zero], out)

    def weight(self, layer: nn.Module, out: str) -> str:
        codes, scale = integer_weight(layer.weight.detach(), layer.wbits, layer.per_channel)
        dtype = np.int8 if int(codes.abs().max()) <= 127 else np.int32  # 8-bit codes: 9 bits
        scale = scale.flatten().expand(codes.shape[0])  # one per output channel
        codes_name = self.const(f"{out}/codes", codes.numpy().astype(dtype))
        scale_name = self.const(f"{out}/scale", scale.numpy().astype(np.float32))
        return self.add("DequantizeLinear", [codes_name, scale_name], out, axis=0)

    # nodes

    def lower(self, node: fx.Node) -> str | None:
        name = node.name
        args = [self.env.get(a, a) if isinstance(a, fx.Node) else a for a in node.args]
        if node.op == "get_attr":
            value = functools.reduce(getattr, node.target.split("."), self.model)
            return self.const(name, value.detach().float().numpy())
        if node.op == "call_module":
            return self.call_module(node, self.modules[node.target], args[0])
        if node.op == "call_function":
            return self.call_function(node, args)
        if node.op == "call_method":
            return self.call_method(node, args)
        raise ExportError(f"node {name}: no ONNX lowering for {node.op} {node.target}")

    def call_module(self, node: fx.Node, m: nn.Module, x: str) -> str:
        name = node.name
        if isinstance(m, (QuantConv2d, QuantLinear)):
            if m.abits is not None:
                step, top = HWGQ_STEPS[m.abits], 2**m.abits - 1
                x = self.quantizer(x, f"{name}/input", step, 0, top)
            if isinstance(m, QuantConv2d) and m.input_pool is not None:  # quantized, then pooled
                if not isinstance(m.input_pool, nn.AvgPool2d):
                    raise ExportError(f"layer {node.target}: an adaptive input pool is not lowered")
                x = self.pool(f"{name}/pooled", "Avg", x, vars(m.input_pool))
            pool = 1
            if isinstance(m, QuantLinear) and m.pool_input:  # quantized, then averaged
                _, _, height, width = node.all_input_nodes[0].meta["tensor_meta"].shape
                pool = height * width
                x = self.add("GlobalAveragePool", [x], f"{name}/pooled")
                x = self.add("Flatten", [x], f"{name}/flat", axis=1)
            inputs = [x, self.weight(m, f"{name}/weight")]
            if m.bias is not None:
                inputs.append(self.const(f"{name}/bias", m.quant_bias(pool).detach().numpy()))
            if isinstance(m, QuantLinear):
                return self.add("Gemm", inputs, name, transB=1)
            if isinstance(m.padding, str):
                raise ExportError(f"layer {node.target}: padding={m.padding!r} not lowered")
            return self.add(
                "Conv",
                inputs,
                name,
                strides=list(m.stride),
                pads=list(m.padding) * 2,
                dilations=list(m.dilation),
                group=m.groups,
            )
        if isinstance(m, SignedQuant):
            return self.quantizer(x, name, float(m.scale()), -m.qmax, m.qmax)
        if isinstance(m, nn.BatchNorm2d):
            params = [m.weight, m.bias, m.running_mean, m.running_var]
            inputs = [
                self.const(f"{name}/{i}", p.detach().float().numpy()) for i, p in enumerate(params)
            ]
            return self.add("BatchNormalization", [x, *inputs], name, epsilon=m.eps)
        if isinstance(m, nn.ReLU6):
            return self.clip(x, name, 0.0, 6.0)
        if type(m) in _MODULE_OPS:
            return self.add(_MODULE_OPS[type(m)], [x], name)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(node.name, type(m).__name__[:3], x, vars(m))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg_pool(node, x)
        if isinstance(m, nn.Flatten) and m.end_dim == -1:
            return self.add("Flatten", [x], name, axis=m.start_dim)
        raise ExportError(f"layer {node.target}: no ONNX lowering for {type(m).__name__}")

    def call_function(self, node: fx.Node, args: list) -> str:
        name, target = node.name, node.target
        if target in _UNARY_OPS:
            return self.add(_UNARY_OPS[target], [args[0]], name)
        if target in _BINARY_OPS and len(args) == 2 and not node.kwargs:
            operands = [
                a if isinstance(a, str) else self.const(f"{name}/{i}", np.float32(a))
                for i, a in enumerate(args)
            ]
            return self.add(_BINARY_OPS[target], operands, name)
        kw = _kwargs(node)
        if target is torch.cat:
            inputs = [self.env[t] for t in kw["tensors"]]
            return self.add("Concat", inputs, name, axis=kw.get("dim", 0))
        if target is torch.flatten and kw.get("end_dim", -1) == -1:
            return self.add("Flatten", [args[0]], name, axis=kw.get("start_dim", 0))
        if target is F.relu6:
            return self.clip(args[0], name, 0.0, 6.0)
        if target is F.adaptive_avg_pool2d:
            return self.adaptive_avg_pool(node, args[0])
        if target in (F.max_pool2d, F.avg_pool2d):
            kind = "Max" if target is F.max_pool2d else "Avg"
            return self.pool(node.name, kind, args[0], kw)
        raise ExportError(f"node {name}: no ONNX lowering for {_describe(target)}")

    def call_method(self, node: fx.Node, args: list) -> str | None:
        name, method = node.name, node.target
        if method == "size":
            return None  # only shapes, which Reshape reads from the traced shapes
        if method in _IDENTITY_METHODS:
            return self.add("Identity", [args[0]], name)
        if method in ("view", "reshape", "flatten"):
            shape = [0, *node.meta["tensor_meta"].shape[1:]]  # 0: the batch dimension
            return self.add(
                "Reshape", [args[0], self.const(f"{name}/shape", np.array(shape))], name
            )
        if method in ("relu", "relu_"):
            return self.add("Relu", [args[0]], name)
        raise ExportError(f"node {name}: no ONNX lowering for method {method!r}")

    def clip(self, x: str, name: str, lo: float, hi: float) -> str:
        bounds = [
            self.const(f"{name}/lo", np.float32(lo)),
            self.const(f"{name}/hi", np.float32(hi)),
        ]
        return self.add("Clip", [x, *bounds], name)

    def pool(self, name: str, kind: str, x: str, kw: dict) -> str:
        def pair(v):
            return list(v) if isinstance(v, (tuple, list)) else [v, v]

        kernel = pair(kw["kernel_size"])
        stride = pair(kw.get("stride") or kernel)
        pads = pair(kw.get("padding", 0)) * 2
        attrs = dict(
            kernel_shape=kernel,
            strides=stride,
            pads=pads,
            ceil_mode=int(kw.get("ceil_mode", False)),
        )
        if kind == "Max":
            if pair(kw.get("dilation", 1)) != [1, 1]:
                raise ExportError(f"node {name}: dilated max pooling is not lowered")
            return self.add("MaxPool", [x], name, **attrs)
        if kw.get("divisor_override") is not None:
            raise ExportError(f"node {name}: avg pooling divisor_override is not lowered")
        include = int(kw.get("count_include_pad", True))
        return self.add("AveragePool", [x], name, count_include_pad=include, **attrs)

    def adaptive_avg_pool(self, node: fx.Node, x: str) -> str:
        """Global pooling, or the general case as a matrix of averaging weights."""
        (_, c, h, w) = node.all_input_nodes[0].meta["tensor_meta"].shape
        (_, _, oh, ow) = node.meta["tensor_meta"].shape
        name = node.name
        if (oh, ow) == (1, 1):
            return self.add("GlobalAveragePool", [x], name)
        pool = torch.zeros(h * w, oh * ow, dtype=torch.float64)
        for i in range(oh):
            rows = range(i * h // oh, -(-(i + 1) * h // oh))
            for j in range(ow):
                cols = range(j * w // ow, -(-(j + 1) * w // ow))
                for r in rows:
                    for s in cols:
                        pool[r * w + s, i * ow + j] = 1.0 / (len(rows) * len(cols))
        flat = self.add(
            "Reshape", [x, self.const(f"{name}/in", np.array([0, c, h * w]))], f"{name}/flat"
        )
        mixed = self.add(
            "MatMul", [flat, self.const(f"{name}/pool", pool.float().numpy())], f"{name}/mixed"
        )
        return self.add(
            "Reshape", [mixed, self.const(f"{name}/out", np.array([0, c, oh, ow]))], name
        )


def _kwargs(node: fx.Node) -> dict:
    normalized = normalize_function(
        node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
    )
    if normalized is None:
        raise ExportError(
            f"node {node.name}: cannot read the arguments of {_describe(node.target)}"
        )
    return dict(normalized.kwargs)


def _describe(target) -> str:
    return getattr(target, "__name__", None) or str(target)


@torch.no_grad()
def to_onnx(model: fx.GraphModule, input_size) -> onnx.ModelProto:
    """The QDQ ONNX model of a fixed-bit converted network, input `image` (N x input_size,
    images in [0, 1]) and output `logits`."""
    if not isinstance(model, fx.GraphModule):
        raise ExportError(f"model {type(model).__name__}: not a traced (quantize'd) model")
    check_exportable(model)
    model = _eval_copy(model)
    ShapeProp(model).propagate(torch.zeros(1, *input_size))
    builder = _Builder(model)
    inputs, outputs = [], []
    for node in model.graph.nodes:
        if node.op == "placeholder":
            builder.env[node] = "image"
            inputs.append(
                helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *input_size])
            )
        elif node.op == "output":
            if len(node.all_input_nodes) != 1:
                raise ExportError("output: the model must return one tensor (the logits)")
            (result,) = node.all_input_nodes
            builder.add("Identity", [builder.env[result]], "logits")
            classes = result.meta["tensor_meta"].shape[1]
            outputs.append(
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
            )
        else:
            builder.env[node] = builder.lower(node)
    opsets = [helper.make_opsetid("", OPSET)]
    graph = helper.make_graph(
        builder.nodes, getattr(model, "name", "model"), inputs, outputs, builder.inits
    )
    return helper.make_model(graph, opset_imports=opsets)


def _eval_copy(model: fx.GraphModule) -> fx.GraphModule:
    return copy.deepcopy(model).cpu().float().eval()


def save_onnx(model: fx.GraphModule, input_size, path) -> Path:
    proto = to_onnx(model, input_size)
    onnx.checker.check_model(proto)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path
