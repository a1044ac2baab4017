"""model.weights= for every family: a state dict of the same network loads exactly; another
network's file, or a file that is not a state dict, is refused in one line naming the file."""

import pytest
import torch

from edmips.models import create_model
from edmips.models.tv import float_model
from edmips.models.weights import network_state

CASES = [("resnet_tiny", "resnet8"), ("tv_resnet18", "tv_mobilenet_v2")]


def _saved(tmp_path, name, state):
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


def _source(name):
    """What a file of `name`'s float weights holds: the network's own state dict for edmips's
    ResNets, the torchvision model's for tv_ models."""
    torch.manual_seed(7)
    if name.startswith("tv_"):
        return float_model(name.removeprefix("tv_"), num_classes=10).body.state_dict()
    return create_model(name, num_classes=10).state_dict()


def _loaded_state(model, name):
    return model.body.state_dict() if name.startswith("tv_") else model.state_dict()


@pytest.mark.parametrize("name,other", CASES)
def test_a_saved_state_dict_loads_exactly(tmp_path, name, other):
    source = _source(name)
    torch.manual_seed(0)  # another initialisation than the file's
    model = create_model(name, num_classes=10, weights=str(_saved(tmp_path, name, source)))
    loaded = _loaded_state(model, name)
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name,other", CASES)
def test_another_models_file_is_refused_in_one_line(tmp_path, name, other):
    path = _saved(tmp_path, other, _source(other))
    with pytest.raises(
        ValueError, match=f"^model weights {path}: not a state dict of this model: "
    ):
        create_model(name, num_classes=10, weights=str(path))
    try:
        create_model(name, num_classes=10, weights=str(path))
    except ValueError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("name,other", CASES)
def test_a_text_file_is_refused_in_one_line(tmp_path, name, other):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\nat all\n")
    with pytest.raises(ValueError, match=f"^model weights {path}: not a state dict [^\n]*$"):
        create_model(name, num_classes=10, weights=str(path))


def test_a_shape_mismatch_names_the_first_entry(tmp_path):
    path = _saved(tmp_path, "resnet_tiny", create_model("resnet_tiny", num_classes=5).state_dict())
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \[5, 16\], the model \[10, 16\]$"):
        create_model("resnet_tiny", num_classes=10, weights=str(path))


def test_float_trained_resnet_weights_and_lightning_checkpoints_load(tmp_path):
    """A float copy has no quantizer entries: those keep the network's own; a Lightning
    checkpoint's network entries lose their "model." prefix, its module's own are dropped."""
    source = create_model("resnet_tiny", num_classes=10).state_dict()
    floats = {k: v for k, v in source.items() if ".quant." not in k and "input_quant" not in k}
    model = create_model("resnet_tiny", num_classes=10, weights=str(_saved(tmp_path, "f", floats)))
    assert torch.equal(model.fc.weight, source["fc.weight"])
    ckpt = {"state_dict": {"mu": torch.tensor(0.1), **{f"model.{k}": v for k, v in source.items()}}}
    model = create_model("resnet_tiny", num_classes=10, weights=str(_saved(tmp_path, "c", ckpt)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    assert network_state(ckpt["state_dict"]).keys() == source.keys()
