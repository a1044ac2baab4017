"""calibration.stats=<file>: one run's gathered statistics reused by the next, which gives the
same clips without a pass over the calibration images; another model's file is refused."""

import json

import pytest
import torch
from test_ptq_program import QUICK, float_weights  # noqa: F401 (a fixture)

from edmips.models import create_model
from edmips.programs.ptq import ptq
from edmips.ptq import stats

SAME = ("test_acc", "test_acc_integer", "prediction_agreement", "qdq_agreement", "float_acc")


def test_a_second_run_reuses_the_statistics(ptq_cfg, float_weights, monkeypatch):  # noqa: F811
    clips = []
    finish = stats.finish
    monkeypatch.setattr(stats, "finish", lambda model, clip: clips.append(finish(model, clip)))
    cfg = ptq_cfg(f"model.weights={float_weights}", "arch=uniform", *QUICK)
    first = ptq(cfg)
    saved = f"{cfg.output_dir}/{stats.FILE}"

    def no_images(*_):
        raise AssertionError("the calibration images were read")

    monkeypatch.setattr(stats, "gather", no_images)
    again = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", f"calibration.stats={saved}", *QUICK
    )
    again.output_dir = str(again.output_dir) + "-again"
    second = ptq(again)
    assert clips[0] == clips[1] and len(clips[0]) > 0  # bit-identical alphas
    assert {k: first[k] for k in SAME} == {k: second[k] for k in SAME}
    assert second["calibration_images"] == 8
    arrays = [f"{out}/integer/manifest.json" for out in (cfg.output_dir, again.output_dir)]
    assert json.loads(open(arrays[0]).read()) == json.loads(open(arrays[1]).read())


def test_another_models_statistics_are_refused(ptq_cfg, float_weights, tmp_path):  # noqa: F811
    cfg = ptq_cfg(f"model.weights={float_weights}", "arch=uniform", *QUICK)
    ptq(cfg)
    torch.manual_seed(0)
    other = tmp_path / "resnet8.pt"
    torch.save(create_model("resnet8", num_classes=10).state_dict(), other)
    refused = ptq_cfg(
        f"model.weights={other}",
        "model=resnet8",
        "arch=uniform",
        f"calibration.stats={cfg.output_dir}/{stats.FILE}",
    )
    refused.output_dir = str(refused.output_dir) + "-other"
    with pytest.raises(ValueError) as e:
        ptq(refused)
    assert str(e.value).startswith("calibration.stats=") and "\n" not in str(e.value)
    assert "gathered on resnet_tiny" in str(e.value) and "not this resnet8" in str(e.value)


def test_a_file_that_is_no_statistics_is_refused(ptq_cfg, float_weights):  # noqa: F811
    cfg = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", f"calibration.stats={float_weights}"
    )
    with pytest.raises(ValueError, match="^calibration.stats=.*: not a calibration statistics"):
        ptq(cfg)
