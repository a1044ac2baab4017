"""Every program that writes a run goes through one lifecycle (edmips/core/rundir.py): refused
before its first write and then leaving nothing, one run per directory and per sweep directory,
a SIGTERM answered with a line; ptq.py as search.py and retrain.py. Also `python -m edmips
export --out`, which never writes over a folder's files.

The entry points run in this process as `python script.py` runs them (runpy, Hydra's command
line and its run directory included); the SIGTERM cases in a fork of it (test_faults.run).
"""

import fcntl
import logging
import os
import runpy
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hydra.core.global_hydra import GlobalHydra
from test_faults import run as run_forked

import edmips.export
import edmips.ptq.stats
from edmips.export.cli import main as export_main
from edmips.models import create_model
from edmips.programs.ptq import ptq

TINY_PTQ = [
    "model=resnet_tiny",
    "arch=uniform",
    "data.num_train=300",
    "data.val_size=100",
    "data.num_test=50",
    "calibration.images=8",
    "integer_check_images=20",
]


@pytest.fixture
def float_weights(tmp_path) -> Path:
    """A resnet_tiny's float state dict (untrained: what ptq does with it is not the point)."""
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save(create_model("resnet_tiny", num_classes=10).state_dict(), path)
    return path


@pytest.fixture
def entry_point(monkeypatch, capsys):
    """Run an entry point script in this process: (exit status, its one line or None). Logging
    as Hydra configures it for a run ends with the call."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(script, *args):
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
        GlobalHydra.instance().clear()
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        except SystemExit as e:
            code = e.code
            return (code if isinstance(code, int) else int(code is not None)), code
        finally:
            capsys.readouterr()
        return 0, None

    yield call
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _earlier_run(run_dir: Path, *results: str) -> dict:
    """An earlier run's directory (finished or stopped): its files and Hydra's record of its
    command."""
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / name).write_text(f"# the first run's {name}\n")
    for name in results:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("the first run's")
    return snapshot(run_dir)


# 1 and 6: a ptq refused in a finished run's directory rewrites nothing there, and its refusal
# suggests no resume= (ptq.py has none).


@pytest.mark.parametrize(
    "results",
    [
        ("metrics.json", "arch.json", "model.onnx", "integer/manifest.json"),  # a ptq's
        ("metrics.json", "arch.json", "checkpoints/last.ckpt", "retrain.log"),  # a retrain's
    ],
)
def test_a_refused_ptq_leaves_the_finished_run_it_was_given_as_it_was(
    entry_point, tmp_path, float_weights, results
):
    run_dir = tmp_path / "finished"
    before = _earlier_run(run_dir, *results)
    args = [*TINY_PTQ, f"model.weights={float_weights}", f"hydra.run.dir={run_dir}"]
    status, line = entry_point("ptq.py", *args)
    assert status == 1 and line == (
        f"error: {run_dir}/metrics.json exists: {run_dir} holds another run; start in a new "
        "directory (hydra.run.dir=...)"
    )
    assert snapshot(run_dir) == before


def test_the_ptq_refusal_suggests_no_resume(ptq_cfg, float_weights, tmp_path):
    (tmp_path / "ptq").mkdir()
    (tmp_path / "ptq" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds another run; start in a new directory") as e:
        ptq(ptq_cfg(f"model.weights={float_weights}", *TINY_PTQ))
    assert "resume" not in str(e.value)


# 2 and 3: one ptq per directory; one sweep per sweep directory


def test_a_ptq_into_a_directory_another_process_runs_in_is_refused_before_writing(
    ptq_cfg, float_weights, tmp_path
):
    run_dir = tmp_path / "ptq"
    run_dir.mkdir()
    held = os.open(run_dir, os.O_RDONLY)  # as a ptq.py in another process holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError, match="another process is running this run"):
            ptq(ptq_cfg(f"model.weights={float_weights}", *TINY_PTQ))
    finally:
        os.close(held)
    assert not list(run_dir.iterdir())


@pytest.mark.parametrize("output", ["arch.json", "model.onnx", "integer", "calibration_stats.pt"])
def test_a_ptq_into_a_stopped_runs_directory_is_refused(ptq_cfg, float_weights, tmp_path, output):
    """A run stopped before its metrics.json (killed in its export, say) keeps its files."""
    run_dir = tmp_path / "ptq"
    before = _earlier_run(run_dir, f"{output}/manifest.json" if output == "integer" else output)
    with pytest.raises(ValueError, match=f"{output} exists: .* holds another run"):
        ptq(ptq_cfg(f"model.weights={float_weights}", *TINY_PTQ))
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("script", "args", "first"),
    [  # 2: a ptq sweep stopped in its first run (no metrics.json); 3: a finished retrain sweep
        ("ptq.py", [*TINY_PTQ, "model.weights={weights}"], ("model.onnx", "integer/manifest.json")),
        ("retrain.py", ["model=resnet_tiny", "arch=uniform"], ("metrics.json", "retrain.log")),
    ],
)
def test_a_second_sweep_into_a_sweep_directory_is_refused_leaving_the_first_as_it_was(
    entry_point, tmp_path, float_weights, script, args, first
):
    args = [a.format(weights=float_weights) for a in args]
    sweep = tmp_path / "sweep"
    _earlier_run(sweep / "0", *first)
    (sweep / "multirun.yaml").write_text("# the first sweep's\n")
    before = snapshot(sweep)
    status, line = entry_point(script, "-m", *args, f"hydra.sweep.dir={sweep}")
    assert status == 1 and line == (
        f"error: hydra.sweep.dir: {sweep} holds another sweep (multirun.yaml): choose another "
        "hydra.sweep.dir"
    )
    assert snapshot(sweep) == before


# 4: export --out never writes over a folder's files


def test_export_out_refuses_a_folder_holding_files_before_reading_anything(tmp_path):
    out = tmp_path / "mine"
    (out / "integer").mkdir(parents=True)
    (out / "integer" / "notes.txt").write_text("the user's")
    (out / "model.onnx").write_text("the user's")
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "no_run_yet"), "--out", str(out)])
    assert str(e.value) == f"error: {out} holds files already: remove them or choose another --out"
    assert snapshot(out) == before


# 5: SIGTERM to ptq.py: a line, status 143, no result and no half-written file


def _signal_at(monkeypatch, owner, name) -> None:
    """owner.name, in the forked run, sends SIGTERM to its process before it runs."""
    original = getattr(owner, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)


def test_sigterm_in_its_export_stops_ptq_with_a_line_and_no_result(
    monkeypatch, tmp_path, float_weights
):
    _signal_at(monkeypatch, edmips.export, "save_bundle")
    run_dir = tmp_path / "run"
    args = [*TINY_PTQ, f"model.weights={float_weights}", f"hydra.run.dir={run_dir}"]
    assert run_forked("ptq.py", *args, log=tmp_path / "said.txt") == 143
    said = (tmp_path / "said.txt").read_text()
    assert "stopped by SIGTERM before its result (metrics.json): start ptq.py again" in said
    assert "resume=" not in said
    written = snapshot(run_dir)
    assert "metrics.json" not in written and not [p for p in written if p.endswith(".tmp")]
    assert "stopped by SIGTERM" in (run_dir / "ptq.log").read_text()  # accepted: its log
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()  # and Hydra's record


def test_sigterm_in_its_calibration_stops_ptq_with_a_line_leaving_nothing(
    monkeypatch, tmp_path, float_weights
):
    _signal_at(monkeypatch, edmips.ptq.stats, "gather")
    run_dir = tmp_path / "new" / "run"
    args = [*TINY_PTQ, f"model.weights={float_weights}", f"hydra.run.dir={run_dir}"]
    assert run_forked("ptq.py", *args, log=tmp_path / "said.txt") == 143
    said = (tmp_path / "said.txt").read_text()
    assert "stopped by SIGTERM before it wrote anything: start ptq.py again" in said
    assert not (tmp_path / "new").exists()


# 7: a refused run leaves nothing in a directory it created


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("search.py", ["mu=abc"]),
        ("retrain.py", ["arch=missing.json"]),
        ("ptq.py", ["arch=uniform"]),  # no model.weights
        ("retrain.py", ["-m", "arch=missing.json,uniform"]),  # a sweep, refused at its first run
    ],
)
def test_a_refused_run_leaves_nothing_in_a_directory_it_created(
    entry_point, monkeypatch, tmp_path, script, args
):
    monkeypatch.chdir(tmp_path)
    key = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    status, line = entry_point(script, *args, "model=resnet_tiny", f"{key}=new/run")
    assert status == 1 and line.startswith("error: ")
    assert not list(tmp_path.iterdir())


def test_a_refused_run_leaves_the_empty_folder_it_was_given(entry_point, tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    status, _ = entry_point("ptq.py", "arch=uniform", f"hydra.run.dir={given}")
    assert status == 1 and given.is_dir() and not list(given.iterdir())
