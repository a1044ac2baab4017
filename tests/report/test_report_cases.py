"""Issue 32's cases: budgets of different costs kept apart and named with their cost and unit,
each network labelled by the allocation that made its arch file, a copied run counted once,
unknown kinds and numbers no float holds refused in one line naming the file, and the report
written into its own folder."""

import csv
import logging
import reprlib
import shutil

import pytest
from report_fakes import make_retrain_run, make_search_run

from edmips.report import collect
from edmips.report.cli import main
from edmips.report.summary import pareto_points, summarize

W, A = [1, 2, 2, 2, 3, 4], [2] * 6  # an allocation: what it is does not matter here
FILES = {"report.csv", "report.md", "summary.csv", "summary.md", "pareto.png"}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _rows(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["run_dir"]: r for r in csv.DictReader(f)}


def _retrain(run, seed=0, **fields):
    return make_retrain_run(run, W, A, seed=seed, test_acc=0.6 + seed / 100, **fields)


# -- 1. budgets of different costs ----------------------------------------------------------
def test_budgets_of_different_costs_are_kept_apart_and_named_with_cost_and_unit(tmp_path):
    for seed in (0, 1):  # target_bits=3 of the default cost, and of cost=weight_size
        _retrain(tmp_path / f"bitops-{seed}", seed, target_bits=3.0, arch_meta={"cost": "bitops"})
        _retrain(
            tmp_path / f"size-{seed}", seed, target_bits=3.0, arch_meta={"cost": "weight_size"}
        )
    _retrain(tmp_path / "mib", budget={"weight_size": "2MiB"}, target_bits=2.9)
    _retrain(
        tmp_path / "ms",
        budget={"latency_ms": 1.2},
        target_bits=1.2,
        latency_table="ms.csv",
        latency_ms=1.19,
    )
    make_retrain_run(tmp_path / "uniform", None, None, uniform=(3, 3), test_acc=0.55)
    runs = collect([tmp_path])
    rows = summarize(runs)
    assert [(r["budget"], r["network"], r["runs"]) for r in rows] == [
        ("BitOps 3 bits eq.", "searched", 2),
        ("BitOps 3 bits eq.", "uniform", 1),  # W3A3 spends 3 equivalent bits
        ("latency 1.2 ms", "searched", 1),
        ("weight size 2 MiB", "searched", 1),
        ("weight size 3 bits/weight", "searched", 2),
    ]
    budgets = {r.run_dir.rsplit("/", 1)[-1]: r.budget for r in runs}
    assert budgets["size-0"] == "weight size 3 bits/weight" and budgets["uniform"] == "uniform W3A3"
    # the Pareto plot's markers are the summary's groups
    points, _ = pareto_points(runs)
    assert len({p["budget"] for p in points if p["network"] == "searched"}) == 4


def test_a_search_names_every_budget_it_was_held_to(tmp_path):
    make_search_run(tmp_path / "size", W, A, target_bits=3.0, cost="weight_size", epochs=None)
    make_search_run(tmp_path / "bitops", W, A, target_bitops=2.5e7, cost="bitops", epochs=None)
    several = [  # as the search records target_bits=3 budget.weight_size=1200B
        {"budget": "target_bits=3", "cost": "bitops", "unit": "equivalent bits", "target": 3.0},
        {"budget": "budget.weight_size=1200B", "cost": "weight_size", "target": 2.1},
    ]
    make_search_run(
        tmp_path / "several",
        W,
        A,
        target_bits=3,
        budget={"weight_size": "1200B"},
        budgets=several,
        cost="bitops",
        epochs=None,
    )
    budgets = {r.run_dir.rsplit("/", 1)[-1]: r.budget for r in collect([tmp_path])}
    assert budgets == {
        "size": "weight size 3 bits/weight",
        "bitops": "BitOps 2.5e+07",
        "several": "BitOps 3 bits eq. + weight size 1200 B",
    }


def test_an_unknown_budget_key_is_one_line_naming_the_file(tmp_path, caplog):
    _retrain(tmp_path / "ok", target_bits=2.0)
    _retrain(tmp_path / "bad", budget={"flops": 3})
    with caplog.at_level(logging.WARNING):
        runs = collect([tmp_path])
    assert [r.run_dir for r in runs] == [str(tmp_path / "ok")]
    path = tmp_path / "bad" / "metrics.json"
    assert _warnings(caplog) == [
        f"skipped {path}: {path}: budget.flops is not a budget key "
        "(weight_size, activation_memory, latency_ms, bitops)"
    ]


# -- 2. the allocation that made the arch file ------------------------------------------------
def test_each_network_is_labelled_by_the_allocation_that_made_its_arch_file(tmp_path):
    at_2 = {"target_bits": 2.0}
    _retrain(tmp_path / "searched", **at_2)
    # retrain.py arch=<ptq run>/arch.json: its kind is "searched", its arch.json's sensitivity
    _retrain(tmp_path / "sens", **at_2, arch_meta={"kind": "sensitivity"})
    _retrain(tmp_path / "random", **at_2, kind="random")
    _retrain(tmp_path / "ptq-sens", **at_2, kind="ptq", allocation="sensitivity")
    _retrain(tmp_path / "ptq-old", **at_2, kind="ptq", arch_meta={"kind": "sensitivity"})
    make_retrain_run(tmp_path / "uniform", None, None, uniform=(2, 2), kind="uniform")
    runs = {r.run_dir.rsplit("/", 1)[-1]: (r.kind, r.network) for r in collect([tmp_path])}
    assert runs == {
        "searched": ("retrain", "searched"),
        "sens": ("retrain", "sensitivity"),
        "random": ("retrain", "random"),
        "ptq-sens": ("ptq", "sensitivity"),
        "ptq-old": ("ptq", "sensitivity"),  # older than `allocation`: its arch.json says
        "uniform": ("retrain", "uniform"),
    }
    networks = [(r["network"], r["runs"]) for r in summarize(collect([tmp_path]))]
    assert networks == [
        ("searched", 1),
        ("uniform", 1),
        ("random", 1),
        ("sensitivity", 1),
        ("ptq sensitivity", 2),
    ]


# -- 3. a copied run -------------------------------------------------------------------------
def test_a_copied_run_is_counted_once_with_one_line_naming_both(tmp_path, caplog):
    for seed in (0, 1):
        _retrain(tmp_path / "sweep" / str(seed), seed, target_bits=2.0)
    # the results of seed 0 at another seed are another run, not a copy
    make_retrain_run(tmp_path / "sweep" / "2", W, A, seed=2, test_acc=0.6, target_bits=2.0)
    shutil.copytree(tmp_path / "sweep" / "1", tmp_path / "backup" / "1")
    make_search_run(tmp_path / "search", W, A, target_bits=2.0, epochs=None)
    shutil.copytree(tmp_path / "search", tmp_path / "backup" / "search")
    with caplog.at_level(logging.WARNING):
        runs = collect([tmp_path])
    assert _warnings(caplog) == [
        f"{tmp_path / 'backup' / 'search'} and {tmp_path / 'search'} are copies of one run "
        "(same config, seed and results): counted once",
        f"{tmp_path / 'backup' / '1'} and {tmp_path / 'sweep' / '1'} are copies of one run "
        "(same config, seed and results): counted once",
    ]
    assert len(runs) == 1 + 3
    (row,) = summarize(runs)
    assert row["runs"] == 3


def test_runs_differing_only_in_their_config_are_not_copies(tmp_path, caplog):
    for lr in (0.1, 0.2):
        run = tmp_path / str(lr)
        _retrain(run, target_bits=2.0)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"optimizer:\n  lr: {lr}\n")
    with caplog.at_level(logging.WARNING):
        assert len(collect([tmp_path])) == 2
    assert _warnings(caplog) == []


# -- 4. unknown kinds ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, file, field",
    [
        ({"uniform": (2, 2), "kind": "banana"}, "metrics.json", "kind"),
        ({"kind": "ptq", "allocation": "banana"}, "metrics.json", "allocation"),
        ({"arch_meta": {"kind": "banana"}}, "arch.json", "kind"),
    ],
    ids=["kind", "allocation", "arch-kind"],
)
def test_an_unknown_kind_is_refused_in_one_line_naming_the_file(
    tmp_path, caplog, fields, file, field
):
    _retrain(tmp_path / "ok", target_bits=2.0)
    fields = dict(fields)
    uniform = fields.pop("uniform", None)
    make_retrain_run(tmp_path / "bad", None if uniform else W, A, uniform=uniform, **fields)
    with caplog.at_level(logging.WARNING):
        runs = collect([tmp_path])
    assert [r.run_dir for r in runs] == [str(tmp_path / "ok")]
    (warned,) = _warnings(caplog)
    assert warned.startswith(
        f"skipped {tmp_path / 'bad' / 'metrics.json'}: {tmp_path / 'bad' / file}: "
        f"{field}='banana' is not one of searched, "
    )
    assert "\n" not in warned


# -- 5. numbers no float holds ---------------------------------------------------------------
HUGE = "1" + "0" * 400  # an integer JSON reads exactly, and no float holds


@pytest.mark.parametrize(
    "file, old, new, field",
    [
        ("metrics.json", '"bitops": ', '"bitops": 1e400, "was": ', "bitops=inf"),
        ("metrics.json", '"bitops": ', f'"bitops": {HUGE}, "was": ', "bitops=1000"),
        ("metrics.json", '"model": ', '"budget": {"weight_size": 1e400}, "model": ', "budget."),
        ("arch.json", '"data"', f'"wall_time_s": {HUGE}, "data"', "wall_time_s=1000"),
    ],
    ids=["inf", "huge-integer", "inf-in-an-object", "arch.json"],
)
def test_a_number_no_float_holds_is_refused_in_one_line(tmp_path, caplog, file, old, new, field):
    for seed in (0, 1):
        _retrain(tmp_path / str(seed), seed, target_bits=2.0)
    path = tmp_path / "1" / file
    path.write_text(path.read_text().replace(old, new, 1))
    with caplog.at_level(logging.WARNING):
        assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    (warned,) = _warnings(caplog)
    assert warned.startswith(f"skipped {tmp_path / '1' / 'metrics.json'}: {path}: {field}")
    assert warned.endswith(" is not a finite number") and len(warned) < 400
    assert list(_rows(tmp_path / "out" / "report.csv")) == [str(tmp_path / "0")]


def test_a_found_json_with_a_number_no_float_holds_is_refused(tmp_path, caplog):
    make_search_run(tmp_path / "s", W, A, target_bits=2.0, epochs=None)
    _retrain(tmp_path / "r", target_bits=2.0)
    found = tmp_path / "s" / "found.json"
    found.write_text(found.read_text().replace('"data"', f'"wall_time_s": {HUGE},\n "data"'))
    with caplog.at_level(logging.WARNING):
        assert [r.kind for r in collect([tmp_path])] == ["retrain"]
    assert _warnings(caplog) == [
        f"skipped {found}: {found}: wall_time_s={reprlib.repr(int(HUGE))} is not a finite number"
    ]


# -- 6. where the report goes ----------------------------------------------------------------
def test_the_report_goes_into_its_own_folder_and_says_where(tmp_path, monkeypatch, capsys):
    _retrain(tmp_path / "runs" / "0", target_bits=2.0)
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"runs", "report"}  # nothing loose here
    assert {p.name for p in (tmp_path / "report").iterdir()} == FILES
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "report written to report/ (report.csv, report.md, summary.csv, summary.md, pareto.png)"
    )
    # an earlier report is the report's own: written over
    _retrain(tmp_path / "runs" / "1", 1, target_bits=2.0)
    assert main(["runs"]) == 0
    assert len(_rows(tmp_path / "report" / "report.csv")) == 2


def test_a_folder_the_report_did_not_write_is_refused(tmp_path, monkeypatch):
    _retrain(tmp_path / "runs" / "0", target_bits=2.0)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("mine")
    for out, argv in ((tmp_path / "results", ["--out", "results"]), (tmp_path, ["--out", "."])):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as e:
            main(["runs", *argv])
        assert str(e.value.code) == (
            f"error: {argv[1]}: not empty and not a report's folder (it holds "
            f"{'notes.txt' if out.name == 'results' else 'results'}); name a new or empty "
            "folder with --out"
        )
        assert not FILES & {p.name for p in out.iterdir()}
    assert (tmp_path / "results" / "notes.txt").read_text() == "mine"
