"""Atomic writes: a folder written beside its place, then renamed; nothing left on failure."""

import os
import stat

import pytest

from edmips.records import history
from edmips.records.files import write_dir_atomic


def _fill(tmp):
    (tmp / "a.txt").write_text("a\n")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700)])
def test_an_atomic_folder_gets_the_umasks_mode_and_replaces_the_old_one(tmp_path, umask, mode):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old\n")
    old = os.umask(umask)
    try:
        path = write_dir_atomic(tmp_path / "out", _fill)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in path.iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_folder_write_leaves_the_old_one_and_no_temporary(tmp_path):
    write_dir_atomic(tmp_path / "out", _fill)

    def fail(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomic(tmp_path / "out", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]


def test_history_round_trip_and_refusals(tmp_path):
    entries = [{"epoch": 0, "mu": 0.1, "probs_w": [[0.5, 0.5]]}, {"epoch": 1, "mu": 0.2}]
    path = history.save(entries, tmp_path / "history.json")
    assert history.load(path) == entries
    assert path.read_text().endswith("]\n")
    for text, reason in [
        ("{", "not a JSON history"),
        ('{"epoch": 0}', "expected a JSON list of epochs"),
        ('[{"epoch": 0}, {"mu": 1}]', "entry 1 is not an epoch"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"history.json: {reason}"):
            history.load(path)
