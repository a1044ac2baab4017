"""ONNX export of converted (traced) models: QONNX with MultiThreshold and QDQ for plain
onnxruntime, both computing the fake-quantized network; what cannot be lowered is named."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edmips.export import ExportError, export
from edmips.export.onnx_graph import to_onnx
from edmips.export.onnx_run import run_qdq
from edmips.export.qonnx import run_qonnx
from edmips.models import create_model
from edmips.nn import default_searched, quantize, to_fixed

BITS = [(2, 2), (3, 4), (4, 3), (1, 2)]  # (wbits, abits), cycled over the searched layers


def trained_like(name: str, size: int, seed: int = 0) -> nn.Module:
    """A converted network with mixed bit-widths, calibrated signed quantizers and batch-norm
    statistics that a few training steps would give."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    to_fixed(model, {n: BITS[i % len(BITS)] for i, n in enumerate(default_searched(model))})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size))
    return model.eval()


@pytest.mark.parametrize(
    "name,size",
    [
        ("tv_resnet18", 32),
        ("tv_mobilenet_v2", 32),
        ("tv_googlenet", 32),
        pytest.param("tv_alexnet", 64, marks=pytest.mark.slow),
    ],
)
def test_qdq_and_qonnx_models_compute_the_fake_quantized_network(name, size, tmp_path):
    model = trained_like(name, size)
    paths = export(model, (3, size, size), tmp_path)
    assert [p.name for p in paths] == ["model.onnx", "model_qdq.onnx"]
    images = torch.rand(6, 3, size, size)
    with torch.no_grad():
        expected = model(images).numpy()
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))

    qdq = onnx.load(str(tmp_path / "model_qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    assert {o.domain for o in qdq.opset_import} == {""}  # standard ops only
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) >= 3
    int_weights = [t for t in qdq.graph.initializer if t.name.endswith("/weight/codes")]
    assert int_weights and all(
        t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32) for t in int_weights
    )
    got = run_qdq(tmp_path / "model_qdq.onnx", images.numpy())
    assert np.abs(got - expected).max() <= tol
    assert np.array_equal(got.argmax(1), expected.argmax(1))

    qonnx_path = tmp_path / "model.onnx"
    onnx.checker.check_model(str(qonnx_path))
    nodes = onnx.load(str(qonnx_path)).graph.node
    assert sum(n.op_type == "MultiThreshold" for n in nodes) >= 3
    assert not any(n.op_type == "QuantizeLinear" for n in nodes)
    got = run_qonnx(qonnx_path, images.numpy())
    assert np.abs(got - expected).max() <= tol
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_an_operation_without_lowering_is_named():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)).mean((2, 3))

    model = quantize(Gated(), wbits=4, signed_bits=8)
    model.train()(torch.rand(2, 3, 8, 8))
    with pytest.raises(ExportError, match=r"^node sigmoid: no ONNX lowering for sigmoid$"):
        to_onnx(model.eval(), (3, 8, 8))


def test_unquantized_uncalibrated_and_search_layers_are_refused_by_name():
    model = trained_like("tv_resnet18", 32)
    model.get_submodule("body.layer2.0.conv1").wbits = 32
    with pytest.raises(ExportError, match=r"layer body\.layer2\.0\.conv1: weights are not"):
        to_onnx(model, (3, 32, 32))
    model = create_model("tv_resnet18", num_classes=10)
    to_fixed(model, {n: (2, 2) for n in default_searched(model)})
    with pytest.raises(ExportError, match=r"quantizer signed_quant\.body_conv1: range never"):
        to_onnx(model, (3, 32, 32))
    with pytest.raises(ExportError, match="not a traced"):
        to_onnx(nn.Sequential(nn.Conv2d(3, 3, 3)), (3, 8, 8))
    with pytest.raises(ValueError, match="unknown ONNX format 'tflite'"):
        to_onnx(model, (3, 32, 32), "tflite")


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_multithreshold_thresholds_reproduce_the_quantizers_bit_for_bit(bits):
    from edmips.export.onnx_quant import exact_thresholds
    from edmips.quant import HWGQ_STEPS, SignedQuant, hwgq_codes

    step = HWGQ_STEPS[bits]
    thresholds = exact_thresholds(lambda v: hwgq_codes(v, bits), step, 0, 2**bits - 1)
    # Values on and next to every level boundary, where a rounded threshold would be off.
    x = ((torch.arange(2**bits + 1) - 0.5) * step).float()
    x = torch.cat([x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1), torch.randn(5000)])
    counts = (x.unsqueeze(1) >= thresholds).sum(1).float()
    assert torch.equal(counts, hwgq_codes(x, bits))

    quant = SignedQuant(bits)
    quant.train()(torch.randn(64) * 3)
    scale, top = float(quant.scale()), quant.qmax
    thresholds = exact_thresholds(quant.codes, scale, -top, top)
    x = torch.cat([((torch.arange(-top, top + 1) - 0.5) * scale).float(), torch.randn(5000) * 3])
    x = torch.cat([x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1)])
    counts = (x.unsqueeze(1) >= thresholds).sum(1).float() - top
    assert torch.equal(counts, quant.codes(x))
