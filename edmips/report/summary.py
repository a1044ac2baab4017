"""What the report writes from the runs collected: report.csv / .md (every run), the per-budget
comparison summary.csv / .md (searched vs uniform vs random, every cost and the test accuracy
over seeds) and pareto.png (accuracy against one cost, `x`).
"""

import logging
import statistics
from pathlib import Path

from edmips.records.files import make_dir
from edmips.report.collect import (
    COLUMNS,
    COSTS,
    NETWORKS,
    PTQ,
    SUMMARY_COLUMNS,
    TESTED,
    ReportError,
    Run,
    shown,
)
from edmips.report.costs import AXES, DEFAULT, axis, readable_size
from edmips.report.pareto import plot_pareto
from edmips.report.tables import markdown_table, write_csv

log = logging.getLogger(__name__)
AVERAGED = tuple(c for c in COSTS if c != "weight_size")  # weight_size: weight_bits as text
FILES = {  # what the report writes into its folder
    "csv": "report.csv",
    "md": "report.md",
    "summary_csv": "summary.csv",
    "summary_md": "summary.md",
    "pareto": "pareto.png",
}


class NoCost(ReportError):
    """No run records the cost the Pareto plot was asked to draw."""


def write_report(runs: list[Run], out="report", x: str = DEFAULT) -> dict[str, Path]:
    """Write the tables and the Pareto plot against cost `x` into the folder `out`; returns
    their paths. A folder holding anything else than an earlier report is refused: the report
    overwrites only what it wrote."""
    points, ylabel = pareto_points(runs, x)  # before writing: a cost nobody records is refused
    out = Path(out)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES.values())
        if others:
            raise ReportError(
                f"{out}: not empty and not a report's folder (it holds {others[0]}); "
                "name a new or empty folder with --out"
            )
    out = make_dir(out)
    paths = {key: out / name for key, name in FILES.items()}
    rows = [r.row() for r in runs]
    columns = shown(COLUMNS, rows)
    summary = summarize(runs)
    summary_columns = shown(SUMMARY_COLUMNS, summary)
    write_csv(paths["csv"], columns, rows)
    paths["md"].write_text(markdown_table(columns, rows))
    write_csv(paths["summary_csv"], summary_columns, summary)
    paths["summary_md"].write_text(markdown_table(summary_columns, summary))
    plot_pareto(points, paths["pareto"], ylabel, x)
    return paths


def budget_key(r: Run) -> str:
    """The budget a run was held to, its cost and unit named: one name for a search's seeds
    and the baselines compared with them (uniform W2A2 at "BitOps 2 bits eq.")."""
    return r.compared_at or r.budget


def summarize(runs: list[Run]) -> list[dict]:
    """Retrained networks per budget and kind: how many, the mean of every cost they record, and
    the mean and standard deviation of their test accuracy over seeds. A search counts only
    against the uniform and random networks of the same budget, so they sit side by side;
    post-training quantized networks follow the retrained ones as networks of their own ("ptq
    uniform")."""
    rows = []
    for (model, data, budget, _, _, quant), members in _groups(runs).items():
        accs = [r.test_acc for r in members]
        costs = {c: _mean(getattr(r, c) for r in members) for c in AVERAGED}
        rows.append(
            {
                "model": model,
                "data": data,
                "budget": budget,
                "network": network_label(members[0]),
                "quant": quant,
                "runs": len(members),
                **costs,
                "weight_size": readable_size(costs["weight_bits"]),
                "test_acc_mean": statistics.fmean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            }
        )
    return rows


def left_out(runs: list[Run]) -> list[str]:
    """One line for each run the summary leaves out and each mean it cannot take (some of a
    group's runs record the cost, others do not)."""
    lines = [
        f"{r.run_dir}: no test accuracy, left out of the summary"
        for r in runs
        if r.kind in TESTED and r.test_acc is None
    ]
    for (_, _, budget, _, _, _), members in _groups(runs).items():
        for cost in AVERAGED:
            lacking = [r.run_dir for r in members if getattr(r, cost) is None]
            if 0 < len(lacking) < len(members):
                lines.append(
                    f"{budget} {network_label(members[0])}: no mean {cost}, "
                    f"{len(lacking)} of {len(members)} runs do not record it: {', '.join(lacking)}"
                )
    return lines


def _groups(runs: list[Run]) -> dict[tuple, list[Run]]:
    """The tested runs with a test accuracy by (model, data, budget, ptq, network, quant), in
    the summary's order."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.kind in TESTED and r.test_acc is not None:
            rank = NETWORKS.index(r.network)
            key = (r.model, r.data or "", budget_key(r), r.kind == PTQ, rank, r.quant)
            groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: kv[0]))


def _mean(values) -> float | None:
    """The mean over seeds; None unless every seed records the value (a mean of some would
    pass for all of them)."""
    values = list(values)
    return None if any(v is None for v in values) else statistics.fmean(values)


def network_label(r: Run) -> str:
    return f"{PTQ} {r.network}" if r.kind == PTQ else r.network


def pareto_points(runs: list[Run], x: str = DEFAULT) -> tuple[list[dict], str]:
    """One point per run with an accuracy and cost `x`: retrained test accuracy (a float
    network's as its ceiling), the searches' validation accuracy when nothing was retrained.
    A run that does not record the cost (an older file) is left out with a warning."""
    field = axis(x).field
    retrained = [r for r in runs if r.kind in TESTED]
    chosen, attr, ylabel = (
        (retrained, "test_acc", "test accuracy")
        if retrained
        else (runs, "val_acc", "validation accuracy (search)")
    )
    points, missing = [], []
    for r in chosen:
        acc, cost = getattr(r, attr), getattr(r, field)
        if acc is None:
            continue
        if cost is None and r.network != "float":  # the float ceiling is a line, at no cost
            missing.append(r.run_dir)
            continue
        points.append(
            {
                "group": f"{r.model} {r.data or ''} {network_label(r)}".replace("  ", " "),
                "budget": budget_key(r),
                "x": cost,
                "acc": acc,
                "network": r.network,
                "label": r.budget.removeprefix("uniform "),
            }
        )
    if missing and not any(p["network"] != "float" for p in points):
        raise NoCost(f"--x {x}: no run records it; choose from {', '.join(AXES)}")
    if missing:
        log.warning("--x %s: %d runs do not record it, left out: %s", x, len(missing), missing)
    return points, ylabel
