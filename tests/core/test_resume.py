"""A search killed mid-run and resumed ends exactly as one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_faults import run

# Three epochs: the kill comes in the second, the first whose selectors move (after the
# warm-up epoch), and the resumed run trains two, its schedules carried over.
SEARCH = [
    "model=resnet_tiny",
    "trainer=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "data.num_train=300",
    "data.val_size=100",
    "data.num_test=100",
    "data.batch_size=100",
]


def _search(*args, cwd):
    return [sys.executable, str(ROOT / "search.py"), *args], {
        "cwd": cwd,
        "env": {**os.environ, "OMP_NUM_THREADS": "1"},
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.PIPE,
        "text": True,
    }


def _start_and_signal(run, sig, cwd):
    """Start a search into `run` and send `sig` once its first checkpoint is written."""
    cmd, kw = _search(*SEARCH, f"hydra.run.dir={run}", cwd=cwd)
    proc = subprocess.Popen(cmd, **kw)
    checkpoint = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate()
    return proc.returncode


def _found(run):
    found = json.loads((run / "found.json").read_text())
    return [(x["wbits"], x["abits"], x["probs_w"], x["probs_a"]) for x in found["layers"]]


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # The uninterrupted run, for reference: search.py in a fork of this process (no interpreter
    # to start); the killed and the resumed runs are processes of their own.
    assert run("search.py", *SEARCH, f"hydra.run.dir={whole}", log=tmp_path / "whole.txt") == 0

    rc = _start_and_signal(killed, signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL, "the search ended before it could be killed"
    assert not (killed / "found.json").exists()

    # Started again as a cluster job would be: same command line, plus resume=.
    cmd, kw = _search(
        *SEARCH, f"resume={killed}", f"hydra.run.dir={tmp_path / 'log'}", cwd=tmp_path
    )
    done = subprocess.run(cmd, **kw, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _found(killed) == _found(whole)
    history = json.loads((killed / "history.json").read_text())
    assert history == json.loads((whole / "history.json").read_text())
    assert len(history) == 4  # the start and three epochs


@pytest.mark.slow
def test_sigterm_ends_a_search_with_status_143_and_the_way_to_resume(tmp_path):
    run = tmp_path / "run"
    assert _start_and_signal(run, signal.SIGTERM, tmp_path) == 128 + signal.SIGTERM
    assert not (run / "found.json").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (
        f"stopped by SIGTERM: continue the run with resume={run}"
        in (run / "search.log").read_text()
    )
