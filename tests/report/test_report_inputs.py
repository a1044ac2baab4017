"""What the report reads is validated before it writes anything; every run it leaves out, and
every mean it cannot take, is one warning line."""

import json
import logging

import pytest
from report_fakes import make_retrain_run, make_search_run

from edmips.report.cli import main

BITS = [1, 2, 2, 2, 3, 4]


def _retrain(run, **metrics):
    return make_retrain_run(run, BITS, [2] * 6, kind="random", target_bits=2.0, **metrics)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_bad_values_leave_their_run_out_with_one_line_each(tmp_path, caplog):
    for seed, acc in enumerate((0.6, 0.62, 0.64)):
        _retrain(tmp_path / f"r{seed}", test_acc=acc, seed=seed)
    nan = tmp_path / "r0" / "metrics.json"
    nan.write_text(nan.read_text().replace('"test_acc": 0.6', '"test_acc": NaN'))
    _retrain(tmp_path / "text", test_acc="0.7")
    _retrain(tmp_path / "untested", test_acc=None)
    _retrain(tmp_path / "older", test_acc=0.66, activation_bits_total=None)
    with caplog.at_level(logging.WARNING):
        assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    warned = _warnings(caplog)
    assert f"skipped {nan}: {nan}: test_acc=nan is not a finite number" in warned
    assert any(w.startswith(f"skipped {tmp_path / 'text' / 'metrics.json'}: ") for w in warned)
    assert f"{tmp_path / 'untested'}: no test accuracy, left out of the summary" in warned
    assert (
        "BitOps 2 bits eq. random: no mean activation_bits, 1 of 3 runs do not record it: "
        f"{tmp_path / 'older'}"
    ) in warned
    assert len(warned) == 4 and all("\n" not in w for w in warned)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "nan" not in summary and "| 3 |" in summary  # r1, r2 and older are averaged
    assert "0.64" in summary  # the mean of 0.62, 0.64 and 0.66


def test_a_damaged_history_draws_no_figures_for_its_run_and_nothing_half_written(tmp_path, caplog):
    make_search_run(tmp_path / "good", [2] * 6, [2] * 6, target_bits=2.0, val_acc=0.6)
    make_search_run(tmp_path / "cut", [2] * 6, [2] * 6, target_bits=2.0, val_acc=0.5)
    history = tmp_path / "cut" / "history.json"
    history.write_text(history.read_text()[:200])  # a history.json cut short
    with caplog.at_level(logging.WARNING):
        assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--figures"]) == 0
    warned = _warnings(caplog)
    assert len(warned) == 1 and warned[0].startswith(
        f"no figures for {tmp_path / 'cut'}: {history}: not a JSON history ("
    )
    assert (tmp_path / "good" / "complexity.png").exists()
    assert not list((tmp_path / "cut").glob("*.png"))
    assert (tmp_path / "out" / "report.csv").exists()


def test_a_history_of_another_search_is_named(tmp_path, caplog):
    make_search_run(tmp_path / "run", [2] * 6, [2] * 6)
    history = tmp_path / "run" / "history.json"
    entries = json.loads(history.read_text())
    entries[2]["probs_a"] = entries[2]["probs_a"][:5]
    history.write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        main([str(tmp_path), "--out", str(tmp_path / "out"), "--figures"])
    assert _warnings(caplog) == [
        f"no figures for {tmp_path / 'run'}: {history}: entry 2: probs_a has 5 layers, the "
        "search's found.json 6"
    ]


def test_an_out_through_a_file_is_one_line_and_nothing_is_written(tmp_path):
    make_search_run(tmp_path / "run", [2] * 6, [2] * 6)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "run"), "--out", str(tmp_path / "file" / "out"), "--figures"])
    assert str(e.value.code) == (
        f"error: {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a directory"
    )
    assert not list((tmp_path / "run").glob("*.png"))
