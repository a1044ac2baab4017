"""A quantizer defined in one place (here: this file) goes through the layers, the search's
composite and the integer export with no edit elsewhere: the integer graph agrees exactly."""

import pytest
import torch
from torch import Tensor, nn

from edmips.export import image_codes, lower, reference_copy, run
from edmips.models import create_model
from edmips.nn import default_searched, to_fixed, to_search
from edmips.quant import ActivationQuantizer, Family, register
from edmips.quant.activation import round_ste


@register("pow2_test")
class PowerOfTwo(ActivationQuantizer):
    """Unsigned, step 2^-(b-1), codes 0 .. 2^b - 1: a ReLU clipped at about 2."""

    supported_bits = (2, 3, 4)

    @property
    def lowest(self) -> int:
        return 0

    @property
    def num_levels(self) -> int:
        return 2**self.bits

    def unit(self) -> float:
        return 2.0 ** (1 - self.bits)

    def codes(self, x: Tensor) -> Tensor:
        return (x / self.unit()).clamp(0, 2**self.bits - 1).round()

    def forward(self, x: Tensor) -> Tensor:
        return round_ste((x / self.unit()).clamp(0, 2**self.bits - 1)) * self.unit()


FAMILY = Family(activation="pow2_test", weight="gauss", signed="ema")


def test_a_new_quantizer_exports_with_prediction_agreement_one():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    names = default_searched(model)
    to_search(model, names, (2, 3), (2, 3, 4), family=FAMILY)
    model.train()(torch.rand(4, 3, 16, 16))  # the composite runs the family's default mix
    layer = model.get_submodule(names[1])
    assert all(isinstance(q, PowerOfTwo) for q in layer.input_quants)
    to_fixed(model, {n: (2, 3) for n in names})
    assert model.get_submodule(names[1]).aquant == "pow2_test"
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 16, 16))  # stream ranges
    model.eval()
    graph = lower(model, (3, 16, 16))
    thresholds = [n for n in graph.nodes if n.op == "threshold" and n.name.endswith(".input")]
    assert {n.attrs["scale"] for n in thresholds} >= {0.25}  # the new quantizer's unit
    images = torch.rand(32, 3, 16, 16)
    with torch.no_grad():
        reference = reference_copy(model)(images.double())
    logits = run(graph, image_codes(images))
    unit = torch.tensor(graph.node("fc").attrs["scale"], dtype=torch.float64)
    assert torch.allclose(logits * unit, reference, rtol=1e-9, atol=1e-9)
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() == 1.0


def test_a_family_with_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
        Family(activation="nope").check()


def test_the_image_layer_keeps_its_input_and_its_name():
    model = create_model("resnet_tiny", num_classes=10)
    to_search(model, ["conv1"], (2,), (2,), family=FAMILY)
    assert model.conv1.input_quants is None and model.conv1.aquant == "image"
    assert isinstance(model.input_quant, nn.Module)
