"""The tools that work on finished runs, as one program: `python -m edmips <verb> ...`.

    rediscretize  any epoch's selectors of a search, discretized again, as an architecture file
    export        a retrain checkpoint to the integer bundle and its ONNX models
    report        tables and a Pareto plot over many runs

search.py and retrain.py (Hydra programs) train; these only read what they wrote.
`python -m edmips <verb> --help` explains each.
"""

import importlib
import sys

VERBS = {
    "rediscretize": "edmips.search.rediscretize",
    "export": "edmips.export.cli",
    "report": "edmips.report.cli",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}: choose from {', '.join(VERBS)}", file=sys.stderr)
        return 2
    result = importlib.import_module(VERBS[verb]).main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
