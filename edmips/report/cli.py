"""python -m edmips report <sweep or run dirs...> [--out DIR] [--x COST] [--figures]
(or python -m edmips.report ...).

Writes into the folder --out (report/ by default), never loose files beside it, and refuses a
folder holding anything else than an earlier report; its last line says where the files went."""

import argparse
import logging
import sys
from pathlib import Path

from edmips.report.collect import COLUMNS, SUMMARY_COLUMNS, collect, shown
from edmips.report.costs import AXES, DEFAULT, axis
from edmips.report.figures import read_search_run, write_search_figures
from edmips.report.summary import left_out, summarize, write_report
from edmips.report.tables import fmt, markdown_table

HEADERS = {
    "equivalent_bits": "eq. bits",
    "bitops": "BitOps",
    "weight_bits": "weight bits",
    "weight_size": "weights",
    "activation_bits": "act. bits",
    "micronet_score": "MicroNet",
    "latency_ms": "ms",
    "test_acc_integer": "test int",
    "wall_time_s": "wall s",
    "run_dir": "run dir",
    "test_acc_mean": "test acc",
    "test_acc_std": "std",
}
TEXT = {"kind", "network", "model", "data", "budget", "run_dir"}
PROG = "edmips.report"
log = logging.getLogger(PROG)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edmips report",
        description="Table (report.csv, report.md) and Pareto plot of search and retrain runs.",
    )
    parser.add_argument(
        "paths", nargs="+", help="run dirs or Hydra sweep dirs, searched recursively"
    )
    parser.add_argument(
        "--out",
        default="report",
        help="the folder to write the report into: new, empty or an earlier report's "
        "(default: report)",
    )
    parser.add_argument(
        "--x",
        default=DEFAULT,
        metavar="COST",
        help=f"the Pareto plot's x axis: {', '.join(AXES)} (default: {DEFAULT})",
    )
    parser.add_argument(
        "--figures",
        action="store_true",
        help="also draw each search run's figures into its own run dir",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        axis(args.x)  # before reading a sweep: a typo costs nothing
        runs = collect(args.paths)
        drawn = _figure_inputs(runs) if args.figures else {}  # read all before writing any
        for line in left_out(runs):
            log.warning(line)
        paths = write_report(runs, args.out, args.x)
        for run_dir, read in drawn.items():
            write_search_figures(run_dir, *read)
    except (ValueError, OSError) as e:  # ReportError, an unknown cost, a full disk: one line
        raise SystemExit(f"error: {e}") from None
    _print(runs)
    figures = f"; figures into {len(drawn)} search run dirs" if drawn else ""
    names = ", ".join(p.name for p in paths.values())
    print(f"report written to {Path(args.out)}/ ({names}){figures}", file=sys.stderr)
    return 0


def _figure_inputs(runs) -> dict:
    """Each search run's validated found.json and history.json; a run whose files do not
    validate is left out of the figures, with one line saying why."""
    drawn = {}
    for run in runs:
        if run.kind == "search":
            try:
                drawn[run.run_dir] = read_search_run(run.run_dir)
            except ValueError as e:
                log.warning("no figures for %s: %s", run.run_dir, e)
    return drawn


def _print(runs) -> None:
    """Every run, then the per-budget comparison: rich tables on a terminal, the Markdown text
    itself when piped (greppable, pasteable)."""
    rows, summary = [r.row() for r in runs], summarize(runs)
    columns, summary_columns = shown(COLUMNS, rows), shown(SUMMARY_COLUMNS, summary)
    if not sys.stdout.isatty():
        print(markdown_table(columns, rows), end="")
        if summary:
            print("\n" + markdown_table(summary_columns, summary), end="")
        return
    from rich.console import Console

    console = Console()
    console.print(_rich_table(columns, rows, dim=[r.kind == "search" for r in runs]))
    if summary:
        console.print(_rich_table(summary_columns, summary))


def _rich_table(columns, rows: list[dict], dim=None):
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in columns:
        # fold, never truncate: a cut-off budget or run dir is worse than a taller table
        table.add_column(
            HEADERS.get(column, column),
            overflow="fold",
            justify="left" if column in TEXT else "right",
        )
    for i, row in enumerate(rows):
        style = "dim" if dim and dim[i] else None
        table.add_row(*[fmt(c, row[c]) for c in columns], style=style)
    return table
