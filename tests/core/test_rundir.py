"""One run per directory, its per-epoch checkpoint, resume= and what it refuses; divergence."""

import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from edmips.core import rundir
from edmips.core.divergence import Diverged
from edmips.export.cli import main as export_main
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


def test_a_second_process_on_a_run_directory_is_refused_at_start(search_cfg, tmp_path):
    held = os.open(tmp_path, os.O_RDONLY)  # as a run in another process holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError, match="another process is running this run"):
            search(search_cfg())
    finally:
        os.close(held)
    assert not list(tmp_path.iterdir())


def _stopped_search(search_cfg, tmp_path) -> Path:
    """A one-epoch search's checkpoint, its run made resumable again (found.json removed)."""
    search(search_cfg("trainer.max_epochs=1", "search.warmup_epochs=0"))
    (tmp_path / "found.json").unlink()
    return tmp_path / "checkpoints" / "last.ckpt"


def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(search_cfg, tmp_path):
    ckpt = _stopped_search(search_cfg, tmp_path)
    data = ckpt.read_bytes()
    for offset in range(0, len(data), len(data) // 12):  # EOF, zip and OSError (EINVAL) cuts
        cut = tmp_path / "cut" / "checkpoints" / "last.ckpt"
        cut.parent.mkdir(parents=True, exist_ok=True)
        cut.write_bytes(data[:offset])
        with pytest.raises(ValueError, match=rf"{cut}: not a checkpoint \("):
            search(search_cfg(f"resume={cut.parent.parent}"))
        with pytest.raises(SystemExit, match=rf"^error: {cut}: not a checkpoint \("):
            export_main([str(cut)])

    state = torch.load(ckpt, weights_only=False)
    name = next(k for k in state["state_dict"] if k.endswith("conv1.weight"))
    state["state_dict"][name] = torch.zeros(3)  # another network's tensor
    other = tmp_path / "other" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    torch.save(state, other)
    with pytest.raises(ValueError, match=rf"weights of another network .* first: {name}\)"):
        search(search_cfg(f"resume={other}"))
    assert [p.name for p in other.parent.parent.rglob("*")] == ["checkpoints", "last.ckpt"]

    held = os.open(tmp_path, os.O_RDONLY)  # the run resumed by another process
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError, match="another process is running this run"):
            search(search_cfg(f"resume={tmp_path}"))
    finally:
        os.close(held)


def test_a_resume_after_the_last_epoch_restores_what_the_epochs_set(search_cfg, tmp_path):
    whole = search(search_cfg("trainer.max_epochs=2", "search.warmup_epochs=0"))
    (tmp_path / "found.json").unlink()  # as if it had been killed after its last epoch
    resumed = search(search_cfg(f"resume={tmp_path}"))
    assert resumed["val_acc"] == whole["val_acc"] is not None
    assert resumed["arch"].layers == whole["arch"].layers  # the probabilities at its sharpness
    assert float(resumed["module"].layers[0][1].sharpness) == 10.0


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (["data.batch_size=1000"], "data.batch_size=1000 is more than the training split"),
        (["data.num_test=0"], "data.num_test must be >= 1, got 0"),
        (["model=torchvision", "model.name=tv_convnext_tiny"], "integer lowering for layer_norm"),
        (["model=torchvision", "model.name=tv_vit_b_16"], "tv_vit_b_16 needs 224x224 images"),
    ],
)
def test_what_the_data_and_the_export_cannot_do_is_refused_before_training(
    retrain_cfg, tmp_path, overrides, refusal
):
    with pytest.raises(ValueError, match=refusal):
        retrain(retrain_cfg("arch=uniform", "wbits=4", "abits=4", *overrides))
    assert not (tmp_path / "retrain").exists() or not list((tmp_path / "retrain").iterdir())


def test_a_search_without_training_batches_is_refused(search_cfg, tmp_path):
    with pytest.raises(ValueError, match="data.batch_size=401 is more than the training split"):
        search(search_cfg("data.batch_size=401"))
    assert not list(tmp_path.iterdir())


def test_the_run_log_holds_its_records_until_the_run_is_accepted(tmp_path):
    path = tmp_path / "run.log"
    handler = rundir.RunLog(str(path))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_run_log")
    logger.addHandler(handler)
    try:
        logger.warning("before")
        assert not path.exists()  # a run refused now writes no log
        handler.open_log()
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.read_text() == "WARNING before\nWARNING after\n"


def test_a_sweeps_refused_run_removes_its_own_folder_only(tmp_path):
    made = rundir._HydraMade()
    sweep = tmp_path / "multirun" / "sweep"
    made.note(str(sweep), str(sweep / "multirun.yaml"))  # before Hydra creates any of it
    (sweep / "1").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("the sweep's")
    (sweep / "0").mkdir()
    (sweep / "0" / "metrics.json").write_text("{}")
    made.accepted(sweep / "0")
    made.remove(sweep / "1")  # its second run, refused
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    made.remove(sweep / "0")  # accepted: kept, as the record of the sweep that ran
    made.remove(tmp_path / "elsewhere")  # not a run of this sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
