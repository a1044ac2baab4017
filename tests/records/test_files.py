"""Atomic writes: a folder written beside its place, then renamed; nothing left on failure."""

import json
import os
import stat

import pytest

from edmips.cost.layers import LayerCost
from edmips.records import arch, history
from edmips.records.files import check_dir, make_dir, write_dir_atomic, write_text_atomic


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


def _two_layer_search():
    costs = [LayerCost(f"l{i}", "conv", 100, 10, 10, ()) for i in range(2)]
    space = {"wbits": [1, 2], "abits": [2, 3, 4]}
    return arch.build("resnet8", space, costs, [1, 2], [2, 4], [[0.5] * 2] * 2, [[0.4] * 3] * 2)


def _entry(**changes):
    return {
        "epoch": 1,
        "mu": 0.1,
        "probs_w": [[0.5, 0.5]] * 2,
        "probs_a": [[0.2, 0.3, 0.5]] * 2,
        **changes,
    }


@pytest.mark.parametrize(
    "entry,message",
    [
        (_entry(val_acc="high"), "entry 1: val_acc='high' is not a fraction in [0, 1]"),
        (_entry(mu=[0.1]), "entry 1: mu=[0.1] is not a finite number"),
        (_entry(epoch=-2), "entry 1: epoch=-2 is not a non-negative integer"),
        (_entry(epoch=0), "entry 1: epoch 0 after epoch 0 (each epoch once, in order)"),
        (_entry(probs_w=[[0.5, 0.5]]), "entry 1: probs_w has 1 layers, the search's found.json 2"),
        (_entry(probs_a=[[0.5, 0.5]] * 2), "probs_a of layer 'l0' has 2 candidates, the search's"),
        (_entry(probs_w=[[0.5, "x"]] * 2), "entry 1: probs_w is not a list of probabilities"),
        (_entry(probs_a=None), "entry 1: probs_a is not a list of probabilities per layer"),
    ],
)
def test_a_history_is_checked_field_by_field_and_against_its_search(tmp_path, entry, message):
    path = tmp_path / "history.json"
    path.write_text(json.dumps([_entry(epoch=0), entry]))
    with pytest.raises(ValueError) as e:
        history.load(path, _two_layer_search())
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_history_with_nan_is_refused(tmp_path):
    path = tmp_path / "history.json"
    path.write_text('[{"epoch": 0, "val_acc": NaN}]')
    with pytest.raises(ValueError, match=r"history\.json: NaN is not a finite number$"):
        history.load(path)


def test_an_output_through_a_file_is_one_line_and_nothing_is_created(tmp_path):
    (tmp_path / "file").write_text("x")
    for make in (make_dir, check_dir):
        with pytest.raises(ValueError, match=f"^{tmp_path}/file/a/b: {tmp_path}/file is a file,"):
            make(tmp_path / "file" / "a" / "b")
    with pytest.raises(ValueError, match=f"^{tmp_path}/file is a file, not a directory$"):
        make_dir(tmp_path / "file")
    with pytest.raises(ValueError, match=f"^{tmp_path}/file/x.json: {tmp_path}/file is a file"):
        write_text_atomic(tmp_path / "file" / "x.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert make_dir(tmp_path / "new" / "dir").is_dir()
