"""The report's costs and its Pareto plot, on the protocol a user runs: searched, uniform and
random networks at one budget over seeds (and a second budget, so that lines have budgets to
join)."""

import csv
import itertools
import os
import statistics

import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread
from report_fakes import make_retrain_run, make_search_run, search_arch

from edmips.report import collect, write_report
from edmips.report.cli import main
from edmips.report.costs import AXES, readable_size
from edmips.report.pareto import pareto_figure
from edmips.report.summary import pareto_points, summarize

# (wbits, abits) of seeds that landed a little apart around their budget
SEARCHED = {
    2.0: [
        ([1, 2, 2, 2, 3, 2], [2, 2, 2, 3, 2, 2]),  # 1.962 bits
        ([1, 2, 2, 2, 2, 2], [2, 3, 2, 2, 2, 2]),  # 2.000
        ([1, 2, 2, 2, 3, 2], [2, 3, 2, 2, 2, 2]),  # 2.038
    ],
    3.0: [
        ([2, 3, 3, 4, 3, 2], [3, 3, 4, 3, 3, 3]),  # 2.995
        ([2, 3, 3, 4, 3, 4], [3, 3, 4, 3, 3, 3]),  # 3.005
        ([2, 4, 2, 3, 4, 2], [3, 3, 4, 3, 3, 3]),  # 3.008
    ],
}
RANDOM = [([2, 1, 2, 2, 3, 2], [2, 2, 3, 2, 2, 2]), ([1, 2, 2, 2, 3, 2], [2, 3, 2, 2, 2, 2])]
ACC = {"searched": (0.74, 0.76, 0.75), "uniform": (0.70, 0.72), "random": (0.66, 0.60)}


def make_protocol(root, budgets=(2.0, 3.0)):
    """3 searched, 2 uniform W_bA_b and 2 random networks per budget b, retrained."""
    for b in budgets:
        up = 0.05 * (b - 2.0)  # the larger budget is the more accurate one
        for seed, ((w, a), acc) in enumerate(zip(SEARCHED[b], ACC["searched"])):
            make_retrain_run(
                root / f"searched-{b:g}-{seed}", w, a, target_bits=b, seed=seed, test_acc=acc + up
            )
        for seed, acc in enumerate(ACC["uniform"]):
            u = (int(b), int(b))
            make_retrain_run(
                root / f"uniform-{b:g}-{seed}", None, None, uniform=u, test_acc=acc + up
            )
        if b == 2.0:  # random allocations at one budget only: a kind of a single marker
            for seed, ((w, a), acc) in enumerate(zip(RANDOM, ACC["random"])):
                make_retrain_run(
                    root / f"random-{seed}", w, a, kind="random", target_bits=b, test_acc=acc
                )
    return root


@pytest.fixture
def protocol(tmp_path):
    return collect([make_protocol(tmp_path / "runs")])


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("budgets", [(2.0,), (2.0, 3.0)])
def test_one_marker_per_kind_and_budget_with_the_seeds_spread(tmp_path, budgets):
    runs = collect([make_protocol(tmp_path / "runs", budgets)])
    fig = pareto_figure(*pareto_points(runs))
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {f"resnet8 synthetic {k}" for k in ("searched", "uniform", "random")}
    for kind, container in bars.items():
        line = container.lines[0]  # the markers, joined by the kind's line
        xs = list(line.get_xdata())
        expected = 1 if kind.endswith("random") else len(budgets)
        assert len(xs) == expected, f"{kind}: one marker per budget"
        assert all(a < b for a, b in itertools.pairwise(xs)), "joined in order of cost"
        assert container.has_xerr and container.has_yerr
    searched = bars["resnet8 synthetic searched"].lines[0]
    bits = [
        r.equivalent_bits
        for r in runs
        if r.network == "searched" and r.budget == "BitOps 2 bits eq."
    ]
    assert searched.get_xdata()[0] == pytest.approx(statistics.fmean(bits))
    assert searched.get_ydata()[0] == pytest.approx(statistics.fmean(ACC["searched"]))
    # the spread: the x bar reaches from the seeds' fewest bits to their most
    segments = bars["resnet8 synthetic searched"].lines[2][0].get_segments()
    assert segments[0][:, 0] == pytest.approx([min(bits), max(bits)])

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not _boxes_overlap(legend, frame), "the legend covers the axes"
    labels = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(labels) == sum(len(c.lines[0].get_xdata()) for c in bars.values())
    for a, b in itertools.combinations(labels, 2):
        assert not _boxes_overlap(a, b), "two labels collide"
    for box in labels:  # every label readable: inside the axes
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1
    out = os.environ.get("PARETO_CHECK")  # PARETO_CHECK=/tmp/report_check: look at it
    if out:  # the protocol at one budget as pareto.png, at two in two_budgets/
        write_report(runs, out if len(budgets) == 1 else f"{out}/two_budgets")


def test_every_cost_is_a_column_and_a_missing_one_reads_as_a_dash(protocol, tmp_path):
    runs = protocol
    # a file older than the activation bits and the MicroNet score
    old = tmp_path / "old"
    make_retrain_run(
        old, None, None, uniform=(4, 4), activation_bits_total=None, micronet_score=None
    )
    old = collect([old])
    paths = write_report(runs + old, tmp_path / "out")
    rows = list(csv.DictReader(open(paths["csv"])))
    for column in ("weight_bits", "weight_size", "activation_bits", "micronet_score"):
        assert all(r[column] for r in rows[:-1]), column
    last = rows[-1]
    assert (last["activation_bits"], last["micronet_score"], last["budget"]) == (
        "",
        "",
        "uniform W4A4",
    )
    assert last["weight_size"] == readable_size(int(last["weight_bits"]))
    md = paths["md"].read_text().splitlines()
    header = [c.strip() for c in md[0].split("|")]
    cells = [c.strip() for c in md[-1].split("|")]
    assert cells[header.index("activation_bits")] == cells[header.index("micronet_score")] == "-"
    assert "KiB" in cells[header.index("weight_size")] or "B" in cells[header.index("weight_size")]
    assert "latency_ms" not in header  # nobody measured one

    summary = {(r["budget"], r["network"]): r for r in summarize(runs)}
    row = summary[("BitOps 2 bits eq.", "searched")]
    searched = [r for r in runs if r.network == "searched" and r.budget == "BitOps 2 bits eq."]
    assert row["runs"] == 3
    assert row["weight_bits"] == pytest.approx(statistics.fmean(r.weight_bits for r in searched))
    assert row["micronet_score"] == pytest.approx(
        statistics.fmean(r.micronet_score for r in searched)
    )
    summary_md = paths["summary_md"].read_text()
    assert "activation_bits" in summary_md and "weight_size" in summary_md


def test_a_latency_is_a_column_where_a_run_records_it(tmp_path):
    w, a = SEARCHED[2.0][0]
    make_retrain_run(tmp_path / "r", w, a, target_bits=2.0, latency_ms=1.25)
    make_retrain_run(tmp_path / "u", None, None, uniform=(2, 2))
    paths = write_report(collect([tmp_path]), tmp_path / "out", x="latency_table")
    rows = {r["budget"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert (rows["BitOps 2 bits eq."]["latency_ms"], rows["uniform W2A2"]["latency_ms"]) == (
        "1.25",
        "",
    )


@pytest.mark.parametrize("x", sorted(set(AXES) - {"latency_table"}))
def test_the_pareto_plot_is_drawn_against_any_recorded_cost(protocol, tmp_path, x):
    points, ylabel = pareto_points(protocol, x)
    fig = pareto_figure(points, ylabel, x)
    ax = fig.axes[0]
    searched = next(c for c in ax.containers if c.get_label().endswith("searched"))
    field = AXES[x].field
    two_bits = [getattr(r, field) for r in protocol if r.network == "searched"][:3]
    unit = ax.get_xlabel().rsplit("(", 1)[-1].rstrip(")")
    scale = {"B": 8, "KiB": 8 * 2**10, "MiB": 8 * 2**20}.get(unit, 1) if AXES[x].memory else 1
    assert searched.lines[0].get_xdata()[0] * scale == pytest.approx(statistics.fmean(two_bits))
    assert ax.get_xlabel().startswith(AXES[x].label)
    if AXES[x].memory:
        assert unit in ("B", "KiB", "MiB")
    paths = write_report(protocol, tmp_path / x, x=x)
    assert imread(paths["pareto"]).shape[1] > 600


def test_the_cli_takes_the_cost_and_refuses_an_unknown_one_in_one_line(tmp_path):
    root = make_protocol(tmp_path / "runs", (2.0,))
    assert main([str(root), "--out", str(tmp_path / "out"), "--x", "weight_size"]) == 0
    assert (tmp_path / "out" / "pareto.png").exists()
    with pytest.raises(SystemExit) as e:  # as a process: test_report_collect.py
        main([str(root), "--out", str(tmp_path / "out2"), "--x", "flops"])
    assert e.value.code == f"error: --x flops: unknown cost; choose from {', '.join(AXES)}"
    assert not (tmp_path / "out2").exists()


def test_a_cost_no_run_records_is_refused(protocol, tmp_path):
    with pytest.raises(SystemExit, match="--x latency_table: no run records it"):
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--x", "latency_table"])
    assert not (tmp_path / "out").exists()


def test_search_runs_alone_plot_their_validation_accuracy_against_the_cost(tmp_path):
    for seed, (w, a) in enumerate(SEARCHED[2.0]):
        make_search_run(tmp_path / str(seed), w, a, target_bits=2.0, val_acc=0.5 + seed / 100)
    points, ylabel = pareto_points(collect([tmp_path]), "activation_memory")
    assert ylabel.startswith("validation") and len(points) == 3
    fig = pareto_figure(points, ylabel, "activation_memory")
    (container,) = fig.axes[0].containers
    assert len(container.lines[0].get_xdata()) == 1  # one budget: one marker
    assert search_arch(*SEARCHED[2.0][0]).activation_bits_total == points[0]["x"]
