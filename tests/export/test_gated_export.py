"""Functions that rise and fall (SiLU, Hardswish, GELU) as tables of codes, and products of two
quantized tensors (a squeeze-excitation's gate times its features): each exact on every input
code, and the networks built of them (EfficientNet, MobileNetV3, RegNetY) exported exactly."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edmips.export import ExportError, IntegerRuntime, export, load_bundle
from edmips.export.lower import lower
from edmips.export.onnx.qdq import qdq_runtime
from edmips.export.onnx.qonnx import run_qonnx
from edmips.export.runtime import _table
from edmips.export.verify import integer_pair
from edmips.models import create_model
from edmips.nn import default_searched, quantize, to_fixed
from edmips.nn.convert import to_family
from edmips.nn.fx_quantize import SIGNED_PREFIX
from edmips.quant import ActivationQuantizer, Family


def calibrated(model: nn.Module, size: int) -> nn.Module:
    """Quantizers' ranges and batch norms' statistics from a few training batches (the batch
    norms' running statistics those of the last: MobileNetV3's momentum of 0.01 would leave
    them at their start, and the network's output constant)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size))
    return model.eval()


def quantizer_before(model, graph, node_name: str) -> ActivationQuantizer:
    """The signed quantizer whose threshold or table node is `node_name`."""
    return model.get_submodule(node_name.replace(f"{SIGNED_PREFIX}_", f"{SIGNED_PREFIX}."))


class Activated(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        self.activation, self.fc = activation, nn.Linear(6, 10, bias=False)

    def forward(self, x):
        return self.fc(self.activation(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize(
    "activation", [nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.Mish(), F.silu, F.hardswish]
)
def test_a_table_gives_the_next_quantizers_level_of_every_code(activation):
    torch.manual_seed(0)
    model = calibrated(quantize(Activated(activation), wbits=4, abits=4), 8)
    graph = lower(model, (3, 8, 8))
    (table,) = [n for n in graph.nodes if n.op == "table"]
    (source,) = table.inputs
    q_in, q_out = quantizer_before(model, graph, source), quantizer_before(model, graph, table.name)
    lo, hi = graph.node(source).attrs["range"]
    assert (lo, hi) == (q_in.lowest, q_in.lowest + q_in.num_levels - 1)  # all L codes
    codes = torch.arange(lo, hi + 1)
    # the reference: each code on its quantizer's grid, the function, the next quantizer
    function = activation.double() if isinstance(activation, nn.Module) else activation
    value = function((codes.double() * q_in.unit().double()).view(-1, 1, 1, 1).expand(-1, 6, 1, 1))
    expected = q_out.codes(value).view(-1, 6).t()
    # the runtime's table op on every code, in every channel
    rows = torch.from_numpy(table.arrays["table"].astype("int64"))
    got = _table(codes.view(1, 1, -1, 1).expand(1, 6, -1, 1), rows, table.attrs["in_lo"])
    assert torch.equal(got[0, :, :, 0], expected.long())


class Gate(nn.Module):
    """A squeeze-excitation: the features times a sigmoid gate computed from their mean."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.out = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 10, bias=False)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(self.out(gate * x).mean((2, 3)))


def test_a_product_requantizes_every_pair_of_codes_as_the_reference():
    torch.manual_seed(0)
    model = calibrated(quantize(Gate(), wbits=4, abits=4), 8)
    graph = lower(model, (3, 8, 8))
    (mul,) = [n for n in graph.nodes if n.op == "mul"]
    (after,) = [n for n in graph.nodes if mul.name in n.inputs]
    assert after.op == "threshold"
    qa, qb, q_out = (quantizer_before(model, graph, n) for n in (*mul.inputs, after.name))
    # every pair of codes (the whole range of both operands), on one channel's lane each
    a = torch.arange(qa.lowest, qa.lowest + qa.num_levels)
    b = torch.arange(qb.lowest, qb.lowest + qb.num_levels)
    a, b = (t.flatten() for t in torch.meshgrid(a, b, indexing="ij"))
    value = (a.double() * qa.unit().double()) * (b.double() * qb.unit().double())
    expected = q_out.codes(value.view(-1, 1, 1, 1).expand(-1, 4, 1, 1)).view(-1, 4).t()
    runtime = IntegerRuntime(graph)
    plan = runtime.plans[graph.nodes.index(after)]
    product = (a * b).view(1, 1, -1, 1).expand(1, 4, -1, 1).to(torch.int32)
    got = plan(product)[0, :, :, 0]
    assert torch.equal(got.long(), expected.long())
    slow = IntegerRuntime(graph, float_products=False)
    assert slow.plans[graph.nodes.index(after)] is None  # the search on the thresholds, too
    assert torch.equal(IntegerRuntime(graph)(_codes(8)), slow(_codes(8)))


def _codes(size: int, n: int = 8, seed: int = 1):
    torch.manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def test_a_function_that_rises_and_falls_needs_codes():
    """Read straight from an accumulator (no quantizer in front), SiLU is refused by name."""
    torch.manual_seed(0)
    model = calibrated(quantize(Activated(nn.SiLU()), wbits=4, abits=4), 8)
    quantizers = [n for n in model.graph.nodes if n.name.startswith(SIGNED_PREFIX)]
    before = next(n for n in quantizers if n.users and next(iter(n.users)).name == "activation")
    before.replace_all_uses_with(before.args[0])
    model.graph.erase_node(before)
    model.recompile()
    with pytest.raises(ExportError, match=r"node activation: SiLU of a value no quantizer rounded"):
        lower(model, (3, 8, 8))


# EfficientNet (SiLU tables, sigmoid gates, as MobileNetV3's) and RegNetY (a gate and no table):
# searched, retrained and exported in tests/models/test_any_cnn_pipeline.py. MobileNetV3-Large
# has MobileNetV3-Small's operations.
@pytest.mark.parametrize("name,kw", [("tv_mobilenet_v3_small", {})])
def test_gated_networks_export_exactly_at_w4a4(name, kw, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kw)
    to_fixed(model, {n: (4, 4) for n in default_searched(model)})
    model = calibrated(model, 32)
    export(model, (3, 32, 32), tmp_path)
    ops = {n.op for n in load_bundle(tmp_path / "integer").nodes}
    assert {"mul", "table"} <= ops
    torch.manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).float() / 255
    reference, integer = integer_pair(model, tmp_path / "integer")
    expected, got = reference(images), integer(images)
    assert expected.std() > 1e-3  # a real signal
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()
    assert torch.equal(qdq_runtime(tmp_path / "model_qdq.onnx")(images), got)


class Classified(nn.Module):
    """A classifier with a bias reading a table's output (MobileNetV3's, EfficientNet's head)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(F.hardswish(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("family", [None, Family("lsq", "maxabs", "lsq_signed")])
def test_a_classifier_reading_a_shared_signed_input_keeps_its_bias_on_the_grid(family, tmp_path):
    """Its logits are its accumulator, so a trained bias must be a whole number of units of the
    shared quantizer its input arrives through (after a change of family, the new one's); the
    conv before it, reading the image through another, keeps its float bias."""
    torch.manual_seed(0)
    model = quantize(Classified(), wbits=4, abits=4)
    if family is not None:
        to_family(model, family)
    with torch.no_grad():
        model.fc.bias.copy_(torch.randn(10))  # trained: no longer torchvision's zeros
    model = calibrated(model, 8)
    assert any(q is model.fc.arrives_through for q in model.modules())
    # an inner layer keeps its float bias: the quantizer after it absorbs it, and a bias on
    # the grid would meet that quantizer's ties exactly (a gate's sigmoid(0) = 0.5)
    assert torch.equal(model.conv.quant_bias(), model.conv.bias)
    bias = model.fc.quant_bias(pool_size=36)
    units = bias / model.fc.bias_unit(pool_size=36)
    assert torch.equal(units, units.round()) and not torch.equal(bias, model.fc.bias)
    export(model, (3, 8, 8), tmp_path)
    assert "float_bias" not in load_bundle(tmp_path / "integer").node("fc").arrays
    reference, integer = integer_pair(model, tmp_path / "integer")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).float() / 255
    expected, got = reference(images), integer(images)
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_thresholds_on_sums_beyond_float32_compare_in_float64(tmp_path):
    """At 8 bits on a 64x64 map the squeeze-excitation's pooled sums times its weights need a
    31-bit accumulator: both ONNX files hold it in float64 and compare it with the thresholds
    there, and compute the integer runtime's logits."""
    torch.manual_seed(0)
    model = calibrated(quantize(Gate(), wbits=8, abits=8), 66)
    paths = [p.name for p in export(model, (3, 66, 66), tmp_path)]
    assert paths == ["integer", "model.onnx", "model_qdq.onnx"]  # int8: refused, one line
    graph = load_bundle(tmp_path / "integer")
    assert graph.node("fc1").attrs["acc_bits"] > 25
    codes = _codes(66, n=2)
    logits = IntegerRuntime(graph)(codes)
    qdq = onnx.load(str(tmp_path / "model_qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    _, integer = integer_pair(model, tmp_path / "integer")
    images = codes.float() / 255
    assert torch.equal(qdq_runtime(tmp_path / "model_qdq.onnx")(images), integer(images))
    assert np.array_equal(run_qonnx(tmp_path / "model.onnx", codes.numpy()), logits.numpy())
