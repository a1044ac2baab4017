"""python -m edmips.report <sweep or run dirs...> [--out DIR] [--figures]"""

import argparse
import logging
import sys

from edmips.report.collect import COLUMNS, ReportError, collect, fmt, markdown_table, write_report
from edmips.report.figures import write_search_figures

HEADERS = {
    "equivalent_bits": "eq. bits",
    "bitops": "BitOps",
    "weight_mib": "MiB",
    "test_acc_integer": "test int",
    "wall_time_s": "wall s",
    "run_dir": "run dir",
}
TEXT = {"kind", "model", "data", "budget", "run_dir"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edmips.report",
        description="Table (report.csv, report.md) and Pareto plot of search and retrain runs.",
    )
    parser.add_argument(
        "paths", nargs="+", help="run dirs or Hydra sweep dirs, searched recursively"
    )
    parser.add_argument("--out", default=".", help="where to write the report (default: here)")
    parser.add_argument(
        "--figures",
        action="store_true",
        help="also draw each search run's figures into its own run dir",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        runs = collect(args.paths)
    except ReportError as e:
        raise SystemExit(f"edmips.report: {e}") from None
    paths = write_report(runs, args.out)
    if args.figures:
        for run in runs:
            if run.kind == "search":
                write_search_figures(run.run_dir)
    _print(runs)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def _print(runs) -> None:
    """A rich table on a terminal; the Markdown text itself when piped (greppable, pasteable)."""
    if not sys.stdout.isatty():
        print(markdown_table(runs), end="")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in COLUMNS:
        # fold, never truncate: a cut-off budget or run dir is worse than a taller table
        table.add_column(
            HEADERS.get(column, column),
            overflow="fold",
            justify="left" if column in TEXT else "right",
        )
    for run in runs:
        table.add_row(
            *[fmt(c, v) for c, v in run.row().items()],
            style="dim" if run.kind == "search" else None,
        )
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
