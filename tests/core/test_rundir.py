"""One run per directory, its per-epoch checkpoint, resume= and what it refuses; divergence."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from edmips.core.divergence import Diverged
from edmips.programs.retrain import retrain
from edmips.programs.search import search


@pytest.mark.parametrize("result", ["found.json", "history.json", "checkpoints/last.ckpt"])
def test_a_search_refuses_a_directory_holding_another_run(search_cfg, tmp_path, result):
    (tmp_path / result).parent.mkdir(exist_ok=True)
    (tmp_path / result).write_text("first run")
    with pytest.raises(ValueError, match=f"{result} exists: .* or continue that run with resume="):
        search(search_cfg())
    assert (tmp_path / result).read_text() == "first run"
    files = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [result]


def test_a_retrain_refuses_a_directory_holding_another_run(retrain_cfg, tmp_path):
    run = tmp_path / "retrain"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="metrics.json exists"):
        retrain(retrain_cfg("arch=uniform"))
    assert [p.name for p in run.iterdir()] == ["metrics.json"]


def test_one_search_one_checkpoint_resume_refusals(search_cfg, retrain_cfg, tmp_path):
    search(search_cfg("trainer.max_epochs=1", "search.warmup_epochs=0"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    stored = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert stored["edmips_config"]["program"] == "search"
    assert stored["edmips_config"]["config"]["trainer"]["max_epochs"] == 1
    with pytest.raises(ValueError, match="found.json exists: that run has finished"):
        search(search_cfg(f"resume={tmp_path}"))
    with pytest.raises(ValueError, match="last.ckpt: not a checkpoint of retrain.py"):
        retrain(retrain_cfg(f"resume={tmp_path}"))
    with pytest.raises(FileNotFoundError, match="nowhere/checkpoints/last.ckpt: no such"):
        (tmp_path / "nowhere").mkdir()
        search(search_cfg(f"resume={tmp_path / 'nowhere'}"))
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"junk.ckpt: not a checkpoint \("):
        search(search_cfg(f"resume={tmp_path / 'junk.ckpt'}"))


def test_a_diverging_search_stops_and_writes_nothing(search_cfg, tmp_path):
    with pytest.raises(Diverged, match=r"loss became non-finite at epoch 0 step \d+; the learn"):
        search(search_cfg("search.optimizer.lr=1e30"))
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_diverging_search_exits_non_zero_without_found_json(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "search.py"),
            "model=resnet_tiny",
            "trainer=cpu",
            "data.num_train=400",
            "data.val_size=100",
            "search.optimizer.lr=1e30",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: training diverged: the loss")
    assert not (tmp_path / "found.json").exists()


def test_runs_started_in_the_same_second_get_their_own_directories():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    dirs = []
    for name in ("search", "search", "retrain", "retrain"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(name, return_hydra_config=True)
        dirs += [cfg.hydra.run.dir, cfg.hydra.sweep.dir]
    assert len(set(dirs)) == len(dirs)  # microseconds in every name
