"""ptq.py from a float state dict to the integer bundle and both ONNX forms, agreement 1.0."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from edmips.models import create_model
from edmips.programs.checks import ConfigError
from edmips.programs.ptq import ptq

QUICK = ["data.num_test=64", "calibration.images=8"]


def allocated_within(cfg, allocation: str, target: float) -> dict:
    """ptq.py with a budget: the allocation it records, within 1% of `target`, exported with
    agreement 1.0; its arch.json."""
    result = ptq(cfg)
    assert result["allocation"] == allocation and result["kind"] == "ptq"
    assert result["prediction_agreement"] == 1.0 and result["qdq_agreement"] == 1.0
    assert abs(result["equivalent_bits"] - target) <= 0.01 * target
    arch = json.loads(open(f"{cfg.output_dir}/arch.json").read())
    assert arch["kind"] == allocation
    return arch


@pytest.fixture
def float_weights(tmp_path):
    """A resnet_tiny's float state dict, after a few SGD steps at full precision."""
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("clip", ["minmax", "aciq_mix"])
def test_ptq_writes_metrics_with_agreement_one(ptq_cfg, float_weights, clip):
    cfg = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", f"ptq.activation_clip={clip}", *QUICK
    )
    result = ptq(cfg)
    out = cfg.output_dir
    stored = json.loads(open(f"{out}/metrics.json").read())
    assert stored == result
    assert stored["kind"] == "ptq" and stored["activation_clip"] == clip
    assert stored["calibration_images"] == 8 and 0 <= stored["float_acc"] <= 1
    assert stored["prediction_agreement"] == 1.0 and stored["qdq_agreement"] == 1.0
    assert stored["test_images"] == 64 and stored["uniform"] == {"wbits": 4, "abits": 4}
    arch = json.loads(open(f"{out}/arch.json").read())
    assert {(layer["wbits"], layer["abits"]) for layer in arch["layers"]} == {(4, 4)}
    assert all((Path(out) / name).exists() for name in ("integer", "model.onnx", "model_qdq.onnx"))


def test_the_weights_are_required(ptq_cfg, tmp_path):
    cfg = ptq_cfg("arch=uniform")
    with pytest.raises(ConfigError, match="^model.weights is required: model.weights=<"):
        ptq(cfg)
    assert not (tmp_path / "ptq").exists()


def test_the_float_arch_is_refused(ptq_cfg, float_weights, tmp_path):
    cfg = ptq_cfg(f"model.weights={float_weights}", "arch=float")
    with pytest.raises(ConfigError, match="^arch=float: post-training quantization needs bits"):
        ptq(cfg)
    assert not (tmp_path / "ptq").exists()


def test_an_unknown_clip_is_refused_before_anything_is_built(ptq_cfg, float_weights, tmp_path):
    cfg = ptq_cfg(f"model.weights={float_weights}", "arch=uniform", "ptq.activation_clip=kl")
    with pytest.raises(ValueError, match="ptq.activation_clip=kl: choose from minmax"):
        ptq(cfg)
    assert not (tmp_path / "ptq").exists()


def test_more_calibration_images_than_the_split_holds_are_refused(ptq_cfg, float_weights):
    cfg = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", "data.num_train=300", "data.val_size=100"
    )
    cfg.calibration.images = 1000
    with pytest.raises(ValueError, match="calibration.images=1000: the training split has only"):
        ptq(cfg)


@pytest.mark.slow
def test_a_torchvision_network_goes_through_ptq(ptq_cfg, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mnv2.pt"
    body = torchvision.models.mobilenet_v2(num_classes=10)  # torchvision's own state dict
    torch.save(body.state_dict(), path)
    cfg = ptq_cfg(f"model.weights={path}", "model=tv_mobilenet_v2", "arch=uniform", *QUICK)
    result = ptq(cfg)
    assert result["prediction_agreement"] == 1.0 and result["qdq_agreement"] == 1.0
