"""model_int8.onnx: the integer graph on onnxruntime's int8 kernels. A network of the int8sim
family (edmips's ResNet-20, converted tv_mobilenet_v2 and tv_resnet18, mixed bit-widths) gives,
under plain onnxruntime, the integer runtime's logits to the bit, with every conv a QLinearConv
and no lookup table, and model_qdq.onnx is that model in QDQ notation, which onnxruntime runs on
the same kernels; a threshold no requantization fits is a lookup table, exact too (a family
that does not train with QLinearConv's arithmetic counts its thresholds on ConvInteger's
accumulators: tests/export/test_int8_fallbacks.py)."""

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
from edmips.export.onnx.qdq_form import in_qdq_notation

SIZE = 32


def _tables(model: onnx.ModelProto) -> list:
    """The lookup tables (a Gather from a threshold's table; a pool gathers its windows)."""
    return [n for n in model.graph.node if n.op_type == "Gather" and n.input[0].endswith("/table")]


def _scaled_logits(graph: Graph, codes: torch.Tensor) -> torch.Tensor:
    unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
    return IntegerRuntime(graph)(codes).double() * unit


def pooled_classifier(graph: Graph, source: str, lo: int, hi: int, hw: int, channels: int):
    """A sum pool over `source` (codes in lo..hi, hw x hw) and a classifier that passes each
    channel's sum on: the logits are the pooled levels."""
    graph.add("sumpool", "pool", [source], range=[lo * hw * hw, hi * hw * hw], scale=None)
    graph.add(
        "linear",
        "fc",
        ["pool"],
        acc_bits=18,
        range=[-(2**17), 2**17 - 1],
        scale=1.0,
        arrays={"weight": np.eye(channels, dtype=np.int8), "bias": np.zeros(channels, np.int64)},
    )
    return graph


@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2", "tv_resnet18"])
def test_model_int8_and_model_qdq_give_the_integer_runtime_s_logits_on_int8_kernels(name, tmp_path):
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

    # Every conv is one QLinearConv, however many thresholds read it: two with the same levels
    # are written once (a residual stream's quantizer and the next layer's input quantizer, as
    # mobilenet_v2 has), others as one QLinearConv of the weights repeated (tv_resnet18's
    # stem, pooled once); the image's codes, whose zero points are per channel, padded with
    # them (one Pad per channel), so that the first conv is one too.
    thresholds = [n for n in graph.nodes if n.op == "threshold"]
    distinct = {_levels_key(n): n for n in thresholds}.values()
    assert (len(distinct) < len(thresholds)) == (name == "tv_mobilenet_v2")
    readers = sum(conv_read(n.inputs[0]) for n in distinct)
    assert (readers > convs) == name.startswith("tv_")  # shared convs
    layers = Counter(
        _layer_of(n, int8, graph) for n in int8.graph.node if n.op_type == "QLinearConv"
    )
    assert all(layers[n.name] == 1 for n in graph.nodes if n.op == "conv")
    assert ops["MaxPool"] == sum(n.op == "windowmax" for n in graph.nodes)
    assert ops["Conv"] == 0 and not _tables(int8)
    # the classifier on int8 kernels too: its pooled inputs as two uint8 digits
    assert ops["MatMulInteger"] == 2 and not ops["MatMul"]
    assert ops["Pad"] == (3 if name == "resnet20" else 0)
    # The rest are thresholds on codes (the pre-activation batch norms'), 1x1 depthwise convs.
    codes_read = sum(
        not conv_read(n.inputs[0]) and graph.node(n.inputs[0]).op != "add" for n in distinct
    )
    assert convs <= ops["QLinearConv"] <= convs + codes_read
    if name == "resnet20":
        assert ops["QLinearConv"] > convs
    _assert_narrowest_weights(graph, int8)

    # model_qdq.onnx: each QLinearConv as DequantizeLinear -> Conv -> QuantizeLinear, which
    # onnxruntime fuses back: the same kernels as model_int8.onnx, the same logits
    qdq = onnx.load(str(tmp_path / "model_qdq.onnx"))
    qdq_ops = Counter(n.op_type for n in qdq.graph.node)
    assert qdq_ops["QLinearConv"] == 0 and qdq_ops["Conv"] == ops["QLinearConv"]
    assert torch.equal(qdq_runtime(tmp_path / "model_qdq.onnx")(images), expected)
    kernels = [
        _optimized_ops(tmp_path / f, tmp_path) for f in ("model_qdq.onnx", "model_int8.onnx")
    ]
    assert kernels[0] == kernels[1] and kernels[0]["QLinearConv"] == ops["QLinearConv"]
    # int8 weights that a pair of products could saturate with (8-bit ones: the first conv's)
    # as uint8 (below), the others as model_int8.onnx has them
    stored = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    moved = [a for n, a in stored.items() if n.endswith("/w_u8")]
    assert moved and all(a.dtype == np.uint8 for a in moved)
    weights = [a for a in stored.values() if a.dtype == np.int8 and a.ndim == 4 and a[0].size > 1]
    assert all(np.abs(a.astype(int)).max() <= 64 for a in weights)


def _qlinear_conv_model(weight: np.ndarray, group: int = 1) -> onnx.ModelProto:
    """One QLinearConv on uint8 codes, as the int8 form writes it (scales 1, multiplier 1/256)."""
    out_channels, channels = weight.shape[0], weight.shape[1] * group
    inits = [
        numpy_helper.from_array(np.float32(1.0), "one"),
        numpy_helper.from_array(np.uint8(0), "zero"),
        numpy_helper.from_array(weight.astype(np.int8), "w"),
        numpy_helper.from_array(np.full(out_channels, 1 / 256, np.float32), "m"),
        numpy_helper.from_array(np.zeros(out_channels, np.int8), "w_zero"),
    ]
    inputs = ["x", "one", "zero", "w", "m", "w_zero", "one", "zero"]
    node = helper.make_node("QLinearConv", inputs, ["y"], group=group)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    graph = helper.make_graph([node], "conv", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize(
    "weight,group,moved",
    [
        (np.array([[[[64]], [[64]]]]), 1, False),  # 2 * 255 * 64 fits int16
        (np.array([[[[65]], [[-1]]]]), 1, True),  # a pair can reach 2 * 255 * 65
        (np.array([[[[127]]], [[[-128]]]]), 2, False),  # depthwise 1x1: one product each
    ],
)
def test_qdq_weights_that_a_pair_of_products_could_saturate_are_uint8(weight, group, moved):
    """model_qdq.onnx's QDQ notation stores int8 weights as uint8 (zero point 128), where
    onnxruntime's x86 kernels without VNNI, which sum uint8 x int8 products a pair at a time in
    int16, could saturate; the same integers either way."""
    qdq = in_qdq_notation(_qlinear_conv_model(weight, group))
    stored = {t.name: t for t in qdq.graph.initializer}
    assert ("y/w_u8" in stored) == moved and (("w" in stored) != moved)
    if moved:
        assert numpy_helper.to_array(stored["y/w_zero_u8"]).tolist() == [128] * len(weight)
    x = np.full((1, weight.shape[1] * group, 4, 4), 255, np.uint8)
    x[..., ::2] = 3
    cpu = ["CPUExecutionProvider"]
    runs = [
        onnxruntime.InferenceSession(m.SerializeToString(), providers=cpu).run(None, {"x": x})[0]
        for m in (_qlinear_conv_model(weight, group), qdq)
    ]
    assert np.array_equal(*runs) and runs[0].any()


def _optimized_ops(path, tmp_path) -> Counter:
    """The ops onnxruntime runs the model with, after its graph optimizations (the QDQ fusions
    are at the extended level)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"optimized_{path.name}")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _levels_key(node) -> tuple:
    """What gives a threshold node's levels: its input, thresholds, signs, range and bias."""
    a = node.arrays
    return (node.inputs[0], a["thresholds"].tobytes(), a["sign"].tobytes(), str(node.attrs))


def _weights(node: onnx.NodeProto, int8: onnx.ModelProto) -> np.ndarray:
    """A QLinearConv's int8 weights, as stored (an INT2 / INT4 initializer behind a Cast)."""
    inits = {t.name: t for t in int8.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in int8.graph.node if n.op_type == "Cast"}
    return numpy_helper.to_array(inits[casts.get(node.input[3], node.input[3])])


def _layer_of(node: onnx.NodeProto, int8: onnx.ModelProto, graph: Graph) -> str | None:
    """The conv layer whose weights the QLinearConv's are, once or repeated along the output
    channels (thresholds that share the conv)."""
    codes = _weights(node, int8).astype(np.int64)
    for layer in (n for n in graph.nodes if n.op == "conv"):
        w = layer.arrays["weight"]
        count = len(codes) // len(w)
        if codes.shape[1:] == w.shape[1:] and np.array_equal(np.concatenate([w] * count), codes):
            return layer.name
    return None


def _assert_narrowest_weights(graph: Graph, int8: onnx.ModelProto) -> None:
    """Each QLinearConv's weights in the narrowest of INT2, INT4, INT8 that holds its codes,
    packed as onnxruntime reads them: they decode to the integer graph's weights."""
    inits = {t.name: t for t in int8.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in int8.graph.node if n.op_type == "Cast"}
    kinds = Counter()
    for node in (n for n in int8.graph.node if n.op_type == "QLinearConv"):
        stored = inits[casts.get(node.input[3], node.input[3])]
        codes = numpy_helper.to_array(stored).astype(np.int64)
        low, high = codes.min(), codes.max()
        want = (
            TensorProto.INT2
            if -2 <= low and high <= 1
            else TensorProto.INT4
            if -8 <= low and high <= 7
            else TensorProto.INT8
        )
        assert stored.data_type == want
        kinds[want] += 1
        if stored.data_type != TensorProto.INT8:
            bits = 2 if want == TensorProto.INT2 else 4
            assert len(stored.raw_data) == -(-codes.size * bits // 8)
        assert codes.shape[1:] == (1, 1, 1) or _layer_of(node, int8, graph) is not None
    assert kinds[TensorProto.INT2] and kinds[TensorProto.INT4] and kinds[TensorProto.INT8]


def _codes_graph(
    thresholds: np.ndarray, sign: np.ndarray, levels: int, hw: int, gathered: bool = False
) -> Graph:
    """The image's codes (`gathered`: their channels gathered, codes that are not the model's
    input), a threshold node on them, a pool and a classifier."""
    channels = len(sign)
    graph = Graph("codes", [channels, hw, hw])
    zero = np.zeros(channels, np.int16)
    graph.add("input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero})
    codes = "input"
    if gathered:
        index = np.arange(channels)
        graph.add("gather_channels", "codes", ["input"], range=[0, 255], arrays={"index": index})
        codes = "codes"
    graph.add(
        "threshold",
        "levels",
        [codes],
        out_bias=0,
        range=[0, levels],
        scale=0.5,
        arrays={"thresholds": thresholds.astype(np.int32), "sign": sign.astype(np.int8)},
    )
    return pooled_classifier(graph, "levels", 0, levels, hw, channels)


@pytest.mark.parametrize("gathered", [True, False])
def test_a_batch_norm_and_quantizer_on_codes_is_a_depthwise_qlinearconv_to_the_bit(
    gathered, tmp_path
):
    """Levels rne(A x + C) clamped to 0..15 of uint8 codes x, as a batch norm between a residual
    stream and a quantizer gives them: negative scales, halves (A x + C on k + 1/2 for some x),
    saturation at both ends, one level only; onnxruntime's 1x1 depthwise QLinearConv gives the
    levels on every one of the 256 codes of every channel. On the image's own codes (the
    model's channels-first input, an image normalization) elementwise ops give them, no conv."""
    a = np.array([0.5, 0.0625, -0.2, 0.137, 0.75, -0.031, 1e-6, 0.0995, 3.0, -1.0])
    c = np.array([0.0, 0.5, 15.2, -3.3, -40.0, 7.8, 3.0, 0.49, -100.0, 120.5])
    sign = np.where(a < 0, -1, 1)
    x = np.arange(256)
    want = np.clip(np.floor(a[:, None] * x + c[:, None] + 0.5), 0, 15).astype(np.int64)
    u = sign[:, None] * x  # thresholds: the first u = sign * x at each level 1..15
    thresholds = np.array(
        [[u[k][want[k] >= j].min(initial=2**20) for j in range(1, 16)] for k in range(len(a))]
    )
    save_onnx(_codes_graph(thresholds, sign, 15, 16, gathered), tmp_path / "m.onnx", "int8")
    model = onnx.load(str(tmp_path / "m.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == int(gathered) and not _tables(model)
    if not gathered:  # the image's codes times each channel's A: one per-axis DequantizeLinear
        (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert dq.input[0] == "input" and helper.get_attribute_value(dq.attribute[0]) == 1
    model.graph.output.append(helper.make_tensor_value_info("levels", TensorProto.UINT8, None))
    sess = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    images = np.tile(x.astype(np.float32) / 255, (1, len(a), 1)).reshape(1, len(a), 16, 16)
    got = sess.run(["levels"], {"image": images})[0]
    assert np.array_equal(got.reshape(len(a), 256).astype(np.int64), want)


def test_a_threshold_that_no_requantization_fits_is_an_exact_lookup_table(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.sort(rng.choice(np.arange(1, 255), (3, 6), replace=True), 1)  # uneven levels
    sign = np.array([1, -1, 1], np.int8)
    thresholds = np.where(sign[:, None] > 0, steps, -steps[:, ::-1])
    graph = _codes_graph(thresholds, sign, 6, 4)
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    assert len(_tables(onnx.load(str(tmp_path / "m.onnx")))) == 1
    codes = torch.randint(0, 256, (32, 3, 4, 4), dtype=torch.uint8)
    got = qdq_runtime(tmp_path / "m.onnx")(codes.float() / 255)
    assert torch.equal(got, _scaled_logits(graph, codes))


def test_onnxruntime_s_fused_residual_requantization_rounds_ties_half_to_even():
    """onnxruntime fuses the form's DequantizeLinear, Add, QuantizeLinear into its QLinearAdd;
    on this CPU that keeps QuantizeLinear's rounding, which the form's check relies on, where
    the output zero point is even (the kernel adds it before rounding: an odd one rounds ties
    to odd, which the writer avoids, test below)."""

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


def _conv_graph(weight: np.ndarray, multiplier: float, hw: int = 8) -> Graph:
    """The image's codes, a 1x1 conv, its requantization rne(acc * multiplier) onto 8-bit
    signed levels (as thresholds), a pool and a classifier."""
    channels = len(weight)
    graph = Graph("conv", [3, hw, hw])
    zero = np.zeros(3, np.int16)
    graph.add("input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero})
    bound = 255 * int(np.abs(weight).sum((1, 2, 3)).max())
    graph.add(
        "conv",
        "conv",
        ["input"],
        stride=[1, 1],
        padding=[0, 0],
        dilation=[1, 1],
        groups=1,
        acc_bits=16,
        range=[-bound, bound],
        scale=[multiplier / 255] * channels,
        arrays={"weight": weight.astype(np.int8), "bias": np.zeros(channels, np.int64)},
    )
    acc = np.arange(-bound - 1, bound + 1)
    level = np.clip(np.rint(acc * np.float32(multiplier)), -127, 127)
    # level j (from -126 up) from the first accumulator that reaches it
    first = [acc[level >= j].min(initial=bound + 1) for j in range(-126, 128)]
    graph.add(
        "threshold",
        "levels",
        ["conv"],
        out_bias=-127,
        range=[-127, 127],
        scale=1 / 255,
        arrays={
            "thresholds": np.tile(np.array(first, np.int32), (channels, 1)),
            "sign": np.ones(channels, np.int8),
        },
    )
    return pooled_classifier(graph, "levels", -127, 127, hw, channels)


@pytest.mark.parametrize("scale", [1, 3])
def test_a_conv_s_levels_are_clamped_only_where_its_inputs_can_leave_them(scale, tmp_path):
    """Weights in -1..1 on codes 0..255 keep rne(acc / 8) within -96..96, inside the 8-bit
    levels: no Clip after the QLinearConv; three times as wide, they can leave them: a Clip.
    The logits are the integer runtime's in both."""
    weight = np.random.default_rng(0).integers(-1, 2, (4, 3, 1, 1)) * scale
    graph = _conv_graph(weight, 1 / 8)
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    assert ops["QLinearConv"] == 1 and ops["Clip"] == (scale > 1)
    assert ops["MatMul"] == 1  # signed pooled sums: the classifier in float64
    codes, images = image_batch(8, n=4)
    got = qdq_runtime(tmp_path / "m.onnx")(images)
    assert torch.equal(got, _scaled_logits(graph, codes))


def _thresholds(level, lo: int, hi: int, channels: int) -> np.ndarray:
    """The thresholds of levels `level(x)` (rising) on the inputs [lo, hi]: level j's first x."""
    x = np.arange(lo, hi + 1)
    levels = level(x)
    low = int(levels.min())
    first = [x[levels >= j].min(initial=hi + 1) for j in range(low + 1, int(levels.max()) + 1)]
    return np.tile(np.array(first, np.int32), (channels, 1)), low


def _residual_graph(top: int, hw: int = 8) -> Graph:
    """The image's codes onto two signed streams a = c - 127 and b = c - 128 (levels -127 to
    `top`), their sum (always odd: every value a tie) requantized by a ratio of 1/2 onto
    levels -127 to `top`, ties half to even, then a pool and a classifier."""
    graph = Graph("residual", [3, hw, hw])
    zero = np.zeros(3, np.int16)
    graph.add("input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero})
    for name, shift in (("a", 127), ("b", 128)):
        thresholds, low = _thresholds(lambda c, s=shift: np.clip(c - s, -127, top), 0, 255, 3)
        graph.add(
            "threshold",
            name,
            ["input"],
            out_bias=low,
            range=[-127, top],
            scale=1 / 255,
            arrays={"thresholds": thresholds, "sign": np.ones(3, np.int8)},
        )
    graph.add("add", "add", ["a", "b"], range=[-254, 2 * top], scale=None)
    half = lambda x: np.clip(np.rint(x / 2), -127, top)  # noqa: E731
    thresholds, low = _thresholds(half, -254, 2 * top, 3)
    graph.add(
        "threshold",
        "sum",
        ["add"],
        out_bias=low,
        range=[-127, top],
        scale=2 / 255,
        arrays={"thresholds": thresholds, "sign": np.ones(3, np.int8)},
    )
    return pooled_classifier(graph, "sum", -127, top, hw, 3)


@pytest.mark.parametrize("top", [127, 128])
def test_a_residual_sum_s_ties_survive_onnxruntime_s_fused_qlinearadd(top, tmp_path):
    """onnxruntime fuses DequantizeLinear, DequantizeLinear, Add, QuantizeLinear into QLinearAdd,
    which adds the output zero point before rounding: levels from -127 stored from 0 (zero
    point 127) rounded every tie to odd (tv_resnet18 of the post-training family). Stored from
    1 (zero point 128) instead; where 256 levels leave no room for that, no fused group."""
    graph = _residual_graph(top)
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    codes, images = image_batch(8, n=4)
    got = qdq_runtime(tmp_path / "m.onnx")(images)
    assert torch.equal(got, _scaled_logits(graph, codes))
    model = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    requant = {n.op_type: n for n in model.graph.node if n.output[0].startswith("sum/")}
    assert ("DequantizeLinear" in requant) == (top == 127)  # the group onnxruntime fuses
    assert top > 127 or inits[requant["QuantizeLinear"].input[2]] == 128
