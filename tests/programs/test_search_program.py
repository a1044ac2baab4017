"""End-to-end searches on the built-in data (CPU, tiny network)."""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import make_config

from edmips.export.cli import load_retrained
from edmips.models import create_model, list_models
from edmips.programs.retrain import check_matches, retrain
from edmips.programs.search import search
from edmips.quant.registry import get
from edmips.records import arch
from edmips.report import write_search_figures

FIGURES = ["bit_allocation.png", "sensitivity.png", "selector_evolution.png", "complexity.png"]


def test_search_writes_a_valid_found_json_and_its_records(search_cfg, tmp_path):
    result = search(search_cfg("mu=0.01"))
    found = arch.load(tmp_path / "found.json", known_models=list_models())
    assert found == result["arch"] and found.model == "resnet_tiny" and found.data == "synthetic"
    model = create_model("resnet_tiny", num_classes=10)
    from edmips.cost import layers as cost_layers
    from edmips.nn import default_searched

    names = default_searched(model)
    costs = [c for c in cost_layers.measure(model, (3, 32, 32)) if c.name in names]
    check_matches(found, "resnet_tiny", costs)
    for layer in found.layers:
        assert len(layer.probs_w) == 4 and len(layer.probs_a) == 3
        assert abs(sum(layer.probs_w) - 1) < 1e-5
    assert 0 <= found.val_acc <= 1
    assert 0 <= found.extra["test_acc"] <= found.extra["test_acc_top5"] <= 1
    assert found.extra["wall_time_s"] > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # the start, then each epoch trained
    assert history[0]["val_acc"] is None and history[0]["discrete_bits"] is None
    assert all(p == pytest.approx(1 / 4) for p in history[0]["probs_w"][0])  # selectors start at 0
    assert history[-1]["probs_w"] == [layer.probs_w for layer in found.layers]
    assert arch.load(tmp_path / "last.json").extra["epoch"] == 2
    for png in ("bit_allocation.png", "selector_evolution.png", "complexity.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "logs" / "metrics.csv").exists()  # logger=csv, the default


@pytest.mark.slow
def test_raising_mu_never_raises_the_bits_and_a_large_mu_takes_the_lowest(
    tmp_path, no_search_figures
):
    # A short search needs a larger architecture step than the paper's long ones.
    bits = []
    # resnet_tiny on 300 images: bits 3.02 > 1.43 > 1.41 (resnet8 on 600: 3.10 > 1.41 = 1.41;
    # seeds 1 and 2 alike), in a third of the time.
    small = ["data.num_train=300", "data.val_size=100", "data.num_test=100"]
    for mu in (0.0, 0.05, 0.5):
        overrides = [f"mu={mu}", "model=resnet_tiny", "trainer.max_epochs=3", *small]
        overrides.append("search.arch_optimizer.lr=0.1")
        found = search(make_config("search", tmp_path / f"mu={mu}", overrides))["arch"]
        bits.append(found.equivalent_bits)
    assert bits[0] >= bits[1] >= bits[2]
    assert bits[0] > bits[2]
    assert all(layer.wbits == 1 and layer.abits == 2 for layer in found.layers)


@pytest.mark.parametrize(
    "override,message",
    [
        ("mu=-1", "mu must be >= 0"),
        ("target_bits=9", "out of reach: the space spans 1.414 to 4.000"),
        ("space.wbits=[1,9]", "unsupported bit-width 9"),
        ("search.discretize=best", "unknown discretization 'best'"),
    ],
)
def test_bad_config_values_are_refused_with_one_line(search_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=message) as e:
        search(search_cfg(override))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "found.json").exists()


@pytest.mark.slow
def test_search_under_ddp_on_two_cpu_processes(tmp_path):
    """Two processes on the gloo backend, launched the way a user launches them. The module
    checks at the end that both ranks hold identical architecture parameters."""
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [
        sys.executable,
        str(ROOT / "search.py"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "model=resnet_tiny",
        "trainer.max_epochs=2",
        "data.num_train=600",
        "data.val_size=200",
        "data.num_test=200",
        "data.batch_size=100",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = arch.load(tmp_path / "found.json")
    assert found.extra["world_size"] == 2
    assert (tmp_path / "train_ddp_process_1.log").exists()  # the second rank ran
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 3  # the start and two epochs, written once, by rank zero


def test_a_search_of_signed_inputs_records_their_bits_and_retrains_exactly(
    search_cfg, retrain_cfg, tmp_path, no_search_figures
):
    small = ["model=tv_mobilenet_v2", "data.num_train=300", "data.val_size=100", "data.num_test=50"]
    search(search_cfg(*small, "space.sbits=[4,6,8]", "target_bits=3"))
    found = arch.load(tmp_path / "found.json")
    signed = [x for x in found.layers if get(x.aquant).signed]
    assert len(signed) == 17 and found.space["sbits"] == [4, 6, 8]
    assert all(len(x.probs_a) == 3 and x.abits in (4, 6, 8) for x in signed)
    assert found.equivalent_bits == pytest.approx(3, rel=0.01)  # their bits count in the budget

    # The search's figures, of a few of its layers, signed inputs among them (all 52: 9 s).
    keep = [i for i, x in enumerate(found.layers) if get(x.aquant).signed][:3] + [0, 1, 2]
    few = dataclasses.replace(found, layers=[found.layers[i] for i in keep])
    history = [
        {**h, **{k: [h[k][i] for i in keep] for k in ("probs_w", "probs_a")}}
        for h in json.loads((tmp_path / "history.json").read_text())
    ]
    drawn = write_search_figures(tmp_path / "figures", few, history)
    assert [p.name for p in drawn] == FIGURES and all(p.stat().st_size > 10_000 for p in drawn)

    run = retrain_cfg(*small, f"arch={tmp_path / 'found.json'}")
    metrics = retrain(run)
    assert metrics["prediction_agreement"] == metrics["qdq_agreement"] == 1.0
    model, _ = load_retrained(Path(run.output_dir))
    for x in signed:
        layer = model.get_submodule(x.name)
        assert layer.bit_config()[1] == x.abits
        assert (layer.input_quant is None) == (x.abits == 8)
