"""Export of converted (traced) models: the integer bundle computes the fake-quantized network
(in float64) exactly, and so do its two ONNX forms (QONNX under qonnx, the standard-ops model
under plain onnxruntime); what cannot be lowered is named."""

from collections import Counter

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
from edmips.export.verify import integer_pair
from edmips.models import create_model
from edmips.nn import default_searched, quantize, to_fixed

BITS = [(2, 2), (3, 4), (4, 3), (1, 2)]  # (wbits, abits), cycled over the searched layers


def calibrated(model: nn.Module, size: int) -> nn.Module:
    """Signed quantizers' ranges and batch-norm statistics as a few training steps give them."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size))
    return model.eval()


def trained_like(name: str, size: int, seed: int = 0) -> nn.Module:
    """A converted torchvision network with mixed bit-widths, calibrated."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    to_fixed(model, {n: BITS[i % len(BITS)] for i, n in enumerate(default_searched(model))})
    return calibrated(model, size)


def image_batch(size: int, n: int = 8, seed: int = 1):
    """uint8 image codes and the float images k / 255 the network reads."""
    torch.manual_seed(seed)
    codes = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    return codes, codes.float() / 255


def check_exports(model: nn.Module, size: int, out) -> None:
    paths = export(model, (3, size, size), out)
    names = [p.name for p in paths if p.name != "model_int8.onnx"]  # where it fits (below)
    assert names == ["integer", "model.onnx", "model_qdq.onnx"]
    codes, images = image_batch(size)

    # The integer runtime: integers only, and times their units the float64 reference's logits.
    graph = load_bundle(out / "integer")
    logits = IntegerRuntime(graph)(codes)
    assert logits.dtype == torch.int64
    reference, integer = integer_pair(model, out / "integer")
    expected, got = reference(images), integer(images)
    assert expected.std() > 1e-3  # a real signal
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()
    assert torch.equal(got.argmax(1), expected.argmax(1))

    # QONNX (MultiThreshold): the same integers.
    qonnx_path = out / "model.onnx"
    onnx.checker.check_model(str(qonnx_path))
    nodes = onnx.load(str(qonnx_path)).graph.node
    assert sum(n.op_type == "MultiThreshold" for n in nodes) >= 3
    assert np.array_equal(run_qonnx(qonnx_path, codes.numpy()), logits.numpy())

    # Standard ops, no integer conv, for plain onnxruntime: the same logits. Where the int8
    # model runs its convs as requantizations, that model in QDQ notation; else the float-op
    # model (integer weights behind a Cast, the image the only QuantizeLinear).
    qdq = onnx.load(str(out / "model_qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    assert {o.domain for o in qdq.opset_import} == {""}
    ops = Counter(n.op_type for n in qdq.graph.node)
    assert ops["QLinearConv"] == ops["ConvInteger"] == 0
    int8 = out / "model_int8.onnx"
    int8_ops = Counter(n.op_type for n in onnx.load(str(int8)).graph.node) if int8.exists() else {}
    if int8_ops and not int8_ops["ConvInteger"]:
        assert ops["Conv"] == int8_ops["QLinearConv"] + int8_ops["Conv"]
        assert ops["DequantizeLinear"] >= 2 * int8_ops["QLinearConv"]  # inputs and weights
    else:
        assert ops["QuantizeLinear"] == 1  # the image
        int_weights = [t for t in qdq.graph.initializer if t.name.endswith("/w/codes")]
        assert int_weights and all(
            t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32) for t in int_weights
        )
    assert torch.equal(qdq_runtime(out / "model_qdq.onnx")(images), got)
    if (out / "model_int8.onnx").exists():  # written only where it reproduces every level
        assert torch.equal(qdq_runtime(out / "model_int8.onnx")(images), got)


@pytest.mark.parametrize(
    "name,size",
    [("tv_resnet18", 32), ("tv_mobilenet_v2", 32), ("tv_googlenet", 32), ("tv_alexnet", 64)],
)
def test_integer_qonnx_and_qdq_models_compute_the_fake_quantized_network(
    name, size, tmp_path, request
):
    if name == "tv_alexnet":
        request.getfixturevalue("narrow_alexnet")
    check_exports(trained_like(name, size), size, tmp_path)


class EveryOp(nn.Module):
    """One of each thing the lowering handles: a normalized image, a max pool after a batch
    norm that flips some channels, a residual add, a concatenation, an average pool in front
    of a conv, a ReLU6, a flattened (not pooled) map, a linear fed by a signed input."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.a, self.bn_a = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1, groups=4)
        self.c = nn.Conv2d(8, 4, 3, padding=2, dilation=2)
        self.after_pool = nn.Conv2d(8, 8, 1)
        self.fc1, self.fc2 = nn.Linear(8 * 5 * 5, 16), nn.Linear(16, 10)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, -1.0] * 4))  # falling channels

    def forward(self, x):
        x = self.pool(self.bn(self.stem((x - self.mean) * 4.0)))
        x = x + self.bn_a(self.a(x))
        x = torch.cat([F.relu6(self.b(x)), torch.relu(self.c(x))], 1)
        x = self.after_pool(F.avg_pool2d(x, 3, 1, 1))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def test_every_lowered_operation_is_exact(tmp_path):
    torch.manual_seed(0)
    model = quantize(EveryOp(), wbits=3, abits=3)
    assert model.after_pool.input_pool is not None  # quantized before pooling
    assert model.fc1.abits is None  # a signed input: its bias is a float step
    check_exports(calibrated(model, 8), 8, tmp_path)
    ops = {n.op for n in load_bundle(tmp_path / "integer").nodes}
    assert {"windowmax", "windowsum", "add", "concat", "flatten", "conv", "linear"} <= ops


@pytest.mark.slow
def test_inception_v3_exports_exactly(tmp_path):
    check_exports(trained_like("tv_inception_v3", 75), 75, tmp_path)


def test_what_cannot_be_lowered_is_named():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sin(self.conv(x)).mean((2, 3))  # a float function without a table

    model = calibrated(quantize(Gated(), wbits=4, signed_bits=8), 8)
    with pytest.raises(ExportError, match=r"^node sin: no integer lowering for sin$"):
        lower(model, (3, 8, 8))

    class PoolThenReLU(nn.Module):  # averages a float value before any quantizer rounds it
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            x = F.relu(F.avg_pool2d(self.bn(self.conv(x)), 2))
            return self.fc(x.mean((2, 3)))

    model = calibrated(quantize(PoolThenReLU(), wbits=4, abits=4), 8)
    with pytest.raises(ExportError, match=r"^node avg_pool2d: average pooling needs an integer"):
        lower(model, (3, 8, 8))


def test_an_uncalibrated_signed_quantizer_is_refused_by_name():
    model = create_model("tv_resnet18", num_classes=10)  # never run in train mode
    to_fixed(model, {n: (2, 2) for n in default_searched(model)})
    with pytest.raises(ExportError, match=r"quantizer signed_quant\.\w+: range never"):
        lower(model, (3, 32, 32))
