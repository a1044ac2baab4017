"""python -m edmips rediscretize: any epoch of a finished search, discretized again."""

import json

import pytest

from edmips.programs.search import search
from edmips.records import arch
from edmips.search.rediscretize import main


def test_rediscretize_any_epoch_of_a_search(search_cfg, tmp_path):
    search(search_cfg("trainer.max_epochs=2"))
    found = arch.load(tmp_path / "found.json")

    # The last epoch, winner-take-all: exactly what the search wrote.
    again = arch.load(main([str(tmp_path), "--epoch", "2", "--out", str(tmp_path / "e2.json")]))
    assert again.bits() == found.bits() and again.layers == found.layers
    assert again.extra["epoch"] == 2 and again.extra["discretization"] == "argmax"

    # The start: equal selectors, the first candidate of each.
    start = arch.load(main([str(tmp_path), "--epoch", "0", "--out", str(tmp_path / "e0.json")]))
    assert {(x.wbits, x.abits) for x in start.layers} == {(1, 2)}

    # Budget: the most probable architecture at the requested equivalent bit-width.
    out = tmp_path / "b3.json"
    budget = arch.load(
        main(
            [
                str(tmp_path),
                "--epoch",
                "1",
                "--discretize",
                "budget",
                "--target-bits",
                "3",
                "--out",
                str(out),
            ]
        )
    )
    assert budget.equivalent_bits == pytest.approx(3, rel=0.01)

    history = json.loads((tmp_path / "history.json").read_text())
    sampled = arch.load(
        main(
            [
                str(tmp_path),
                "--epoch",
                "1",
                "--discretize",
                "multinomial",
                "--trials",
                "5",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
    )
    assert [x.probs_w for x in sampled.layers] == history[1]["probs_w"]

    with pytest.raises(SystemExit, match=r"history.json: no epoch 7 \(it has 0..2\)$"):
        main([str(tmp_path), "--epoch", "7", "--out", str(tmp_path / "e7.json")])
    with pytest.raises(SystemExit, match="found.json: exists; choose a new file"):
        main([str(tmp_path), "--epoch", "1", "--out", str(tmp_path / "found.json")])
    with pytest.raises(SystemExit, match="needs --target-bits"):
        main([str(tmp_path), "--epoch", "1", "--discretize", "budget", "--out", str(out) + "x"])
    budget = [str(tmp_path), "--epoch", "1", "--discretize", "budget", "--out", str(out) + "y"]
    for target in ("0.5", "100", "-3", "nan", "inf"):  # the space spans 1.414 to 4 bits
        with pytest.raises(SystemExit, match=r"^error: target of .* is out of reach: the space"):
            main([*budget, "--target-bits", target])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"^error: .*file/a\.json: .*file is a file, not a dir"):
        main([str(tmp_path), "--epoch", "1", "--out", str(tmp_path / "file" / "a.json")])
    assert arch.load(tmp_path / "found.json") == found and not (tmp_path / "e7.json").exists()
    assert not list(tmp_path.glob("*.jsony"))

    # A history of another search (one layer fewer) is refused naming the file.
    history[1]["probs_w"] = history[1]["probs_w"][1:]
    (tmp_path / "history.json").write_text(json.dumps(history))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--epoch", "2", "--out", str(tmp_path / "other.json")])
    assert str(e.value).startswith(f"error: {tmp_path / 'history.json'}: entry 1: probs_w has ")
    assert "\n" not in str(e.value) and not (tmp_path / "other.json").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epoch", "0"], "found.json: no such file"),
        (["--epoch", "0", "--trials", "0"], "--trials must be >= 1"),
        (["--epoch", "0", "--seed", "-1"], "--seed must be in 0 .. 4294967295, got -1"),
    ],
)
def test_rediscretize_bad_input(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main([str(tmp_path), *args, "--out", str(tmp_path / "a.json")])
    assert not (tmp_path / "a.json").exists()


def test_rediscretize_a_file_named_as_the_run(tmp_path):
    """Issue 32's fuzz round: a file (the run's found.json) named as the run was a traceback."""
    (tmp_path / "found.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "found.json"), "--epoch", "1", "--out", str(tmp_path / "a.json")])
    assert str(e.value) == (
        f"error: {tmp_path / 'found.json'}: a file, not a search run: name the folder holding "
        "found.json and history.json"
    )
    assert not (tmp_path / "a.json").exists()
