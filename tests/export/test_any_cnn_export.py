"""CNNs beyond a linear head on an adaptive pool (issue 30): a mean over the positions
(MNASNet), shape arithmetic and a channel shuffle (ShuffleNetV2), a conv classifier with a ReLU
and a global pool (SqueezeNet) export exactly; a fixed-size or transformer network is refused
in one line."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edmips.export import ExportError, IntegerRuntime, load_bundle
from edmips.export.ir import Graph
from edmips.export.lower import lower
from edmips.models import create_model
from edmips.models.tv import NormalizedNet, check_image_size
from edmips.nn import default_searched, quantize, to_fixed
from edmips.nn.convert import first_and_last
from tests.export.test_traced_export import calibrated, check_exports


@pytest.mark.parametrize(
    "name,op",
    [
        ("tv_mnasnet0_5", "sumpool"),  # x.mean([2, 3]) taken over by the linear
        ("tv_shufflenet_v2_x0_5", "gather_channels"),
        ("tv_squeezenet1_0", "relu"),
    ],
)
def test_torchvision_cnns_export_exactly_at_w4a4(name, op, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    to_fixed(model, {n: (4, 4) for n in default_searched(model)})
    for m in model.modules():  # a trained network's scale: activations across HWGQ's steps
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 1.0)
    check_exports(calibrated(model, 32), 32, tmp_path)
    assert op in {n.op for n in load_bundle(tmp_path / "integer").nodes}


def _shuffle(x, groups: int):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, c, h, w)


class Moves(nn.Module):
    """A channel shuffle (shape arithmetic from x.size()), a chunk, a channel slice, then a
    conv head: ReLU, a mean over the positions kept as a map, and the flattened logits."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Conv2d(14, 5, 1)

    def forward(self, x):
        x = _shuffle(F.relu(self.bn(self.stem(x))), 2)
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, F.relu(self.a(right))], 1)
        x = torch.cat([x, F.relu(self.b(_shuffle(x, 4)[:, 2:]))], 1)
        return torch.flatten(F.relu(self.head(x)).mean((2, 3), keepdim=True), 1)


def test_moved_channels_and_a_conv_head_are_exact(tmp_path):
    torch.manual_seed(0)
    model = quantize(Moves(), wbits=3, abits=3)
    assert model.a.abits == 3 and model.b.abits == 3  # chunks of ReLU outputs: non-negative
    check_exports(calibrated(model, 8), 8, tmp_path)
    graph = load_bundle(tmp_path / "integer")
    ops = [n.op for n in graph.nodes]
    assert ops.count("gather_channels") == 5 and ops[-3:] == ["relu", "windowsum", "flatten"]
    first = next(n for n in graph.nodes if n.op == "gather_channels")
    assert first.arrays["index"].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]  # the shuffle


def test_gather_and_relu_over_every_input_value():
    """The runtime's gather_channels moves each value as torch's shuffle does, and relu is
    max(v, 0), on every value of an int8 range."""
    values = torch.arange(-128, 128).view(1, 4, 8, 8)
    graph = Graph("ops", [4, 8, 8])
    graph.add("input", "input", [], range=[0, 255], scale=1.0, arrays={"zero_point": _zeros(4)})
    index = _shuffle(torch.arange(4).view(1, 4, 1, 1), 2).flatten().numpy()
    graph.add("gather_channels", "g", ["input"], range=[0, 255], arrays={"index": index})
    graph.add("relu", "r", ["g"], range=[0, 255])
    out = IntegerRuntime(graph).run_all((values + 128).to(torch.uint8))
    assert torch.equal(out["g"], _shuffle(values + 128, 2))
    graph.nodes[0].arrays["zero_point"] = _zeros(4) + 128  # values -128 .. 127
    graph.nodes[0].attrs["range"] = [-128, 127]
    out = IntegerRuntime(graph).run_all((values + 128).to(torch.uint8))
    assert torch.equal(out["r"], _shuffle(values, 2).clamp_min(0))


def _zeros(channels: int):
    import numpy as np

    return np.zeros(channels, np.int16)


def test_a_rearrangement_within_channels_is_refused_by_name():
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).transpose(2, 3)).mean((2, 3))

    model = calibrated(quantize(Transposed(), wbits=4, abits=4), 8)
    with pytest.raises(ExportError, match=r"^node transpose: a rearrangement that moves values"):
        lower(model, (3, 8, 8))


def test_squeezenet_keeps_its_conv_classifier_at_8_bits():
    model = create_model("tv_squeezenet1_0", num_classes=10)
    first, last = first_and_last(model)
    assert (first, last) == ("body.features.0", "body.classifier.1")
    assert model.get_submodule(last).bit_config() == (8, 8)
    assert last not in default_searched(model)


def test_a_vit_is_refused_at_another_image_size_and_at_its_layer_norm():
    from torchvision.models import VisionTransformer

    body = VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    model = quantize(NormalizedNet(body, (0.5,) * 3, (0.25,) * 3), wbits=4, abits=4)
    model.name, model.image_size = "tv_vit_tiny", 32  # as tv.quantized_model records it
    with pytest.raises(ValueError, match=r"^model tv_vit_tiny needs 32x32 images, the data has"):
        check_image_size(model, (3, 64, 64))
    check_image_size(model, (3, 32, 32))

    class Normed(nn.Module):  # a transformer's LayerNorm, in a network that converts
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.fc = (
                nn.Conv2d(3, 4, 3),
                nn.LayerNorm([4, 6, 6]),
                nn.Linear(4, 2),
            )

        def forward(self, x):
            return self.fc(F.relu(self.norm(self.conv(x))).mean((2, 3)))

    normed = calibrated(quantize(Normed(), wbits=4, abits=4), 8)
    with pytest.raises(ExportError, match=r"^node norm: no integer lowering for LayerNorm .*conv"):
        lower(normed, (3, 8, 8))
