"""The integer graph equals the fake-quantized network; what cannot be exported is refused."""

import numpy as np
import pytest
import torch
from torch import nn

from edmips.cost import layers as cost_layers
from edmips.export import (
    ExportError,
    image_codes,
    load_bundle,
    lower,
    reference_copy,
    run,
    save_bundle,
)
from edmips.export.onnx import save_onnx
from edmips.export.onnx.qonnx import run_qonnx
from edmips.export.runtime import run_all
from edmips.models import create_model
from edmips.nn import default_searched, to_fixed, to_search


def trained_like(name: str, size: int, seed: int = 0, bits=None) -> nn.Module:
    """A network with random per-layer bits, calibrated stream ranges and batch norms with
    negative and zero scales: every path of the exporter is exercised."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    names = default_searched(model)
    g = torch.Generator().manual_seed(seed)
    choice = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    to_fixed(model, bits or {n: (choice([1, 2, 3, 4]), choice([2, 3, 4])) for n in names})
    cost_layers.measure(model, (3, size, size))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
                m.bias.uniform_(-0.5, 0.5)
                m.weight[0] = 0.0
        model.fc.bias.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("name,size", [("resnet_tiny", 32), ("resnet8", 32), ("resnet18", 32)])
def test_integer_graph_equals_the_fake_quantized_network(name, size, tmp_path):
    model = trained_like(name, size)
    graph = load_bundle(save_bundle(lower(model, (3, size, size)), tmp_path / "bundle"))
    images = torch.rand(24, 3, size, size)
    with torch.no_grad():
        float_logits = reference_copy(model)(images.double())
    int_logits = run(graph, image_codes(images))
    assert int_logits.dtype == torch.int64
    unit = torch.tensor(graph.node("fc").attrs["scale"], dtype=torch.float64)
    # integer logits times the accumulator unit are the float logits: every level agreed
    assert torch.allclose(int_logits * unit, float_logits, rtol=1e-9, atol=1e-9)
    assert torch.equal(int_logits.argmax(1), float_logits.argmax(1))


INTEGER_TYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


def test_every_tensor_of_the_graph_is_integer_and_within_its_range():
    graph = lower(trained_like("resnet8", 32, seed=1), (3, 32, 32))
    values = run_all(graph, image_codes(torch.rand(4, 3, 32, 32)))
    for node in graph.nodes:
        lo, hi = node.attrs["range"]
        v = values[node.name]
        integral = v.dtype in INTEGER_TYPES or torch.equal(v, v.round())  # float conv: exact
        assert integral and lo <= int(v.min()) and int(v.max()) <= hi, node.name


def test_qonnx_model_executed_by_qonnx_gives_the_runtime_integers(tmp_path):
    model = trained_like("resnet_tiny", 32, seed=2)
    graph = lower(model, (3, 32, 32))
    path = save_onnx(graph, tmp_path / "model.onnx")
    import onnx

    onnx.checker.check_model(str(path), full_check=True)  # logits have a shape
    nodes = onnx.load(str(path)).graph.node
    assert sum(n.op_type == "MultiThreshold" for n in nodes) >= 6
    codes = image_codes(torch.rand(3, 3, 32, 32))
    qonnx_logits = run_qonnx(path, codes.numpy())
    assert np.array_equal(qonnx_logits, run(graph, codes).numpy().astype(np.float64))


def test_composite_search_layers_are_refused_by_name():
    model = create_model("resnet_tiny", num_classes=10)
    to_search(model, default_searched(model), (1, 2), (2, 4))
    with pytest.raises(ExportError, match=r"layer stages\.0\.0\.conv1: a composite search layer"):
        lower(model, (3, 32, 32))


def test_unquantized_layers_are_refused_by_name():
    model = trained_like("resnet_tiny", 32)
    model.get_submodule("stages.1.0.conv2").wbits = 32
    with pytest.raises(ExportError, match=r"layer stages\.1\.0\.conv2: weights are not quantized"):
        lower(model, (3, 32, 32))
    model = trained_like("resnet_tiny", 32)
    model.get_submodule("stages.0.0.conv1").abits = 32
    with pytest.raises(ExportError, match=r"layer stages\.0\.0\.conv1: input activations are not"):
        lower(model, (3, 32, 32))


def test_uncalibrated_stream_and_foreign_models_are_refused():
    model = create_model("resnet_tiny", num_classes=10)
    to_fixed(model, {n: (2, 2) for n in default_searched(model)})
    cost_layers.measure(model, (3, 32, 32))
    with pytest.raises(ExportError, match=r"quantizer stages\.0\.quant: range never calibrated"):
        lower(model, (3, 32, 32))
    with pytest.raises(ExportError, match="layer 0: a float Conv2d; convert the model with edmips"):
        lower(nn.Sequential(nn.Conv2d(3, 3, 3)), (3, 32, 32))


def test_qonnx_refuses_accumulators_float32_cannot_hold():
    model = trained_like("resnet_tiny", 32)
    graph = lower(model, (3, 32, 32))
    graph.node("stages.0.0.conv1").attrs["acc_bits"] = 30
    with pytest.raises(ExportError, match=r"layer stages\.0\.0\.conv1: a 30-bit accumulator"):
        save_onnx(graph, "/nonexistent/model.onnx")


def test_the_runtime_refuses_float_input():
    graph = lower(trained_like("resnet_tiny", 32), (3, 32, 32))
    with pytest.raises(TypeError, match="uint8 image codes"):
        run(graph, torch.rand(1, 3, 32, 32))
