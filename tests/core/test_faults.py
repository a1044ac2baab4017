"""A fault at every phase of a tiny search and a tiny retrain leaves the run finished or stopped,
and a stopped run resumes to the result and logs of a run never stopped.

Each run is a fork of the test process (torch and Lightning imported once) running the entry
point, Hydra included, which signals itself as it enters the phase: SIGKILL, which nothing can
answer, or SIGTERM. Either the run has finished (its result file equal to the uninterrupted
run's), or it has stopped: no result file, its checkpoint, after SIGTERM status 143 and the
`resume=` line, and after `resume=` the uninterrupted run's result and logs/metrics.csv, row
for row.
"""

import csv
import json
import os
import runpy
import shutil
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

import edmips.export
import edmips.export.verify
import edmips.programs.search
import edmips.records.arch
import edmips.records.history
import edmips.records.metrics
from edmips.core.classifier import Classifier
from edmips.retrain.module import RetrainModule
from edmips.search.module import SearchModule

TINY = [
    "model=resnet_tiny",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "data.num_train=300",
    "data.val_size=100",
    "data.num_test=100",
    "data.batch_size=100",
]
SIGNALS = (signal.SIGKILL, signal.SIGTERM)


def _in_last_epoch(module, *args) -> bool:
    return module.current_epoch == 1


def _always(*args) -> bool:
    return True


# phase: (where it starts, the function, when the call is the phase's)
PHASES = {
    "search.py": {
        "training": (SearchModule, "training_step", _in_last_epoch),
        "validation": (Classifier, "validation_step", _in_last_epoch),
        "test": (Classifier, "test_step", _always),
        "writing": (edmips.records.history, "save", _always),
        "result": (edmips.records.arch, "save", lambda arch, path: Path(path).name == "found.json"),
    },
    "retrain.py": {
        "training": (RetrainModule, "training_step", _in_last_epoch),
        "validation": (Classifier, "validation_step", _in_last_epoch),
        "export": (edmips.export, "save_bundle", _always),
        "integer check": (edmips.export.verify, "_count", _always),
        "result": (edmips.records.metrics, "save", _always),
    },
}
RESULT = {"search.py": "found.json", "retrain.py": "metrics.json"}


def _signal_at(owner, name, when, sig) -> None:
    """Make owner.name send `sig` to this process before it runs, on the calls `when` picks."""
    original = getattr(owner, name)

    def signalled(*args, **kwargs):
        if when(*args, **kwargs):
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    setattr(owner, name, signalled)


def run(script: str, *args, log: Path, fault=None) -> int:
    """The entry point's exit status in a forked process (-9: killed), its output in `log`;
    fault: (phase, signal)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 1
        try:
            out = open(log, "w", buffering=1)  # noqa: SIM115 - the child's, to its end
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out  # pytest's capture, in the parent, is not the child's
            torch.set_num_threads(1)  # no OpenMP pool in a forked child
            # The figures are drawn (slowly) from what found.json holds: not a phase of their own.
            edmips.programs.search.write_search_figures = lambda *a, **k: []
            if fault is not None:
                phase, sig = fault
                _signal_at(*PHASES[script][phase], sig)
            sys.argv = [str(ROOT / script), *args]
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as e:  # as the interpreter answers it: a message is printed, status 1
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def result(run_dir: Path, script: str) -> dict:
    """The result file's values, its wall time aside."""
    values = json.loads((run_dir / RESULT[script]).read_text())
    values.pop("wall_time_s")
    return values


def log_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted search, and a retrain of what it found (from a copy: arch.json)."""
    root = tmp_path_factory.mktemp("whole")
    search = root / "search"
    assert run("search.py", *TINY, f"hydra.run.dir={search}", log=root / "search.txt") == 0
    arch = root / "arch.json"
    shutil.copy(search / "found.json", arch)
    retrain = root / "retrain"
    args = [*TINY, f"arch={arch}", "integer_check_images=20"]
    assert run("retrain.py", *args, f"hydra.run.dir={retrain}", log=root / "retrain.txt") == 0
    return {"search.py": search, "retrain.py": retrain, "arch": arch, "args": args}


def _args(whole, script: str) -> list[str]:
    return TINY if script == "search.py" else whole["args"]


def _phases():
    return [(script, phase) for script in PHASES for phase in PHASES[script]]


@pytest.mark.parametrize(("script", "phase"), _phases())
def test_a_fault_leaves_a_finished_or_a_resumable_run(whole, tmp_path, script, phase):
    found = whole["arch"].read_text()
    for sig in SIGNALS:
        what = f"{script} {signal.Signals(sig).name} at {phase}"
        run_dir = tmp_path / sig.name
        args = [*_args(whole, script), f"hydra.run.dir={run_dir}"]
        rc = run(script, *args, log=tmp_path / "stopped.txt", fault=(phase, sig))
        said = (tmp_path / "stopped.txt").read_text()
        if sig == signal.SIGTERM and phase == "result":  # it lets the result be written
            assert rc == 0, f"{what}: {said[-2000:]}"
            assert result(run_dir, script) == result(whole[script], script), what
            continue
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 143), f"{what}: {said[-2000:]}"
        assert not (run_dir / "found.json").exists() and not (run_dir / "metrics.json").exists()
        assert (run_dir / "checkpoints" / "last.ckpt").exists(), what
        if sig == signal.SIGTERM:
            assert f"stopped by SIGTERM: continue the run with resume={run_dir}" in said, what

        # The arch file edited meanwhile: the resumed retrain trains what it started with.
        edited = found.replace('"wbits": 2', '"wbits": 4')
        assert edited != found
        whole["arch"].write_text(edited)
        resumed = [*_args(whole, script), f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'r'}"]
        rc = run(script, *resumed, log=tmp_path / "resumed.txt")
        whole["arch"].write_text(found)
        assert rc == 0, f"{what}, resumed: {(tmp_path / 'resumed.txt').read_text()[-2000:]}"
        assert result(run_dir, script) == result(whole[script], script), what
        assert log_rows(run_dir) == log_rows(whole[script]), what
        if script == "search.py":
            history = json.loads((run_dir / "history.json").read_text())
            assert history == json.loads((whole[script] / "history.json").read_text()), what


def test_a_refused_run_leaves_the_record_of_the_run_it_was_given_as_it_was(whole, tmp_path):
    record = whole["search.py"] / ".hydra"
    assert OmegaConf.load(record / "overrides.yaml") == TINY  # written once the run started
    before = {p.name: p.read_text() for p in record.iterdir()}
    args = [*TINY, "seed=1", f"hydra.run.dir={whole['search.py']}"]
    assert run("search.py", *args, log=tmp_path / "refused.txt") == 1
    said = (tmp_path / "refused.txt").read_text().strip().splitlines()
    assert said[-1].startswith("error: ") and "holds another run" in said[-1]
    assert {p.name: p.read_text() for p in record.iterdir()} == before
