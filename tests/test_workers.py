"""The suite's own setup: under pytest-xdist (pyproject's addopts), a worker and the processes
its tests start use its share of the cores, not a thread per core each."""

import os
import subprocess
import sys

import pytest
import torch


def test_a_worker_and_what_it_starts_use_its_share_of_the_cores():
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        pytest.skip("not under pytest-xdist (-n 0): torch's own default")
    share = max(1, len(os.sched_getaffinity(0)) // int(workers))
    assert torch.get_num_threads() == share
    code = "import torch; print(torch.get_num_threads())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(share)
