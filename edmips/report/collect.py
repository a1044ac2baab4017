"""Collect search runs (found.json) and retrain runs (metrics.json) into one table.

`collect(paths)` walks the given directories (Hydra sweep dirs or single run dirs) and returns
one `Run` per run found; `write_report(runs, out)` writes report.csv, report.md and pareto.png.
"""

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edmips import arch as arch_file
from edmips import metrics as metrics_file
from edmips.report.figures import plot_pareto

log = logging.getLogger(__name__)

COLUMNS = (
    "kind",
    "model",
    "data",
    "budget",
    "equivalent_bits",
    "bitops",
    "weight_mib",
    "val_acc",
    "test_acc",
    "test_acc_integer",
    "agreement",
    "wall_time_s",
    "run_dir",
)
MIB = 8 * 2**20  # bits in a MiB


class ReportError(ValueError):
    """Nothing to report: a path that does not exist, or no run under the given paths."""


@dataclass(frozen=True)
class Run:
    kind: str  # "search" or "retrain"
    model: str
    data: str | None
    budget: str  # "2 bits", "mu=0.02", "uniform W2A2"
    equivalent_bits: float
    bitops: int
    weight_mib: float
    val_acc: float | None
    test_acc: float | None
    test_acc_integer: float | None
    agreement: float | None
    wall_time_s: float | None
    run_dir: str
    uniform: bool = False  # a uniform baseline, drawn as its own line

    def row(self) -> dict:
        return {c: getattr(self, c) for c in COLUMNS}


def collect(paths) -> list[Run]:
    """Every run under `paths`, searches first, then ordered by model, data and bits."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path}: no such file or directory")
        for run_dir, files in _walk(path):
            for name, read in (("found.json", _search_run), ("metrics.json", _retrain_run)):
                if name in files:
                    try:
                        runs.append(read(run_dir))
                    # a broken run must not hide the rest of the sweep: report it and go on
                    except (ValueError, KeyError, TypeError, OSError) as e:
                        log.warning("skipped %s: %s", run_dir / name, e)
    if not runs:
        raise ReportError(
            f"no search run (found.json) or retrain run (metrics.json) under "
            f"{', '.join(map(str, paths))}"
        )
    # overlapping paths ("sweep", "sweep/0") name a run twice
    unique = {(r.kind, os.path.realpath(r.run_dir)): r for r in runs}
    return sorted(
        unique.values(),
        key=lambda r: (
            r.kind != "search",
            r.model,
            r.data or "",
            r.uniform,
            r.equivalent_bits,
            r.run_dir,
        ),
    )


def write_report(runs: list[Run], out=".") -> dict[str, Path]:
    """Write report.csv, report.md and pareto.png into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "report.csv", "md": out / "report.md", "pareto": out / "pareto.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.row().items()} for r in runs)
    paths["md"].write_text(markdown_table(runs))
    points, ylabel = pareto_points(runs)
    plot_pareto(points, paths["pareto"], ylabel)
    return paths


def markdown_table(runs: list[Run]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in runs:
        cells = [fmt(c, v) for c, v in r.row().items()]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_points(runs: list[Run]) -> tuple[list[dict], str]:
    """Retrained test accuracy; the searches' validation accuracy when nothing was retrained."""
    retrained = [r for r in runs if r.kind == "retrain"]
    chosen, attr, ylabel = (
        (retrained, "test_acc", "test accuracy")
        if retrained
        else (runs, "val_acc", "validation accuracy (search)")
    )
    points = []
    for r in chosen:
        acc = getattr(r, attr)
        if acc is None:
            continue
        kind = "uniform" if r.uniform else "mixed precision"
        points.append(
            {
                "group": f"{r.model} {r.data or ''} {kind}".replace("  ", " "),
                "bits": r.equivalent_bits,
                "acc": acc,
                "uniform": r.uniform,
                "label": r.budget.removeprefix("uniform "),
            }
        )
    return points, ylabel


# -- reading runs ----------------------------------------------------------------------------
def _walk(root: Path):
    """(dir, file names) for root and every directory below it, in a stable order."""
    if root.is_file():  # a found.json or metrics.json named directly
        yield root.parent, {root.name}
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .hydra
        yield Path(dirpath), set(filenames)


def _search_run(run_dir: Path) -> Run:
    a = arch_file.load(run_dir / "found.json")
    return Run(
        "search",
        a.model,
        a.data,
        _budget(a.extra.get("target_bits"), a.extra.get("target_bitops"), a.mu),
        a.equivalent_bits,
        a.bitops,
        a.weight_bits_total / MIB,
        a.val_acc,
        a.extra.get("test_acc"),
        None,
        None,
        a.extra.get("wall_time_s"),
        str(run_dir),
    )


def _retrain_run(run_dir: Path) -> Run:
    m = metrics_file.load(run_dir / "metrics.json")
    if m.uniform:
        budget = f"uniform W{m.uniform['wbits']}A{m.uniform['abits']}"
    else:
        budget = _budget(m.target_bits, None, m.mu)
    return Run(
        "retrain",
        m.model,
        m.data,
        budget,
        m.equivalent_bits,
        m.bitops,
        m.weight_bits_total / MIB,
        m.val_acc,
        m.test_acc,
        m.test_acc_integer,
        m.prediction_agreement,
        m.wall_time_s,
        str(run_dir),
        uniform=bool(m.uniform),
    )


def _budget(target_bits, target_bitops, mu) -> str:
    # in budget mode mu is the multiplier the search ended with, not what the user asked for
    if target_bits is not None:
        return f"{target_bits:g} bits"
    if target_bitops is not None:
        return f"{target_bitops:.3g} BitOps"
    return "-" if mu is None else f"mu={mu:g}"


def fmt(column: str, value) -> str:
    """A cell as shown in the Markdown and terminal tables."""
    if value is None:
        return "–"
    if column == "bitops":
        return f"{value:.4g}"
    if column == "weight_mib":
        return f"{value:.4g}"
    if column == "wall_time_s":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4f}" if column != "equivalent_bits" else f"{value:.3f}"
    return str(value)
