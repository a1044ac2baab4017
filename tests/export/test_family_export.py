"""Every training family exports bit-exactly: edmips's own ResNet and a converted torchvision
network, their layers and the quantizers outside them (stem, residual streams, signed inputs)
made the family's, compute in the integer runtime and both ONNX forms what the fake-quantized
network computes; so do a depthwise conv's learned steps, one per input channel."""

from collections import Counter
from dataclasses import astuple
from pathlib import Path

import onnx
import pytest
import torch
from omegaconf import OmegaConf
from test_traced_export import calibrated, check_exports

from edmips.export import load_bundle
from edmips.models import create_model
from edmips.nn import QuantConv2d, default_searched, quantize, to_fixed
from edmips.nn.convert import first_and_last
from edmips.nn.fold import fold_batch_norms
from edmips.nn.layers import is_depthwise
from edmips.ptq import method, stats
from edmips.quant.protocol import quantizers
from edmips.quant.registry import Family, get

CONF = Path(__file__).resolve().parents[2] / "conf" / "quant"
BITS = [(2, 2), (3, 4), (4, 3), (8, 2)]  # max-abs weights take 2 to 8 bits


def _in_family(name: str, family: str) -> torch.nn.Module:
    members = Family.from_spec(OmegaConf.load(CONF / f"{family}.yaml"))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    bits = {n: BITS[i % len(BITS)] for i, n in enumerate(default_searched(model))}
    return to_fixed(model, {**dict.fromkeys(first_and_last(model), (8, 8)), **bits}, members)


# qatsim's tv_mobilenet_v2 exports in test_a_folded_network_exports_bit_exactly
@pytest.mark.parametrize(
    "name,family",
    [("resnet20", "qatsim"), ("resnet20", "learned"), ("tv_mobilenet_v2", "learned")],
)
def test_a_family_exports_bit_exactly(name, family, tmp_path):
    members = Family.from_spec(OmegaConf.load(CONF / f"{family}.yaml"))
    model = _in_family(name, family)
    kinds = {type(q).name for _, q in quantizers(model)}
    assert kinds - {"image"} == {members.activation, members.signed, members.weight}
    model = calibrated(model, 32)
    torch.manual_seed(2)
    depthwise = _spread_depthwise_steps(model)
    assert len(depthwise) == (17 if (name, family) == ("tv_mobilenet_v2", "learned") else 0)
    check_exports(model, 32, tmp_path)
    _assert_steps_per_channel(tmp_path, depthwise)


@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2"])
def test_a_folded_network_exports_bit_exactly(name, tmp_path):
    model = _in_family(name, "qatsim")
    for bn in model.modules():  # batch norms that do something: scales of both signs
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data.uniform_(-1.5, 1.5)
    assert len(fold_batch_norms(model)) > 0
    for layer in model.modules():  # one scale per tensor: a grid the fold changes
        if isinstance(layer, QuantConv2d) and layer.folded_bn is not None:
            layer.weight_quant.per_channel = False
    check_exports(calibrated(model, 32), 32, tmp_path)


@pytest.mark.parametrize("family", ["edmips", "qatsim", "learned", "ptq"])
def test_every_family_in_its_int8_forms_runs_every_conv_on_qlinearconv(family, tmp_path):
    """deploy=int8: the family's int8 forms (power-of-two steps, float32 scales, batch
    norms absorbed) give thresholds that QLinearConv's requantization reproduces, at every
    bit-width up to 8 (the Gaussian-step weights' 8 bits too); exact."""
    members = Family.from_spec(OmegaConf.load(CONF / f"{family}.yaml"), "int8")
    assert all(get(name).int8_of for name in astuple(members))
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    bits = {n: BITS[i % len(BITS)] for i, n in enumerate(default_searched(model))}
    model = to_fixed(model, {**dict.fromkeys(first_and_last(model), (8, 8)), **bits}, members)
    model = calibrated(model, 32)
    if family == "ptq":  # clips set by calibration, as ptq.py sets them
        batches = [(torch.rand(8, 3, 32, 32),) for _ in range(3)]
        stats.gather(model, batches, 24)
        stats.finish(model, method("aciq_mix"))
    check_exports(model, 32, tmp_path)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node)
    assert ops["QLinearConv"] >= 21 and not {"Conv", "ConvInteger", "Gather"} & set(ops)


def _spread_depthwise_steps(model: torch.nn.Module) -> list[str]:
    """Each depthwise conv's input steps, where they are one per channel, made distinct (times
    0.25 to 4, at random); the convs' names."""
    names = []
    for name, layer in model.named_modules():
        if not (isinstance(layer, QuantConv2d) and is_depthwise(layer) and layer.abits):
            continue
        if not layer.input_quant.per_channel_input:
            continue
        step = layer.input_quant.step
        assert step.shape == (layer.in_channels,)
        with torch.no_grad():
            step.mul_(torch.empty_like(step).uniform_(0.25, 4.0))
        names.append(name)
    return names


def _assert_steps_per_channel(out: Path, names: list[str]) -> None:
    graph = load_bundle(out / "integer")
    for name in names:
        scale = graph.node(f"{name}.input").attrs["scale"]
        assert isinstance(scale, list) and len(set(scale)) == len(scale) > 1


def test_a_depthwise_conv_with_a_channel_multiplier_and_a_bias_exports_bit_exactly(tmp_path):
    """Output o reads input channel o // 2, and its bias is on that channel's grid."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=4),  # a bias, two outputs per channel
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    learned = Family.from_spec(OmegaConf.load(CONF / "learned.yaml"))
    model = calibrated(quantize(net, wbits=4, abits=4, family=learned), 8)
    torch.manual_seed(2)
    assert _spread_depthwise_steps(model) == ["2"]
    check_exports(model, 8, tmp_path)
    _assert_steps_per_channel(tmp_path, ["2"])
    bias = load_bundle(tmp_path / "integer").node("2").arrays["bias"]
    assert (bias != 0).any()  # added in the integers: on the accumulator's grid
