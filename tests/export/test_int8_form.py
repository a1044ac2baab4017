"""model_int8.onnx: the integer graph on onnxruntime's int8 kernels. A network of the int8sim
family (edmips's ResNet-20, converted tv_mobilenet_v2 and tv_resnet18, mixed bit-widths) gives,
under plain onnxruntime, the integer runtime's logits to the bit, with every conv a QLinearConv
and no lookup table; a threshold no requantization fits is a lookup table, exact too; a family
that does not train with QLinearConv's arithmetic gets no such file, and the check says so."""

import logging
from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_family_export import _in_family
from test_traced_export import calibrated, image_batch

from edmips.export import IntegerRuntime, export, load_bundle
from edmips.export.ir import Graph
from edmips.export.onnx import save_onnx
from edmips.export.onnx.qdq import qdq_runtime
from edmips.export.verify import verify

SIZE = 32


def _tables(model: onnx.ModelProto) -> list:
    """The lookup tables (a Gather from a threshold's table; a pool gathers its windows)."""
    return [n for n in model.graph.node if n.op_type == "Gather" and n.input[0].endswith("/table")]


def _scaled_logits(graph: Graph, codes: torch.Tensor) -> torch.Tensor:
    unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
    return IntegerRuntime(graph)(codes).double() * unit


@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2", "tv_resnet18"])
def test_model_int8_gives_the_integer_runtime_s_logits_on_int8_kernels(name, tmp_path):
    model = calibrated(_in_family(name, "int8sim"), SIZE)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert [p.name for p in paths] == ["integer", "model.onnx", "model_int8.onnx", "model_qdq.onnx"]
    graph = load_bundle(tmp_path / "integer")
    codes, images = image_batch(SIZE, n=16)
    expected = _scaled_logits(graph, codes)
    got = qdq_runtime(tmp_path / "model_int8.onnx")(images)
    assert expected.std() > 0 and torch.equal(got, expected)

    int8 = onnx.load(str(tmp_path / "model_int8.onnx"))
    assert {o.domain for o in int8.opset_import} == {""}  # standard ops only
    ops = Counter(n.op_type for n in int8.graph.node)
    convs = sum(n.op == "conv" for n in graph.nodes)

    def conv_read(name: str) -> bool:  # through a max pool: it pools the requantized codes
        source = graph.node(name)
        return source.op == "conv" or (source.op == "windowmax" and conv_read(source.inputs[0]))

    # A conv read by two thresholds is written twice.
    readers = sum(n.op == "threshold" and conv_read(n.inputs[0]) for n in graph.nodes)
    float_convs = 1 if name == "resnet20" else 0  # the image with per-channel zero points
    assert ops["QLinearConv"] == readers - float_convs and ops["Conv"] == float_convs
    assert readers >= convs and not _tables(int8)
    weights = [t for t in int8.graph.initializer if t.name.endswith("/w")]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)


def test_a_threshold_that_no_requantization_fits_is_an_exact_lookup_table(tmp_path):
    rng = np.random.default_rng(0)
    graph = Graph("table", [3, 4, 4])
    graph.add(
        "input",
        "input",
        [],
        range=[0, 255],
        scale=1 / 255,
        arrays={"zero_point": np.zeros(3, np.int16)},
    )
    steps = np.sort(rng.choice(np.arange(1, 255), (3, 6), replace=True), 1)  # uneven levels
    sign = np.array([1, -1, 1], np.int8)
    graph.add(
        "threshold",
        "levels",
        ["input"],
        out_bias=0,
        range=[0, 6],
        scale=0.5,
        arrays={
            "thresholds": np.where(sign[:, None] > 0, steps, -steps[:, ::-1]).astype(np.int32),
            "sign": sign,
        },
    )
    graph.add("sumpool", "pool", ["levels"], range=[0, 96], scale=None)
    weight = rng.integers(-127, 128, (5, 3)).astype(np.int8)
    graph.add(
        "linear",
        "fc",
        ["pool"],
        acc_bits=18,
        range=[-(2**17), 2**17 - 1],
        scale=0.01,
        arrays={"weight": weight, "bias": rng.integers(-50, 50, 5)},
    )
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    assert len(_tables(onnx.load(str(tmp_path / "m.onnx")))) == 1
    codes = torch.randint(0, 256, (32, 3, 4, 4), dtype=torch.uint8)
    got = qdq_runtime(tmp_path / "m.onnx")(codes.float() / 255)
    assert torch.equal(got, _scaled_logits(graph, codes))


def test_a_family_without_qlinearconv_s_arithmetic_writes_no_int8_model(tmp_path, caplog):
    model = calibrated(_in_family("resnet20", "qatsim"), SIZE)
    with caplog.at_level(logging.WARNING):
        paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert [p.name for p in paths] == ["integer", "model.onnx", "model_qdq.onnx"]
    assert any("no model_int8.onnx" in r.message for r in caplog.records)
    images = torch.rand(4, 3, SIZE, SIZE)
    record = verify(model, tmp_path, [(images, torch.zeros(4, dtype=torch.int64))])
    assert record["int8_agreement"] is None and record["qdq_agreement"] == 1.0


def test_onnxruntime_s_fused_residual_requantization_rounds_ties_half_to_even():
    """onnxruntime fuses the form's DequantizeLinear, Add, QuantizeLinear into its QLinearAdd;
    on this CPU that keeps QuantizeLinear's rounding, which the form's check relies on."""

    shape = [1, 4, 64]
    a, b = (helper.make_tensor_value_info(n, TensorProto.UINT8, shape) for n in "ab")
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    consts = {"s": np.float32(0.5), "z": np.uint8(127), "one": np.float32(1), "zy": np.uint8(64)}
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "s", "z"], ["fa"]),
        helper.make_node("DequantizeLinear", ["b", "s", "z"], ["fb"]),
        helper.make_node("Add", ["fa", "fb"], ["f"]),
        helper.make_node("QuantizeLinear", ["f", "one", "zy"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    model = helper.make_model(
        helper.make_graph(nodes, "add", [a, b], [y], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    rng = np.random.default_rng(0)
    x1, x2 = (rng.integers(100, 156, shape).astype(np.uint8) for _ in range(2))
    total = x1.astype(int) + x2.astype(int) - 254
    assert (total % 2 == 1).sum() > 50  # half of them on exact halves
    sess = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = sess.run(None, {"a": x1, "b": x2})[0]
    assert np.array_equal(got, np.clip(np.rint(total * 0.5) + 64, 0, 255))
