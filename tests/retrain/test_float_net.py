"""The float network: every conv/linear and every quantizer at 32 bits computes the float
function with the quantized network's state-dict keys."""

import torch

from edmips.models import create_model
from edmips.models.weights import float_state
from edmips.nn import to_float
from edmips.quant.protocol import quantizers
from edmips.retrain.float_net import accuracy


def test_to_float_leaves_nothing_quantized_and_keeps_the_keys():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    keys = model.state_dict().keys()
    to_float(model)
    assert model.state_dict().keys() == keys
    assert {q.bits for _, q in quantizers(model)} == {32}
    x = torch.rand(2, 3, 16, 16)
    image = model.input_quant
    expected = (x * 255 - image.zero_point) * image.scale  # normalized, not rounded
    assert torch.equal(image(x), expected)
    assert image.zero_point.equal(
        torch.round(255 * torch.tensor([0.485, 0.456, 0.406])).view(1, -1, 1, 1)
    )


def test_a_float_torchvision_model_is_its_torchvision_network_and_its_file_loads(tmp_path):
    from edmips.models.tv import float_model

    torch.manual_seed(0)
    model = create_model("tv_resnet18", num_classes=10).eval()
    to_float(model)
    reference = float_model("resnet18", num_classes=10).eval()
    reference.body.load_state_dict(float_state(model))  # torchvision's own keys
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), reference(x), atol=1e-5)
    path = tmp_path / "w.pt"
    torch.save(float_state(model), path)
    loaded = create_model("tv_resnet18", num_classes=10, weights=str(path))
    assert all(torch.equal(v, float_state(model)[k]) for k, v in float_state(loaded).items())


def test_accuracy_counts_top1_and_top5():
    model = torch.nn.Linear(3, 6, bias=False)
    model.weight.data = torch.eye(6, 3)
    x = torch.eye(3)
    loader = [(x, torch.tensor([0, 1, 5]))]
    assert accuracy(model, loader) == {"test_acc": 2 / 3, "test_acc_top5": 1.0, "test_images": 3}
