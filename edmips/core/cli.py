"""What the entry points share: bad input ends a run with one line, not a traceback."""

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback

from edmips.core import rundir
from edmips.data.imagenet import UnreadableImage
from edmips.records.files import check_folder

PACKAGE = Path(__file__).resolve().parents[1]  # the edmips package
SWEEP_RECORD = "multirun.yaml"  # Hydra's record of a sweep, in its hydra.sweep.dir


@contextmanager
def one_line_errors():
    """A bad config value, arch file, dataset or checkpoint (a ValueError or FileNotFoundError
    raised by this package's own checks) stops the run with `error: <what is wrong>` and exit
    status 1. The same errors raised inside a library are faults, not bad input: they keep
    their traceback, as they do everywhere with HYDRA_FULL_ERROR=1. An unreadable image met by
    a DataLoader worker is this package's too, though torch raises it again in this process.
    A run ending so before it was accepted leaves nothing behind (rundir.remove_unaccepted)."""
    try:
        yield
    except BaseException as e:
        rundir.remove_unaccepted()
        written = _write_failure(e)
        if written is not None:
            raise SystemExit(f"error: {written}") from None
        if not isinstance(e, (ValueError, FileNotFoundError)):
            raise
        ours = raised_here(e) or isinstance(e, UnreadableImage)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not ours:
            raise
        raise SystemExit(f"error: {e}") from None


# What the operating system says when a file cannot be written: the machine's, not the code's.
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def _write_failure(e: BaseException) -> str | None:
    """A file this run could not write, in one line naming the path and the cause ("No space
    left on device", "Read-only file system"); torch's checkpoint writer reports it as a
    RuntimeError without the cause, so the free space is said. None for anything else."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
        return f"{e.filename}: {e.strerror}" if e.filename else str(e)
    if isinstance(e, RuntimeError) and "file write failed" in str(e):
        free = shutil.disk_usage(Path.cwd()).free / 2**20
        first = str(e).splitlines()[0]
        return f"writing a checkpoint failed ({first}); {free:.0f} MiB free in {Path.cwd()}"
    return None


def raised_here(e: BaseException) -> bool:
    """Whether the innermost Python frame of e's traceback is in this package."""
    tb, innermost = e.__traceback__, None
    while tb is not None:
        innermost, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return innermost is not None and Path(innermost).resolve().is_relative_to(PACKAGE)


class CheckRunDir(Callback):
    """Hydra creates the run's directory before the program starts, out of reach of
    one_line_errors: a `hydra.run.dir` (`hydra.sweep.dir`) through a file, and a sweep
    directory holding another sweep, are refused here, in one line, before Hydra creates
    anything; what it will create is noted, for a run refused later to remove again
    (rundir.note_hydra_dirs). Named in the programs' configs (hydra.callbacks)."""

    def on_run_start(self, config, **kwargs) -> None:
        _check_run_dir("hydra.run.dir", config.hydra.run.dir)
        rundir.note_hydra_dirs(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep = _check_run_dir("hydra.sweep.dir", config.hydra.sweep.dir)
        record = sweep / SWEEP_RECORD
        if record.exists():  # Hydra would write over it before any run of this sweep is refused
            raise SystemExit(
                f"error: hydra.sweep.dir: {sweep} holds another sweep ({SWEEP_RECORD}): choose "
                "another hydra.sweep.dir"
            )
        rundir.note_hydra_dirs(str(sweep), str(record))


def _check_run_dir(key: str, path: str) -> Path:
    try:
        return check_folder(path)
    except ValueError as e:
        raise SystemExit(f"error: {key}: {e}") from None
