"""`python -m edmips.report ...`, the same program as `python -m edmips report ...`."""

import sys

from edmips.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
