"""The qdq form's threshold nodes: an affine map, a floor and a clip where the thresholds are
(nearly) evenly spaced, one exact correction where it is held within one level, the binary
search where neither holds; each equal to the reference levels on every input value."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_export import trained_like

from edmips.export import lower
from edmips.export.ir import Node
from edmips.export.onnx.qdq import QdqWriter, _binary_search, threshold_form, threshold_ops
from edmips.export.runtime import image_codes, run
from edmips.export.thresholds import apply_thresholds, compute_thresholds
from edmips.models import create_model
from edmips.nn import default_searched


def uniform_node(step, offset, bits, lo, hi, sign=(1,), out_bias=0) -> Node:
    """A threshold node on [lo, hi] from the uniform quantizer clip(floor((s v - o_c) / step_c))
    (s = sign_c), thresholds bisected as the exporter bisects them."""
    channels = len(offset)
    step = torch.tensor(np.broadcast_to(step, (channels,)), dtype=torch.float64)
    offset = torch.tensor(offset, dtype=torch.float64)
    sign = torch.tensor(np.broadcast_to(sign, (channels,)), dtype=torch.float64)
    top = 2**bits - 1

    def levels(v):
        return ((sign[:, None] * v - offset[:, None]) / step[:, None]).floor().clamp(0, top)

    thresholds, signs = compute_thresholds(levels, channels, 2**bits, lo, hi)
    arrays = {"thresholds": thresholds.numpy().astype(np.int64), "sign": signs.numpy()}
    return Node("threshold", "t", ["x"], {"out_bias": out_bias}, arrays)


def table_node(thresholds, sign=None, out_bias=0) -> Node:
    thresholds = np.asarray(thresholds, np.int64)
    sign = np.ones(len(thresholds), np.int8) if sign is None else np.asarray(sign, np.int8)
    return Node(
        "threshold", "t", ["x"], {"out_bias": out_bias}, {"thresholds": thresholds, "sign": sign}
    )


def run_ops(ops_of, node: Node, values: np.ndarray, rank: int) -> np.ndarray:
    """The nodes `ops_of(node, x, channel_shape, const)` in onnxruntime on x = values (every
    channel reads them all), as int64 levels [channels, n]."""
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    channels = len(node.arrays["sign"])
    channel_shape = (1, -1, 1, 1) if rank == 4 else (1, -1)
    ops = ops_of(node, "x", channel_shape, const)
    x = np.broadcast_to(values.astype(np.float32), (channels, len(values))).T.copy()
    x = x.reshape(len(values), channels, *([1, 1] if rank == 4 else []))
    shape = ["N", channels, *([1, 1] if rank == 4 else [])]
    graph = helper.make_graph(
        ops,
        "threshold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {"x": x})[0].reshape(len(values), channels).T
    assert (out == np.round(out)).all()
    return out.astype(np.int64)


def check(node: Node, lo: int, hi: int, values=None, rank=4) -> str:
    """The form the node takes; its levels equal the reference's and the binary search's on
    every value (default: every integer in [lo, hi])."""
    values = np.arange(lo, hi + 1) if values is None else values
    x = torch.from_numpy(np.broadcast_to(values, (len(node.arrays["sign"]), len(values))).copy())
    thresholds = torch.from_numpy(node.arrays["thresholds"].astype(np.int64))
    sign = torch.from_numpy(node.arrays["sign"].astype(np.int64))
    want = apply_thresholds(x, thresholds, sign, channel_dim=0).numpy() + node.attrs["out_bias"]
    form, _ = threshold_form(node, [lo, hi])

    def fast(node, x, channel_shape, const):
        return threshold_ops(node, x, [lo, hi], channel_shape, const)

    np.testing.assert_array_equal(run_ops(fast, node, values, rank), want)
    np.testing.assert_array_equal(run_ops(_binary_search, node, values, rank), want)
    return form


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("step", [3.0, 2.5, 1.0, 7 / 3, 0.4, 37.1])
def test_evenly_spaced_thresholds_are_one_affine_map(bits, step):
    lo, hi = -3000, 3000
    node = uniform_node(step, [-50.377, 0.1234, 13.8234, -200.1266], bits, lo, hi, out_bias=-3)
    assert check(node, lo, hi) == "affine"


def test_exact_ties_broken_both_ways_are_corrected():
    """Where k step + offset is an integer, the reference's float64 arithmetic can put the
    threshold there or one past it, one way here and the other there: a threshold off the
    line by one, which the correction takes off."""
    lo, hi = -3000, 3000
    node = uniform_node(7 / 3, [0.0, 5.0], 6, lo, hi)
    assert check(node, lo, hi) == "corrected"


def test_negative_signs_fold_into_the_slope():
    lo, hi = -700, 900
    node = uniform_node(2.5, [-40.2, 3.3, 0.0, -100.0], 4, lo, hi, sign=[1, -1, -1, 1])
    assert list(node.arrays["sign"]) == [1, -1, -1, 1]
    assert check(node, lo, hi) == "affine"
    assert check(node, lo, hi, rank=2) == "affine"


def test_unreached_and_always_reached_levels():
    lo, hi = -100, 100
    # channel 0 reaches only the low levels, channel 1 only the high ones, channel 2 none
    node = uniform_node([9.0, 9.0, 1.0], [30.0, -250.0, 500.0], 5, lo, hi, sign=[1, 1, -1])
    t = node.arrays["thresholds"]
    assert (t[0] == hi + 1).any() and (t[1] == lo).any() and (t[2] == hi + 1).all()
    assert check(node, lo, hi) == "affine"


def test_a_single_level():
    node = table_node(np.zeros((3, 0)), sign=[1, -1, 1], out_bias=4)
    assert check(node, -50, 50) == "affine"


@pytest.mark.parametrize(
    "steps,offsets,signs,form",
    [
        ([1e5 / 3, 1e5 / 7], [1234.5, -3e5 + 0.25], [-1, 1], "affine"),
        # float32 cannot tell T from T - 1 at a slope of 2^-21 levels per unit, nor at -2^23
        # where the product's rounding is 1/4 of a level: within one level, corrected
        ([2**21 + 0.3, 3.0], [-(2.0**23) + 0.7, -(2.0**23) + 0.7], [1, -1], "corrected"),
    ],
)
def test_ranges_near_2_to_the_24(steps, offsets, signs, form):
    """Every integer near each threshold (and its negation, for the other sign), the ends and
    200,000 others: 2^25 inputs are too many to run all."""
    lo, hi = -(2**24), 2**24 - 1
    node = uniform_node(steps, offsets, 4, lo, hi, signs)
    t = node.arrays["thresholds"].astype(np.int64).ravel()
    near = np.concatenate([t + d for d in range(-3, 3)] + [-t + d for d in range(-3, 3)])
    sample = np.random.default_rng(0).integers(lo, hi + 1, 200_000)
    values = np.unique(np.clip(np.concatenate([near, sample, [lo, hi]]), lo, hi))
    assert check(node, lo, hi, values) == form
    node.arrays["thresholds"][1, 4] += 1  # off the line
    assert check(node, lo, hi, values) == "corrected"


def test_a_threshold_moved_by_one_is_corrected_in_one_step():
    lo, hi = -200, 200
    node = uniform_node(10.0, [0.0, 5.0], 4, lo, hi)
    node.arrays["thresholds"][:, 3] += 1  # off the line: no affine map gives the levels
    node.arrays["thresholds"][1, 7] -= 1
    assert check(node, lo, hi) == "corrected"
    node.arrays["sign"][1] = -1
    assert check(node, lo, hi) == "corrected"
    assert check(node, lo, hi, rank=2) == "corrected"


def test_irregular_thresholds_keep_the_binary_search():
    lo, hi = -10, 300
    node = table_node([[1, 2, 4, 8, 16, 32, 64, 128, 256], [0, 1, 2, 3, 4, 100, 200, 250, 251]])
    assert check(node, lo, hi) == "binary search"
    assert threshold_form(node, None)[0] == "binary search"  # no range: nothing to check


def test_a_resnet20_at_w4a4_predicts_as_the_integer_runtime(tmp_path):
    size = 32
    bits = dict.fromkeys(default_searched(create_model("resnet20", num_classes=10)), (4, 4))
    model = trained_like("resnet20", size, seed=2, bits=bits)
    graph = lower(model, (3, size, size))
    qdq = QdqWriter(graph).model()
    onnx.checker.check_model(qdq)
    thresholds = [n for n in graph.nodes if n.op == "threshold"]
    ranges = {n.name: n.attrs.get("range") for n in graph.nodes}
    forms = Counter(threshold_form(n, ranges[n.inputs[0]])[0] for n in thresholds)
    ops = Counter(n.op_type for n in qdq.graph.node)
    assert forms["binary search"] == 0 and forms["affine"] >= len(thresholds) - 2, forms
    assert ops["Gather"] == forms["corrected"], ops
    images = torch.rand(16, 3, size, size)
    session = onnxruntime.InferenceSession(
        qdq.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"image": images.numpy()})[0]
    unit = torch.as_tensor(graph.nodes[-1].attrs["scale"], dtype=torch.float64)
    integer = (run(graph, image_codes(images)).double() * unit).numpy()
    np.testing.assert_array_equal(logits, integer)
    np.testing.assert_array_equal(logits.argmax(1), integer.argmax(1))
