"""torchvision classifiers through edmips: the conversion keeps the float network, layers
get the right input quantizer, and search and retrain run on them from the configs."""

import json
import operator
from pathlib import Path

import pytest
import torch
from torch import nn

from edmips.export import ExportError
from edmips.models import create_model, list_models
from edmips.models.tv import float_model
from edmips.nn import QUANT_LAYERS, QuantConv2d, quantize
from edmips.quant import StreamQuant

# (torchvision name, smallest square input it takes here)
MODELS = [
    ("resnet18", 32),
    ("mobilenet_v2", 32),
    ("googlenet", 32),
    ("alexnet", 64),
    ("inception_v3", 75),
]


def _randomize_batch_norms(model: nn.Module) -> None:
    """Batch-norm statistics of a trained network, so logits are O(1) rather than ~0."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("arch,size", MODELS)
def test_at_32_bits_the_converted_network_is_the_float_one(arch, size):
    torch.manual_seed(0)
    model = float_model(arch, num_classes=10)
    _randomize_batch_norms(model)
    model.eval()
    converted = quantize(model, signed_bits=32)
    layers = [m for m in converted.modules() if isinstance(m, QUANT_LAYERS)]
    assert layers and not any(type(m) in (nn.Conv2d, nn.Linear) for m in converted.modules())
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), converted(x)
    assert expected.abs().max() > 1e-3  # a real signal, not a network of zeros
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    # Quantized, the same network computes something else: the layers really quantize.
    low = quantize(model, wbits=2, abits=2).eval()
    with torch.no_grad():
        assert not torch.allclose(low(x), expected, atol=1e-3)


def test_relu_outputs_get_hwgq_and_signed_inputs_a_signed_quantizer():
    model = quantize(float_model("mobilenet_v2", num_classes=10))
    layer = model.get_submodule
    assert layer("body.features.0.0").abits is None  # the normalized image
    assert layer("body.features.1.conv.0.0").abits == 32  # depthwise, after a ReLU6
    assert layer("body.features.1.conv.0.0").groups == 32
    assert layer("body.features.2.conv.0.0").abits is None  # after a linear bottleneck
    assert layer("body.features.2.conv.1.0").abits == 32
    assert layer("body.classifier.1").abits == 32  # pooled, flattened ReLU6 output
    signed = [m for m in model.modules() if isinstance(m, StreamQuant)]
    adds = [n for n in model.graph.nodes if n.target is operator.add]
    assert len(adds) == 10  # the inverted residuals: one quantizer each, for both operands
    assert len(signed) == len(adds) + sum(
        1 for m in model.modules() if isinstance(m, QUANT_LAYERS) and m.abits is None
    )
    assert all(q.bits == 8 for q in signed)
    # A signed input is quantized symmetrically: negative values survive.
    first = model.signed_quant.body_features_0_0.train()
    assert (first(torch.randn(4, 3, 32, 32)) < -0.5).any()


def test_one_signed_quantizer_serves_every_layer_reading_the_same_tensor():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    model = quantize(TwoHeads())
    assert sum(isinstance(m, StreamQuant) for m in model.modules()) == 1


def test_adds_share_one_quantizer_and_layers_take_over_the_average_pools_before_them():
    model = quantize(float_model("resnet18", num_classes=10))
    add = next(n for n in model.graph.nodes if n.name == "add")
    assert [a.op for a in add.args] == ["call_module", "call_module"]
    assert add.args[0].target == add.args[1].target  # one StreamQuant, one grid
    assert model.body.fc.pool_input and model.body.fc.abits == 32  # quantized, then pooled
    assert not any(n.name.startswith(("avgpool", "body_avgpool")) for n in model.graph.nodes)

    inception = quantize(float_model("inception_v3", num_classes=10))
    branch = inception.get_submodule("body.Mixed_5b.branch_pool.conv")
    assert isinstance(branch.input_pool, nn.AvgPool2d) and branch.abits == 32
    x = torch.rand(2, 192, 9, 9)
    low = quantize(float_model("inception_v3", num_classes=10), wbits=2, abits=2)
    layer = low.get_submodule("body.Mixed_5b.branch_pool.conv")
    from edmips.quant import hwgq

    expected = layer._conv_forward(
        nn.functional.avg_pool2d(hwgq(x, 2), 3, 1, 1), layer.quant_weight(), layer.quant_bias()
    )
    assert torch.equal(layer(x), expected)
    # Dropout before a pooled classifier stays in the training graph.
    mobilenet = quantize(float_model("mobilenet_v2", num_classes=10))
    assert mobilenet.get_submodule("body.classifier.1").pool_input
    assert any(n.target == "body.classifier.0" for n in mobilenet.graph.nodes)


def test_a_dropout_moved_onto_the_map_trains_out_of_place():
    """MNASNet's head: an in-place ReLU, a mean, an in-place dropout, the linear. The linear
    takes over the mean, so the dropout reads the ReLU's output, whose gradient needs it: in
    place it would overwrite it (autograd's error in the first backward)."""
    torch.manual_seed(0)
    model = quantize(float_model("mnasnet0_5", num_classes=10), wbits=4, abits=4).train()
    dropout, linear = (model.get_submodule(f"body.classifier.{i}") for i in (0, 1))
    assert linear.pool_input and not dropout.inplace
    x = torch.rand(2, 3, 32, 32)
    loss = model(x).square().sum()
    loss.backward()
    assert linear.weight.grad.abs().sum() > 0


def test_filter_leaves_the_rejected_layers_as_they_are():
    model = quantize(
        float_model("alexnet", num_classes=10), filter=lambda name, m: isinstance(m, nn.Conv2d)
    )
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert kinds == {QuantConv2d, nn.Linear}


def test_every_torchvision_classifier_is_registered_and_first_last_layers_are_8_bit():
    assert {"tv_resnet18", "tv_mobilenet_v2", "tv_googlenet", "tv_alexnet"} <= set(list_models())
    assert "tv_vit_b_16" in list_models()
    model = create_model("tv_resnet18", num_classes=10)
    assert model.name == "tv_resnet18"
    assert (model.body.conv1.wbits, model.body.conv1.abits) == (8, None)
    assert (model.body.fc.wbits, model.body.fc.abits) == (8, 8)
    assert model.get_submodule("body.layer1.0.conv1").bit_config() == (32, 32)


def test_weights_come_from_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    source = float_model("resnet18", num_classes=10).body
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    model = create_model("tv_resnet18", num_classes=10, weights=str(tmp_path / "resnet18.pt"))
    layer = model.get_submodule("body.layer2.0.conv1")
    assert torch.equal(layer.weight, source.layer2[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="nope.pt: no such file"):
        create_model("tv_resnet18", num_classes=10, weights=str(tmp_path / "nope.pt"))


TINY_RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
]


@pytest.mark.parametrize(
    "model", [pytest.param("tv_mobilenet_v2", marks=pytest.mark.slow), "tv_resnet18"]
)
def test_search_runs_on_a_torchvision_model(search_cfg, tmp_path, model, no_search_figures):
    from edmips.programs.search import search
    from edmips.records import arch

    found = search(search_cfg(f"model={model}", *TINY_RUN, "search.warmup_epochs=0"))["arch"]
    assert found.model == model
    on_disk = arch.load(tmp_path / "found.json", known_models=list_models())
    assert on_disk == found
    assert all(len(layer.probs_w) == 4 for layer in found.layers)
    # Layers with a signed input search their weights only; their input stays 8-bit.
    assert {layer.abits for layer in found.layers} <= {2, 3, 4, 8}


def test_retrain_exports_a_torchvision_model_that_predicts_as_the_network(retrain_cfg):
    from edmips.programs.retrain import retrain

    cfg = retrain_cfg("model=tv_mobilenet_v2", "arch=uniform", "wbits=4", "abits=4", *TINY_RUN)
    metrics = retrain(cfg)
    out = Path(cfg.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["model"] == "tv_mobilenet_v2"
    assert metrics["prediction_agreement"] == 1.0  # the integer runtime, on every test image
    assert metrics["qdq_agreement"] == 1.0  # model_qdq.onnx under onnxruntime, the same
    assert metrics["test_images"] == 200
    assert (out / "model.onnx").exists() and (out / "model_qdq.onnx").exists()

    from edmips.export import load_bundle
    from edmips.export.cli import main as export_main  # from the checkpoint alone

    again = export_main([str(out / "checkpoints" / "last.ckpt"), "--out", str(out / "again")])
    assert [p.name for p in again] == ["integer", "model.onnx", "model_int8.onnx", "model_qdq.onnx"]
    for p in again[1:]:
        assert p.read_bytes() == (out / p.name).read_bytes()
    first, second = load_bundle(out / "integer"), load_bundle(again[0])
    assert [n.attrs for n in first.nodes] == [n.attrs for n in second.nodes]


def test_an_export_failing_after_training_leaves_the_run_resumable(retrain_cfg, monkeypatch):
    import edmips.programs.retrain as run

    def refuse(model, input_size, out):
        raise ExportError("node sigmoid: no ONNX lowering for sigmoid")

    monkeypatch.setattr(run, "export", refuse)
    cfg = retrain_cfg("model=tv_resnet18", "arch=uniform", *TINY_RUN)
    with pytest.raises(ExportError, match="node sigmoid"):
        run.retrain(cfg)
    # no metrics.json of nulls that would mark the run finished: resume= exports it again
    out = Path(cfg.output_dir)
    assert not (out / "metrics.json").exists() and (out / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "arch,size",
    [*MODELS[:3], *(pytest.param(*m, marks=pytest.mark.slow) for m in MODELS[3:])],
)
def test_a_search_step_and_a_retrain_step_train_every_layer(arch, size, request):
    from edmips.cost import layers as cost_layers
    from edmips.cost.bitops import expected_equivalent_bits
    from edmips.nn import MIXED_LAYERS, default_searched, to_fixed, to_search

    if arch == "alexnet":
        request.getfixturevalue("narrow_alexnet")
    torch.manual_seed(0)
    model = create_model(f"tv_{arch}", num_classes=10)
    if arch == "alexnet":
        # No batch norm: HWGQ's fixed steps need activations near unit scale, as trained
        # weights give them. Under torchvision's default init the largest ReLU output falls
        # from 3.4 after the first conv to 0.05 before the last linear (64 px), under half
        # the 2-bit step (0.538), so those layers see zeros; He init keeps them near unit.
        for m in model.modules():
            if isinstance(m, QUANT_LAYERS):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    names = default_searched(model)
    to_search(model, names, (1, 2, 4), (2, 4))
    costs = cost_layers.measure(model, (3, size, size))
    x, y = torch.rand(4, 3, size, size), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss = loss + 1e-3 * expected_equivalent_bits(cost_layers.searched(model, costs))
    loss.backward()
    layers = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, MIXED_LAYERS) for m in layers)
    assert all(m.alpha_w.grad.abs().sum() > 0 for m in layers)
    hwgq = [m for m in layers if m.abits is not None]
    assert hwgq and all(m.alpha_a.grad.abs().sum() > 0 for m in hwgq)
    assert all(not hasattr(m, "alpha_a") for m in layers if m.abits is None)

    to_fixed(model, {n: (2, 2) for n in names})
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(not torch.equal(model.get_submodule(n).weight, before[n]) for n in names)
