"""Every training family exports bit-exactly: edmips's own ResNet and a converted torchvision
network, their layers and the quantizers outside them (stem, residual streams, signed inputs)
made the family's, compute in the integer runtime and both ONNX forms what the fake-quantized
network computes."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_traced_export import calibrated, check_exports

from edmips.models import create_model
from edmips.nn import QuantConv2d, default_searched, to_fixed
from edmips.nn.convert import first_and_last
from edmips.nn.fold import fold_batch_norms
from edmips.quant.protocol import quantizers
from edmips.quant.registry import Family

CONF = Path(__file__).resolve().parents[2] / "conf" / "quant"
BITS = [(2, 2), (3, 4), (4, 3), (8, 2)]  # max-abs weights take 2 to 8 bits


def _in_family(name: str, family: str) -> torch.nn.Module:
    members = Family(**OmegaConf.load(CONF / f"{family}.yaml"))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    bits = {n: BITS[i % len(BITS)] for i, n in enumerate(default_searched(model))}
    return to_fixed(model, {**dict.fromkeys(first_and_last(model), (8, 8)), **bits}, members)


@pytest.mark.parametrize("family", ["qatsim", "learned"])
@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2"])
def test_a_family_exports_bit_exactly(name, family, tmp_path):
    members = Family(**OmegaConf.load(CONF / f"{family}.yaml"))
    model = _in_family(name, family)
    kinds = {type(q).name for _, q in quantizers(model)}
    assert kinds - {"image"} == {members.activation, members.signed, members.weight}
    check_exports(calibrated(model, 32), 32, tmp_path)


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
