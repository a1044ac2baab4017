"""A search killed mid-run and resumed ends exactly as one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import QUICK_SYNTHETIC, ROOT

SEARCH = [
    "model=resnet_tiny",
    "trainer=cpu",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    *QUICK_SYNTHETIC,
]


def _search(*args, cwd):
    return [sys.executable, str(ROOT / "search.py"), *args], {
        "cwd": cwd,
        "env": {**os.environ, "OMP_NUM_THREADS": "1"},
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.PIPE,
        "text": True,
    }


def _found(run):
    found = json.loads((run / "found.json").read_text())
    return [(x["wbits"], x["abits"], x["probs_w"], x["probs_a"]) for x in found["layers"]]


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd, kw = _search(*SEARCH, f"hydra.run.dir={whole}", cwd=tmp_path)
    assert subprocess.run(cmd, **kw, timeout=300).returncode == 0

    cmd, kw = _search(*SEARCH, f"hydra.run.dir={killed}", cwd=tmp_path)
    proc = subprocess.Popen(cmd, **kw)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed"
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
    assert len(history) == 5  # the start and four epochs
