"""model_int8.onnx where a conv's threshold is no QLinearConv requantization: the float fallback
(bias-corrected weights beyond int8, an all-zero conv, an int64 state dict) writes each
initializer once, and thresholds no requantization fits (a batch norm between the conv and its
quantizer: the post-training family) are counted on ConvInteger's exact int32 accumulator, so
that ptq.py at W8A8 writes the file: with the qdq form's affine or corrected map on the
accumulator in float32 where it and the thresholds are within 2^24, else a binary search in
int32. Each file gives the integer runtime's logits to the bit, and each way of counting gives
every accumulator's level."""

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import make_config
from onnx import TensorProto, helper
from test_family_export import _in_family
from test_int8_form import _scaled_logits, pooled_classifier
from test_traced_export import calibrated, image_batch

from edmips.export import ExportError, IntegerRuntime, export, load_bundle
from edmips.export.ir import Graph, Node
from edmips.export.onnx import save_onnx
from edmips.export.onnx.int8 import Int8Writer
from edmips.export.onnx.qdq import FLOAT32_INTEGERS, qdq_runtime, threshold_form
from edmips.export.onnx.requant import accumulator_range, levels
from edmips.models import create_model
from edmips.programs.ptq import ptq
from edmips.quant.maxabs import MaxAbsWeight

SIZE = 32
QUICK = ["data.num_test=64", "calibration.images=8"]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _assert_int8_file_is_the_runtime(out: Path) -> None:
    """model_int8.onnx was written (save_onnx ran onnx.checker on it) and gives the integer
    runtime's logits on random images."""
    onnx.checker.check_model(str(out / "model_int8.onnx"))
    graph = load_bundle(out / "integer")
    codes, images = image_batch(SIZE, n=16)
    got = qdq_runtime(out / "model_int8.onnx")(images)
    assert torch.equal(got, _scaled_logits(graph, codes))


def _zero_conv(model):
    dict(model.named_modules())["stages.0.0.conv1"].weight.data.zero_()
    return model


def _int64_state_dict(model):
    model.load_state_dict({k: v.long() for k, v in model.state_dict().items()})
    return model


CASES = {"bias_corrected": lambda model: model, "zero_conv": _zero_conv}


@pytest.mark.parametrize("case", CASES)
def test_the_float_fallback_writes_each_initializer_once(case, tmp_path):
    """Weights corrected on a grid 2^6 finer (as ptq.py's bias correction corrects a family
    that is not an int8 form) are beyond int8 (an all-zero conv's too): those convs take the
    float fallback, whose clamp and the codes' offset were both written as {out}/lo."""
    model = calibrated(CASES[case](_in_family("resnet_tiny", "int8sim")), SIZE)
    for layer in model.modules():
        if isinstance(getattr(layer, "weight_quant", None), MaxAbsWeight):
            layer.weight_quant.correct_bias(layer.weight, "mean", 6)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert "model_int8.onnx" in [p.name for p in paths]
    assert "Conv" in _ops(tmp_path / "model_int8.onnx")  # the float fallback
    graph = load_bundle(tmp_path / "integer")
    assert max(np.abs(n.arrays["weight"]).max() for n in graph.nodes if n.op == "conv") > 127
    _assert_int8_file_is_the_runtime(tmp_path)


def test_an_int64_state_dict_exports_on_int8_kernels(tmp_path):
    """Integer-valued weights (an int64 state dict, all zero here but the downsample's) and
    biases: every conv a QLinearConv, exact."""
    model = calibrated(_int64_state_dict(_in_family("resnet_tiny", "int8sim")), SIZE)
    export(model, (3, SIZE, SIZE), tmp_path)
    assert not _ops(tmp_path / "model_int8.onnx") & {"Conv", "ConvInteger"}
    _assert_int8_file_is_the_runtime(tmp_path)


def test_a_name_written_twice_is_refused_where_it_is_written():
    writer = Int8Writer(Graph("g", [3, 4, 4]))
    writer.const("layer/lo", np.float32(0))
    with pytest.raises(ValueError, match="^initializer 'layer/lo' written twice by Int8Writer$"):
        writer.const("layer/lo", np.float32(0))


def _wide_conv_graph(seed: int, weight_max: int = 300, even: bool = False) -> Graph:
    """The image's codes, a 3x3 conv with weights of 9 bits (two base-256 digits; `weight_max`
    sets them) and a 26-bit accumulator (the bound a W8A8 layer of 64 channels has), then a
    threshold no requantization fits (uneven steps, or `even` ones of no power-of-two ratio;
    channels falling with the accumulator), a pool and a classifier."""
    rng = np.random.default_rng(seed)
    channels, size = 4, 6
    graph = Graph("wide", [3, size, size])
    zero = np.zeros(3, np.int16)
    graph.add("input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero})
    weight = rng.integers(-weight_max, weight_max + 1, (channels, 3, 3, 3)).astype(np.int16)
    bias = rng.integers(-1000, 1000, channels).astype(np.int64)
    graph.add(
        "conv",
        "conv",
        ["input"],
        stride=[1, 1],
        padding=[1, 1],
        groups=1,
        acc_bits=26,
        range=[-(2**25), 2**25 - 1],
        scale=1e-3,
        arrays={"weight": weight, "bias": bias},
    )
    sign = np.array([1, -1, 1, -1], np.int8)
    steps = np.sort(rng.integers(-200_000, 200_000, (channels, 15)), 1)
    if even:  # a batch norm's steps: spacing 412_345.6, offsets within one step
        steps = np.ceil(rng.uniform(-3e6, -2.6e6, (channels, 1)) + 412_345.6 * np.arange(15))
    thresholds = np.where(sign[:, None] > 0, steps, -steps[:, ::-1])
    graph.add(
        "threshold",
        "levels",
        ["conv"],
        out_bias=-7,
        range=[-7, 8],
        scale=0.5,
        arrays={"thresholds": thresholds.astype(np.int32), "sign": sign},
    )
    return pooled_classifier(graph, "levels", -7, 8, size, channels)


def test_thresholds_no_requantization_fits_are_counted_on_convinteger_s_accumulator(tmp_path):
    graph = _wide_conv_graph(0)
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    ops = _ops(tmp_path / "m.onnx")
    assert "ConvInteger" in ops and not ops & {"Conv", "QLinearConv"}
    codes = torch.randint(0, 256, (32, 3, 6, 6), dtype=torch.uint8)
    got = qdq_runtime(tmp_path / "m.onnx")(codes.float() / 255)
    want = _scaled_logits(graph, codes)
    assert want.std() > 0 and torch.equal(got, want)


def _ops_of(model: onnx.ModelProto):
    return [n.op_type for n in model.graph.node]


def test_an_accumulator_beyond_float32_keeps_the_int32_search(tmp_path):
    """Evenly spaced thresholds, which a map fits on accumulators within 2^24, on a conv whose
    accumulators reach past 2^24 (weights to 8000: 14 bits, 26-bit accumulator): the binary
    search in int32, exact."""
    graph = _wide_conv_graph(0, weight_max=8000, even=True)
    conv, node = graph.node("conv"), graph.node("levels")
    acc_lo, acc_hi = accumulator_range(conv, (0, 255))
    assert FLOAT32_INTEGERS < max(-acc_lo, acc_hi) < 2**25 - 1  # within the conv's range
    assert threshold_form(node, (-FLOAT32_INTEGERS, FLOAT32_INTEGERS))[0] != "binary search"
    save_onnx(graph, tmp_path / "m.onnx", "int8")
    ops = _ops_of(onnx.load(str(tmp_path / "m.onnx")))
    assert ops.count("ConvInteger") == 2 and "Floor" not in ops
    assert ops.count("Gather") == ops.count("GreaterOrEqual") == 4  # 15 thresholds: 4 halvings
    codes = torch.randint(0, 256, (64, 3, 6, 6), dtype=torch.uint8)
    got = qdq_runtime(tmp_path / "m.onnx")(codes.float() / 255)
    want = _scaled_logits(graph, codes)
    assert want.std() > 0 and torch.equal(got, want)


def test_the_accumulator_range_bounds_every_output_and_is_reached():
    """The tight range of a conv's accumulators: no input in the range (padding included)
    takes one outside it, and the inputs at its extremes reach it (without padding)."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-300, 301, (5, 3, 3, 3))
    bias = rng.integers(-1000, 1000, 5)
    conv = Node("conv", "conv", ["x"], {"range": [-(2**25), 2**25 - 1]}, {"weight": weight})
    conv.arrays["bias"] = bias
    lo, hi = accumulator_range(conv, (-7, 20))

    def accumulators(x, padding):
        w, b = torch.from_numpy(weight).double(), torch.from_numpy(bias).double()
        return torch.nn.functional.conv2d(x.double(), w, b, padding=padding)

    x = torch.randint(-7, 21, (64, 3, 5, 5))
    acc = accumulators(x, 1)
    assert lo <= acc.min() and acc.max() <= hi
    positive = torch.from_numpy(weight > 0)  # per output channel, the inputs at its extremes
    highest = torch.where(positive, 20, -7).to(torch.int64)
    lowest = torch.where(positive, -7, 20).to(torch.int64)
    assert accumulators(highest, 0).max() == hi and accumulators(lowest, 0).min() == lo
    # the conv's own range bounds it too
    conv.attrs["range"] = [-100, 99]
    assert accumulator_range(conv, (-7, 20)) == (-100, 99)


def _threshold_node(kind: str, channels: int = 8, count: int = 15) -> Node:
    """A threshold node of `count` thresholds per channel, half the channels falling with the
    accumulator: `affine` a batch norm's (evenly spaced), `corrected` the same with two
    thresholds moved by one, `irregular` random."""
    rng = np.random.default_rng(0)
    k = np.arange(1, count + 1)
    step = rng.uniform(100, 3000, (channels, 1))
    t = np.ceil(rng.uniform(-20_000, 20_000, (channels, 1)) + step * (k - 0.5)).astype(np.int64)
    if kind == "corrected":
        t[:, 3] += 1
        t[:, 9] -= 1
    elif kind == "irregular":
        t = np.sort(rng.integers(-100_000, 100_000, (channels, count)), 1)
    sign = np.where(np.arange(channels) % 2 == 0, 1, -1).astype(np.int8)
    out_bias = -5
    return Node(
        "threshold",
        "levels",
        ["conv"],
        {"out_bias": out_bias, "range": [out_bias, out_bias + count]},
        {"thresholds": t.astype(np.int32), "sign": sign},
    )


def _counted(node: Node, acc_range) -> onnx.ModelProto:
    """A model of the nodes `_counted_levels` writes: int32 accumulators in, uint8 codes out."""
    writer = Int8Writer(Graph("g", [len(node.arrays["sign"]), 1, 1]))
    writer._counted_levels(node, "acc", "codes", acc_range)
    assert writer.offset["codes"] == node.attrs["range"][0]
    acc = helper.make_tensor_value_info("acc", TensorProto.INT32, [1, None, None, 1])
    codes = helper.make_tensor_value_info("codes", TensorProto.UINT8, [1, None, None, 1])
    graph = helper.make_graph(writer.nodes, "g", [acc], [codes], writer.inits)
    model = helper.make_model(graph, opset_imports=writer.opsets())
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_counted(model: onnx.ModelProto, acc: np.ndarray) -> np.ndarray:
    """The stored codes of accumulators acc [channels, n]."""
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {"acc": acc.astype(np.int32)[None, :, :, None]}
    return session.run(None, feed)[0][0, :, :, 0].astype(np.int64)


@pytest.mark.parametrize(
    "kind,form,gathers",
    [("affine", "Floor", 0), ("corrected", "Floor", 1), ("irregular", "GreaterOrEqual", 4)],
)
def test_counted_levels_are_exact_on_every_accumulator(kind, form, gathers):
    """Every accumulator in a range of 2^19 values: the affine map (no Gather), the corrected
    one (one Gather) and the int32 binary search (a Gather per halving) each give every
    level, stored as level - lo."""
    node = _threshold_node(kind)
    acc_range = (-(2**18), 2**18 - 1)
    model = _counted(node, acc_range)
    ops = _ops_of(model)
    assert form in ops and ops.count("Gather") == gathers
    channels = len(node.arrays["sign"])
    acc = np.broadcast_to(np.arange(acc_range[0], acc_range[1] + 1), (channels, 2**19))
    want = levels(node, acc) - node.attrs["range"][0]
    assert np.array_equal(_run_counted(model, acc), want)


@pytest.mark.parametrize("acc_range", [(-(2**25), 2**25 - 1), (-(2**24) - 1, 2**24)])
def test_counted_levels_keep_the_int32_search_beyond_float32(acc_range):
    """The affine thresholds on accumulators past 2^24, which float32 does not hold: the
    binary search in int32, exact at every threshold, the value below it, the range's ends
    and random accumulators."""
    node = _threshold_node("affine")
    model = _counted(node, acc_range)
    ops = _ops_of(model)
    assert "Floor" not in ops and ops.count("GreaterOrEqual") == 4
    lo, hi = acc_range
    t = node.arrays["thresholds"].astype(np.int64)
    ends = np.array([[lo, hi]]).repeat(len(t), 0)
    random = np.random.default_rng(0).integers(lo, hi + 1, (len(t), 4096))
    acc = np.clip(np.concatenate([t, -t, t - 1, 1 - t, ends, random], 1), lo, hi)
    want = levels(node, acc) - node.attrs["range"][0]
    assert np.array_equal(_run_counted(model, acc), want)


def test_the_default_family_counts_with_the_qdq_form_s_maps(tmp_path):
    """edmips's own family (a batch norm between each conv and its quantizer): its ResNet-20's
    counted thresholds take the affine or corrected map on the float32 accumulator, with at
    most one Gather each and no binary search; one ConvInteger per conv whose weights fit
    int8; the logits to the bit."""
    model = calibrated(_in_family("resnet20", "edmips"), SIZE)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert "model_int8.onnx" in [p.name for p in paths]
    _assert_int8_file_is_the_runtime(tmp_path)
    int8 = onnx.load(str(tmp_path / "model_int8.onnx"))
    ops = _ops_of(int8)
    assert "GreaterOrEqual" not in ops and "Floor" in ops
    gathers = [n for n in int8.graph.node if n.op_type == "Gather"]
    assert all(n.output[0].endswith("/level/t_e") for n in gathers)  # corrected maps
    assert len(gathers) <= 2
    graph = load_bundle(tmp_path / "integer")
    digits = {}
    for n in int8.graph.node:
        if n.op_type == "ConvInteger":
            layer, _, digit = n.output[0].rpartition("/int32/digit")
            digits[layer] = max(digits.get(layer, 0), int(digit) + 1)
    assert digits
    for layer, count in digits.items():
        weight = graph.node(layer).arrays["weight"]
        assert count == (1 if -128 <= weight.min() and weight.max() <= 127 else 2)


def test_an_accumulator_beyond_int32_is_refused_in_one_line(tmp_path):
    graph = _wide_conv_graph(0)
    conv = graph.node("conv")
    conv.arrays["weight"] = conv.arrays["weight"].astype(np.int64)
    conv.arrays["weight"][0, 0, 0, 0] = 2**24  # |acc| reaches 2^32
    conv.attrs.update(acc_bits=34, range=[-(2**33), 2**33 - 1])
    with pytest.raises(
        ExportError,
        match=r"^layer conv: a 3\d-bit accumulator does not fit the int32 of ConvInteger$",
    ):
        save_onnx(graph, tmp_path / "m.onnx", "int8")


@pytest.fixture
def resnet8_weights(tmp_path):
    """A resnet8's float state dict after a few SGD steps: its last stage's 3x3 convs take a
    26-bit accumulator at W8A8."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def _ptq(tmp_path, weights, *overrides) -> tuple[dict, Path]:
    cfg = make_config(
        "ptq",
        tmp_path / "ptq",
        [f"model.weights={weights}", "arch=uniform", *QUICK, *overrides],
        ["model=resnet8"],
    )
    result = ptq(cfg)
    out = Path(cfg.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == result
    return result, out


def test_ptq_at_w8a8_writes_model_int8_with_agreement_one(tmp_path, resnet8_weights, caplog):
    with caplog.at_level(logging.WARNING):
        result, out = _ptq(tmp_path, resnet8_weights, "wbits=8", "abits=8")
    assert result["int8_agreement"] == 1.0 and result["prediction_agreement"] == 1.0
    _assert_int8_file_is_the_runtime(out)
    # float32 Conv does not hold the 26-bit accumulator: a form that refuses it says so in
    # one line that names the layer and the width.
    if result["qdq_agreement"] is None:
        refusal = [r.getMessage() for r in caplog.records if "no model_qdq.onnx" in r.getMessage()]
        assert len(refusal) == 1 and "\n" not in refusal[0]
        assert refusal[0].startswith("no model_qdq.onnx: layer stages.2.0.conv2: a 26-bit")


@pytest.mark.parametrize("family", ["quant=int8sim", "deploy=int8"])
def test_ptq_in_an_int8_family_with_its_defaults_runs_on_qlinearconv(
    tmp_path, resnet8_weights, family
):
    """int8sim, and ptq's own family in its int8 forms (deploy=int8): every conv of
    model_int8.onnx a QLinearConv, the stem's and the classifier's too."""
    result, out = _ptq(tmp_path, resnet8_weights, family)
    assert result["bias_correction"] == "mean"
    assert result["int8_agreement"] == 1.0 and result["qdq_agreement"] == 1.0
    _assert_int8_file_is_the_runtime(out)
    assert not _ops(out / "model_int8.onnx") & {"Conv", "ConvInteger"}


def test_int8sim_corrects_the_weights_it_exports(tmp_path, resnet8_weights):
    """int8sim's lowering absorbs each batch norm into the conv before it (weights W * s): mean
    bias correction must correct those weights, not W. With batch norms whose scales s are far
    from 1, the corrected network at W8A8 computes what the uncorrected one does, to within a
    few percent (correcting W, then scaling it by s, was off by s)."""
    state = torch.load(resnet8_weights)
    g = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = torch.rand(state[key].shape, generator=g) * 4 + 0.05
    weights = tmp_path / "scaled.pt"
    torch.save(state, weights)
    logits = {}
    for correction in ("none", "mean"):
        args = ("quant=int8sim", "wbits=8", "abits=8", f"ptq.bias_correction={correction}")
        _, out = _ptq(tmp_path / correction, weights, *args)
        graph = load_bundle(out / "integer")
        unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
        logits[correction] = IntegerRuntime(graph)(image_batch(32)[0]) * unit
    assert (logits["mean"] - logits["none"]).norm() < 0.1 * logits["none"].norm()


def test_a_family_without_qlinearconv_s_arithmetic_counts_on_convinteger(tmp_path):
    """qatsim's thresholds (a batch norm between each conv and its quantizer) fit no
    requantization: model_int8.onnx counts them on ConvInteger, to the bit."""
    model = calibrated(_in_family("resnet_tiny", "qatsim"), SIZE)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert [p.name for p in paths] == ["integer", "model.onnx", "model_int8.onnx", "model_qdq.onnx"]
    assert "ConvInteger" in _ops(tmp_path / "model_int8.onnx")
    _assert_int8_file_is_the_runtime(tmp_path)
