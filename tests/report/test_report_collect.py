import csv
import logging
import statistics
import subprocess
import sys

import pytest
from matplotlib.image import imread
from report_fakes import make_retrain_run, make_search_run

from edmips.report import ReportError, collect, write_report
from edmips.report.cli import main
from edmips.report.collect import COLUMNS
from edmips.report.costs import AXES
from edmips.report.summary import pareto_points, summarize

SEARCHES = [  # (wbits, abits, meta)
    ([1, 1, 2, 2, 3, 3], [2, 2, 2, 3, 3, 4], {"mu": 0.04, "val_acc": 0.55, "test_acc": 0.54}),
    ([2, 2, 2, 2, 4, 4], [2, 3, 3, 3, 4, 4], {"mu": 0.01, "val_acc": 0.62, "test_acc": 0.6}),
    ([2, 1, 2, 2, 4, 4], [2, 2, 3, 3, 4, 4], {"mu": 0.3, "target_bits": 2.0, "val_acc": 0.58}),
]


@pytest.fixture
def sweep(tmp_path):
    """A search sweep (3 runs), a retrain sweep (2) and a uniform-baseline sweep (2)."""
    root = tmp_path / "multirun"
    found = [
        make_search_run(root / "search" / str(i), w, a, **meta)
        for i, (w, a, meta) in enumerate(SEARCHES)
    ]
    (root / "search" / "multirun.yaml").write_text("hydra: {}\n")
    metrics = [
        make_retrain_run(root / "retrain" / "0", *SEARCHES[0][:2], mu=0.04, test_acc=0.71),
        make_retrain_run(
            root / "retrain" / "1",
            *SEARCHES[2][:2],
            target_bits=2.0,
            mu=0.3,
            test_acc=0.73,
            test_acc_integer=None,
        ),
        make_retrain_run(root / "uniform" / "0", None, None, uniform=(2, 2), test_acc=0.69),
        make_retrain_run(root / "uniform" / "1", None, None, uniform=(4, 4), test_acc=0.8),
    ]
    return root, found, metrics


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_sweep_becomes_one_row_per_run(sweep, tmp_path, capsys):
    root, found, metrics = sweep
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0
    rows = _rows(out / "report.csv")
    assert list(rows[0]) == [c for c in COLUMNS if c != "latency_ms"]  # no run measured one
    assert [r["kind"] for r in rows] == ["search"] * 3 + ["retrain"] * 4

    search = {r["run_dir"]: r for r in rows[:3]}
    assert set(search) == {str(root / "search" / str(i)) for i in range(3)}
    for i, a in enumerate(found):
        r = search[str(root / "search" / str(i))]
        assert float(r["equivalent_bits"]) == pytest.approx(a.equivalent_bits)
        assert int(r["bitops"]) == a.bitops
        assert int(r["weight_bits"]) == a.weight_bits_total
        assert int(r["activation_bits"]) == a.activation_bits_total
        assert float(r["micronet_score"]) == pytest.approx(a.micronet_score)
        assert float(r["val_acc"]) == a.val_acc
        assert (r["model"], r["data"], r["test_acc_integer"], r["agreement"]) == (
            "resnet8",
            "synthetic",
            "",
            "",
        )
    assert [search[str(root / "search" / str(i))]["budget"] for i in range(3)] == [
        "mu=0.04",
        "mu=0.01",
        "BitOps 2 bits eq.",
    ]  # a target is the budget, not the mu it ended with
    assert search[str(root / "search" / "2")]["test_acc"] == ""

    retrain = {r["run_dir"]: r for r in rows[3:]}
    for sub, m in zip(["retrain/0", "retrain/1", "uniform/0", "uniform/1"], metrics, strict=True):
        r = retrain[str(root / sub)]
        assert float(r["equivalent_bits"]) == pytest.approx(m["equivalent_bits"])
        assert float(r["test_acc"]) == m["test_acc"]
        assert float(r["agreement"]) == m["prediction_agreement"]
        assert float(r["wall_time_s"]) == m["wall_time_s"]
    assert [retrain[str(root / s)]["budget"] for s in ("retrain/0", "retrain/1")] == [
        "mu=0.04",
        "BitOps 2 bits eq.",
    ]
    assert retrain[str(root / "retrain/1")]["test_acc_integer"] == ""
    assert [r["budget"] for r in rows[5:]] == ["uniform W2A2", "uniform W4A4"]  # ordered by bits

    md = (out / "report.md").read_text().splitlines()
    assert md[0].split("|")[1].strip() == "kind" and set(md[1]) <= set("|-")
    assert len(md) == 2 + 7
    assert sum("uniform W2A2" in line for line in md) == 1
    assert "uniform W4A4" in capsys.readouterr().out  # the table is printed too
    assert imread(out / "pareto.png").shape[1] > 300


def test_pareto_uses_retrained_test_accuracy_and_splits_out_the_baselines(sweep):
    root, _, metrics = sweep
    points, ylabel = pareto_points(collect([root]))
    assert ylabel == "test accuracy"
    by_group = {}
    for p in points:
        by_group.setdefault(p["group"], []).append((p["label"], p["acc"]))
    assert by_group == {
        "resnet8 synthetic searched": [("mu=0.04", 0.71), ("BitOps 2 bits eq.", 0.73)],
        "resnet8 synthetic uniform": [("W2A2", 0.69), ("W4A4", 0.8)],
    }


def test_pareto_falls_back_to_search_accuracy(sweep):
    root, found, _ = sweep
    points, ylabel = pareto_points(collect([root / "search"]))
    assert ylabel.startswith("validation accuracy")
    assert sorted(p["acc"] for p in points) == sorted(a.val_acc for a in found)


def test_paths_may_overlap_or_name_a_file(sweep):
    root, _, _ = sweep
    runs = collect([root, root / "search" / "0", root / "uniform" / "1" / "metrics.json"])
    assert len(runs) == 7


def test_a_broken_run_is_skipped_with_a_warning(sweep, caplog):
    root, _, _ = sweep
    (root / "retrain" / "0" / "metrics.json").write_text("{not json")
    (root / "search" / "1" / "found.json").write_text('{"schema": 1}')
    with caplog.at_level(logging.WARNING):
        runs = collect([root])
    assert len(runs) == 5
    assert "retrain/0/metrics.json" in caplog.text and "search/1/found.json" in caplog.text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "absent", "absent: no such file or directory"),
        (
            lambda p: (p / "empty" / ".hydra").mkdir(parents=True) or p / "empty",
            "no search run (found.json) or retrain run (metrics.json) under",
        ),
    ],
)
def test_nothing_to_report_is_a_one_line_error(tmp_path, make, message):
    with pytest.raises(SystemExit) as e:
        main([str(make(tmp_path)), "--out", str(tmp_path / "out")])
    assert message in str(e.value.code) and "\n" not in str(e.value.code)
    with pytest.raises(ReportError):
        collect([make(tmp_path) if "absent" in message else tmp_path / "empty"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "module, args, line",
    [
        ("edmips", ["report", "{tmp}/nowhere"], "{tmp}/nowhere: no such file or directory"),
        (  # the cost is checked before the runs are read
            "edmips.report",
            ["{tmp}", "--x", "flops"],
            f"--x flops: unknown cost; choose from {', '.join(AXES)}",
        ),
    ],
)
def test_the_module_entry_points_end_a_refusal_with_one_line_and_status_1(
    tmp_path, module, args, line
):
    argv = [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {line.format(tmp=tmp_path)}"]


def test_the_summary_compares_searched_uniform_and_random_at_one_budget(tmp_path):
    accs = {"searched": (0.74, 0.78), "uniform": (0.70, 0.72), "random": (0.60, 0.66, 0.63)}
    for network, values in accs.items():
        for seed, acc in enumerate(values):
            run = tmp_path / f"{network}-{seed}"
            if network == "uniform":
                make_retrain_run(run, None, None, uniform=(2, 2), test_acc=acc, seed=seed)
            else:
                bits = [1, 2, 2, 2, 3, 4]
                make_retrain_run(run, bits, [2] * 6, test_acc=acc, kind=network, target_bits=2.0)
    make_search_run(tmp_path / "search", [2] * 6, [2] * 6, target_bits=2.0)  # not retrained
    rows = summarize(collect([tmp_path]))
    assert [(r["budget"], r["network"], r["runs"]) for r in rows] == [
        ("BitOps 2 bits eq.", "searched", 2),
        ("BitOps 2 bits eq.", "uniform", 2),
        ("BitOps 2 bits eq.", "random", 3),
    ]
    for row in rows:
        values = accs[row["network"]]
        assert row["test_acc_mean"] == pytest.approx(statistics.fmean(values))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(values))
    paths = write_report(collect([tmp_path]), tmp_path / "report")
    assert len(paths["summary_md"].read_text().splitlines()) == 2 + 3


def test_a_float_run_is_its_own_kind_beside_the_quantized_networks(sweep, tmp_path):
    root, _, _ = sweep
    make_retrain_run(
        root / "float" / "0",
        [32] * 6,
        [32] * 6,
        kind="float",
        arch="float",
        test_acc=0.9,
        test_acc_integer=None,
        prediction_agreement=None,
        integer_export=False,
    )
    runs = collect([root])
    floats = [r for r in runs if r.kind == "float"]
    assert [(r.network, r.budget, r.test_acc) for r in floats] == [("float", "float", 0.9)]
    assert runs[-1] is floats[0]  # the ceiling after the quantized networks
    assert ("float", "float", 1) in [
        (r["budget"], r["network"], r["runs"]) for r in summarize(runs)
    ]
    points, _ = pareto_points(runs)
    assert [p["acc"] for p in points if p["network"] == "float"] == [0.9]
    paths = write_report(runs, tmp_path / "out")
    assert imread(paths["pareto"]).size > 0


def test_ptq_runs_are_networks_of_their_own(tmp_path):
    root = tmp_path / "runs"
    w, a = SEARCHES[2][:2]
    make_retrain_run(root / "retrain", w, a, uniform=(2, 2), kind="uniform", test_acc=0.7)
    make_retrain_run(root / "ptq_u", w, a, uniform=(2, 2), kind="ptq", allocation="uniform")
    make_retrain_run(
        root / "ptq_s", w, a, kind="ptq", allocation="sensitivity", target_bits=2.0, val_acc=None
    )
    make_retrain_run(root / "ptq_old", w, a, kind="ptq", arch="random", target_bits=2.0)
    runs = collect([root])
    assert sorted((r.kind, r.network) for r in runs) == [
        ("ptq", "random"),
        ("ptq", "sensitivity"),
        ("ptq", "uniform"),
        ("retrain", "uniform"),
    ]
    networks = [row["network"] for row in summarize(runs)]
    assert sorted(networks) == ["ptq random", "ptq sensitivity", "ptq uniform", "uniform"]
    assert write_report(runs, tmp_path / "report")["pareto"].exists()


def test_families_and_folding_at_one_budget_are_rows_of_their_own(tmp_path):
    qatsim = {"activation": "ema_relu", "weight": "maxabs", "signed": "ema"}
    for name, extra in (
        ("edmips", {}),
        ("qatsim", {"quant": qatsim}),
        ("qatsim-fold", {"quant": qatsim, "bn_fold": True}),
    ):
        for seed in (0, 1):
            make_retrain_run(
                tmp_path / f"{name}-{seed}", None, None, uniform=(4, 4), seed=seed, **extra
            )
    rows = summarize(collect([tmp_path]))
    assert [(r["quant"], r["runs"]) for r in rows] == [
        ("ema_relu/maxabs", 2),
        ("ema_relu/maxabs bn_fold", 2),
        ("hwgq/gauss", 2),
    ]
