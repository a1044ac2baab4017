"""What the entry points share: bad input ends a run with one line, not a traceback."""

import difflib
import errno
import os
import re
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


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Refuse, in one line naming the closest known setting, a misspelled key. Hydra refuses
    `target_bit=2` itself, but with the hint `+target_bit=2`, which adds a setting that nothing
    reads: an added `+key` is refused here too, unless its node builds an object
    (`+trainer.limit_val_batches=2` reaches the Trainer, which refuses what it does not take)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf import OmegaConf

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    added = [a for a in overrides if a.startswith("+") and not a.startswith("+hydra.")]
    with initialize_config_dir(str(PACKAGE.parent / "conf"), version_base="1.3"):
        try:
            cfg = compose(config_name, [a for a in overrides if a not in added])
        except MissingConfigException as e:  # a group's option that does not exist
            if not e.options or not e.missing_cfg_file:
                return  # Hydra's own message says what is wrong
            group, name = e.missing_cfg_file.rsplit("/", 1)
            raise SystemExit(
                f"error: {group}={name}: no such {group}; choose from {', '.join(e.options)}"
            ) from None
        except ConfigCompositionException as e:
            unknown = re.search(r"Could not override '([^']+)'", str(e))
            if unknown is None:
                return  # Hydra's own message says what is wrong
            key, cfg = unknown[1], _compose_without(compose, config_name, overrides, unknown[1])
        else:
            keys = [a.split("=", 1)[0].lstrip("+") for a in added]
            unread = [k for k in keys if not _builds_an_object(cfg, k)]
            if not unread:
                return
            key = unread[0]
    known = _keys(OmegaConf.to_container(cfg, resolve=False)) if cfg is not None else []
    close = difflib.get_close_matches(key, known, n=1)
    listed = f" (python {config_name}.py --help lists them)"
    hint = f": did you mean {close[0]}?" if close else listed
    raise SystemExit(f"error: {key} is not a setting of {config_name}.py{hint}")


def _builds_an_object(cfg, key: str) -> bool:
    """Whether `key` is added under a node that builds an object (`_target_`), which refuses
    what it does not take; anywhere else an added key is read by nothing."""
    from omegaconf import DictConfig, OmegaConf

    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, parent) if parent else None
    return isinstance(node, DictConfig) and "_target_" in node


def _compose_without(compose, config_name: str, overrides: list[str], key: str):
    """The config without the override of `key` (None where it still does not compose)."""
    rest = [a for a in overrides if a.lstrip("+~").split("=", 1)[0] != key]
    try:
        return compose(config_name, rest)
    except Exception:
        return None


def _keys(node, prefix: str = "") -> list[str]:
    """Every key of a config, dotted (`search.warmup_epochs`)."""
    if not isinstance(node, dict):
        return []
    keys = []
    for k, v in node.items():
        keys += [f"{prefix}{k}", *_keys(v, f"{prefix}{k}.")]
    return keys
