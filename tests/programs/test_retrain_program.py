"""Retraining end to end: metrics.json, integer agreement, and bad arch files stopped early."""

import json
import os
import stat

import numpy as np
import pytest
from conftest import CIFAR10_NPZ

from edmips.programs.builders import build_datamodule
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import resolve_arch, retrain
from edmips.records import arch
from edmips.records.arch import ArchError

KEYS = {
    "test_acc",
    "test_acc_integer",
    "prediction_agreement",
    "equivalent_bits",
    "bitops",
    "weight_bits_total",
    "activation_bits_total",
    "micronet_score",
    "val_acc",
    "model",
    "data",
    "arch",
    "uniform",
    "wall_time_s",
}


def test_uniform_retrain_exports_and_the_integer_network_agrees_exactly(retrain_cfg):
    cfg = retrain_cfg("arch=uniform", "wbits=2", "abits=3")
    metrics = retrain(cfg)
    out = cfg_path(cfg)
    written = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(written) and written == metrics
    assert written["prediction_agreement"] == written["qdq_agreement"] == 1.0
    assert written["test_acc"] <= written["test_acc_top5"] <= 1 and written["schema"] == 1
    assert written["test_acc_integer"] == written["test_acc"]
    assert written["uniform"] == {"wbits": 2, "abits": 3}
    assert written["equivalent_bits"] == pytest.approx(6**0.5)
    assert written["micronet_score"] > 0 and written["activation_bits_total"] > 0
    used = arch.load(out / "arch.json")
    assert {(layer.wbits, layer.abits) for layer in used.layers} == {(2, 3)}
    assert (out / "integer" / "manifest.json").exists() and (out / "model.onnx").exists()

    # The export is callable on the checkpoint alone and rebuilds the same integer network.
    from edmips.export.cli import main as export_main

    export_main([str(out / "checkpoints" / "last.ckpt"), "--out", str(out / "again")])
    first = np.load(out / "integer" / "arrays.npz")
    again = np.load(out / "again" / "integer" / "arrays.npz")
    assert sorted(first) == sorted(again)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(SystemExit, match=r"^error: .*missing\.ckpt: no such checkpoint$"):
        export_main([str(out / "missing.ckpt")])
    with pytest.raises(SystemExit, match=r"^error: .*arch\.json: not a checkpoint \("):
        export_main([str(out / "arch.json")])

    # Without --out: a new export/ in the run dir, or beside the checkpoint file, with the
    # umask's modes (the bundle folder too); never over files already there.
    mask = os.umask(0o027)
    try:
        paths = export_main([str(out)])
    finally:
        os.umask(mask)
    assert {p.parent for p in paths} == {out / "export"} and (
        out / "export" / "model.onnx"
    ).exists()
    for folder in (out / "export", out / "export" / "integer"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    with pytest.raises(SystemExit, match=r"^error: .*/export holds files already: remove them"):
        export_main([str(out)])
    export_main([str(out / "checkpoints" / "last.ckpt")])
    assert (out / "checkpoints" / "export" / "integer" / "manifest.json").exists()
    (out / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"^error: .*file/x: .*file is a file, not a directory$"):
        export_main([str(out), "--out", str(out / "file" / "x")])


def test_retrain_of_a_found_architecture_uses_its_bits(retrain_cfg, tmp_path):
    found = _found_for_tiny(tmp_path)
    metrics = retrain(retrain_cfg(f"arch={found}"))
    assert metrics["model"] == "resnet_tiny" and metrics["prediction_agreement"] == 1.0
    assert metrics["equivalent_bits"] == pytest.approx(arch.load(found).equivalent_bits)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(model="resnet20"), "5 layers, but resnet20 has 20"),
        (lambda d: d.update(model="vgg7"), "unknown model 'vgg7'"),
        (lambda d: d["layers"].pop(), "4 layers, but resnet_tiny has 5"),
        (lambda d: d["layers"][0].update(name="stem"), "layer 'stem' where resnet_tiny has"),
        (lambda d: d["layers"][0].update(abits=5), "abits=5 is outside the space"),
    ],
)
def test_a_bad_arch_file_stops_before_training(retrain_cfg, tmp_path, edit, message):
    path = _found_for_tiny(tmp_path)
    d = json.loads(path.read_text())
    edit(d)
    d.pop("bitops")
    path.write_text(json.dumps(d))
    cfg = retrain_cfg(f"arch={path}")
    with pytest.raises(ArchError, match=message) as e:
        retrain(cfg)
    assert "\n" not in str(e.value)
    assert not cfg_path(cfg).exists()  # nothing trained, nothing written


def test_a_missing_arch_file_is_named(retrain_cfg, tmp_path):
    with pytest.raises(ArchError, match="no such file"):
        retrain(retrain_cfg(f"arch={tmp_path}/nope.json"))


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_NPZ.exists(), reason="needs ../shared/data/cifar10-jpeg.npz")
def test_cifar10_integer_network_agrees_on_every_test_image(retrain_cfg):
    metrics = retrain(
        retrain_cfg(
            "data=cifar10",
            f"data.path={CIFAR10_NPZ}",
            "arch=uniform",
            "wbits=2",
            "abits=2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=40",
            "+trainer.limit_val_batches=2",
            "data.batch_size=256",
            "integer_check_images=1000",
        )
    )
    assert metrics["data"] == "cifar10"
    assert metrics["prediction_agreement"] == 1.0 and metrics["checked_images"] == 1000
    assert metrics["test_images"] == 10000  # test_acc: the whole split, whatever is checked
    assert metrics["test_acc"] > 0.15  # 40 steps already beat chance (0.54)


def cfg_path(cfg):
    from pathlib import Path

    return Path(cfg.output_dir)


def _found_for_tiny(tmp_path):
    """A found.json for resnet_tiny's five searched layers, as a search would write it."""
    from edmips.cost import layers as cost_layers
    from edmips.models import create_model
    from edmips.nn import default_searched

    model = create_model("resnet_tiny", num_classes=10)
    names = default_searched(model)
    costs = [c for c in cost_layers.measure(model, (3, 32, 32)) if c.name in names]
    found = arch.build(
        "resnet_tiny",
        {"wbits": [1, 2, 3, 4], "abits": [2, 3, 4]},
        costs,
        [1, 4, 2, 3, 4],
        [2, 4, 3, 2, 4],
        mu=0.01,
        data="synthetic",
    )
    return arch.save(found, tmp_path / "search" / "found.json")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("arch=uniform", "wbits=9"), "unsupported bit-width 9"),
        (("arch=uniform", "init=search"), "init=search needs an arch file"),
        (("arch=uniform", "init=pretrained"), "init must be one of scratch, search, float"),
    ],
)
def test_bad_retrain_settings_are_refused_before_training(retrain_cfg, overrides, message):
    cfg = retrain_cfg(*overrides)
    with pytest.raises(ValueError, match=message):
        retrain(cfg)
    assert not cfg_path(cfg).exists()


def test_a_missing_dataset_path_is_named_before_anything_is_written(retrain_cfg, tmp_path):
    cfg = retrain_cfg("data=cifar10", f"data.path={tmp_path}/nowhere", "arch=uniform")
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        retrain(cfg)
    assert not (cfg_path(cfg) / "metrics.json").exists()


def test_arch_random_is_a_seeded_allocation_within_one_percent_of_the_budget(retrain_cfg):
    def found(seed):
        cfg = retrain_cfg("model=resnet8", "arch=random", "target_bits=2.5", f"seed={seed}")
        return resolve_arch(cfg, check_retrain(cfg), build_datamodule(cfg))[1]

    first, again, other = found(0), found(0), found(1)
    assert abs(first.equivalent_bits - 2.5) <= 0.025
    assert first.bits() == again.bits() and first.bits() != other.bits()
    assert first.extra["target_bits"] == 2.5


def test_arch_random_without_a_budget_is_refused(retrain_cfg):
    with pytest.raises(ValueError, match="arch=random needs a budget: add target_bits=B"):
        retrain(retrain_cfg("arch=random"))
