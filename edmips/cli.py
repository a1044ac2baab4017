"""What the entry points share: bad input ends a run with one line, not a traceback."""

import os
from contextlib import contextmanager


@contextmanager
def one_line_errors():
    """A bad config value, arch file or dataset path (ValueError, FileNotFoundError) stops the
    run with `error: <what is wrong>` and exit status 1. HYDRA_FULL_ERROR=1 shows the traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {e}") from None
