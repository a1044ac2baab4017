"""quant=qatsim and quant=learned through the programs: a search over the family's bit-widths,
the retrain of what it found, and an integer export that agrees exactly; the records name the
quantizers the run built."""

import logging

import numpy as np
import pytest
import torch

from edmips.export.cli import main as export_main
from edmips.programs.retrain import retrain
from edmips.programs.search import search
from edmips.records import arch

MEMBERS = {"qatsim": {"ema_relu", "maxabs", "ema"}, "learned": {"lsq", "maxabs", "lsq_signed"}}


@pytest.mark.parametrize("family", sorted(MEMBERS))
def test_a_family_searches_retrains_and_exports_exactly(search_cfg, retrain_cfg, family, tmp_path):
    space = ["space.wbits=[2,3,4]", "space.abits=[2,3,4]", "target_bits=3"]
    cfg = search_cfg(f"quant={family}", *space)
    search(cfg)
    found = arch.load(tmp_path / "found.json")
    assert {layer.wquant for layer in found.layers} == {"maxabs"}
    assert {layer.aquant for layer in found.layers} <= MEMBERS[family] | {"image"}

    run = retrain_cfg(f"arch={tmp_path / 'found.json'}", f"quant={family}")
    run.output_dir = str(tmp_path / "retrain")
    metrics = retrain(run)
    assert metrics["prediction_agreement"] == metrics["qdq_agreement"] == 1.0
    state = torch.load(tmp_path / "retrain" / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(
        k.endswith("running_max" if family == "qatsim" else ".step") for k in state["state_dict"]
    )
    used = arch.load(tmp_path / "retrain" / "arch.json")
    pairs = [(layer.wquant, layer.aquant) for layer in used.layers]
    assert pairs == [(layer.wquant, layer.aquant) for layer in found.layers]
    # The checkpoint alone rebuilds the same family's network: the same integers.
    export_main([str(tmp_path / "retrain"), "--out", str(tmp_path / "again")])
    first = np.load(tmp_path / "retrain" / "integer" / "arrays.npz")
    again = np.load(tmp_path / "again" / "integer" / "arrays.npz")
    assert sorted(first) == sorted(again) and all(np.array_equal(first[k], again[k]) for k in first)


def test_a_retrain_in_another_family_records_what_it_built_and_says_so(
    search_cfg, retrain_cfg, tmp_path, caplog
):
    search(search_cfg("quant=learned", "space.wbits=[2,3,4]", "target_bits=3"))
    run = retrain_cfg(f"arch={tmp_path / 'found.json'}")  # quant=edmips, the default
    run.output_dir = str(tmp_path / "retrain")
    with caplog.at_level(logging.WARNING):
        retrain(run)
    used = arch.load(tmp_path / "retrain" / "arch.json")
    assert {layer.wquant for layer in used.layers} == {"gauss"}
    assert any("names the quantizers" in r.message and "gauss" in r.message for r in caplog.records)
