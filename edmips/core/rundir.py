"""The run directory: one run per directory, a checkpoint after every epoch, resuming it, and
the three states a run ends in.

A run writes `checkpoints/last.ckpt` (atomically, replacing the previous one) at the end of
every epoch. The checkpoint holds the run's own configuration, so `resume=<run dir or
checkpoint>` continues the run in its directory with the configuration it started with.
A new run refuses a directory that already holds one: two runs never mix their files.

A run ends in exactly one of three states:
- finished: its result file (found.json, metrics.json) is complete. It is written atomically
  and last (`Run.finish`), so it exists only once everything else the run writes does;
- stopped: the last epoch's checkpoint is on disk, the log says `resume=<run dir>` (SIGTERM:
  exit status 143) or the process was killed (SIGKILL), and no result file exists;
- refused: one line `error: ...`, and nothing written. Every refusal (the configuration, the
  checkpoint, the data, the export's lowering, a directory held by another run or another
  process) comes before `Run.accept`, which is the first write: the lock, Hydra's record of
  the command (.hydra/) and its log, held until then (`RunLog`). What Hydra makes before the
  program runs (the run's folders, a sweep's multirun.yaml) a refused run removes again
  (`remove_unaccepted`): it leaves nothing behind, and never touches the run it was given.

ptq.py goes through the same lifecycle without epochs: no checkpoint and no resume=, so its
stopped state is only: no metrics.json, and the line to start it again in a new directory.

Resumable phases rather than a signal handler that saves on the way out: SIGKILL (the OOM
killer, a lost node) cannot be answered, so what a handler would save must be on disk
already. What follows the last epoch (the test pass, the export and its integer and ONNX
checks, the result files) writes no result before the end and is computed again from the
last checkpoint on resume, which restores what the epochs set first (the modules'
on_load_checkpoint, the last validation's metrics: `RunState`). SIGTERM is answered only to
say so: Lightning stops training at the next batch; outside training the process stops at
once; either way with status 143 and the `resume=` line, never exit 0 without a result.

A resume continues the run's logs/metrics.csv (`continue_log`), so that it is one log of the
whole run, row for row that of a run never stopped. The CSV logger writes every row as it is
logged; the epoch's training row is logged just after its checkpoint is written, so a
SIGKILL in that instant, and only then, loses that one row.
"""

import csv
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytorch_lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"
FINAL = ("found.json", "metrics.json")  # written when a run has finished
# What marks a directory as another run's: its results, and every output only a run writes (a
# run stopped before its result file keeps them); also any ONNX model (*.onnx).
RESULTS = (
    *FINAL,
    "history.json",
    str(CHECKPOINT),
    "arch.json",
    "integer",
    "calibration_stats.pt",
    "weights.pt",
)
CONFIG_KEY = "edmips_config"
VALIDATION_KEY = "edmips_validation"
STOPPED = 128 + signal.SIGTERM  # the exit status of a run stopped by SIGTERM


class Stopped(BaseException):
    """SIGTERM outside training: the run stops where it is (a BaseException: no `except
    Exception` on the way may take it for a failure to recover from)."""


def epoch_checkpoint(out: Path) -> ModelCheckpoint:
    """`last.ckpt` after every training epoch, never versioned (`last-v1.ckpt`): every reader
    (resume, export, init=search) finds one unambiguous file. Lightning writes it through an
    fsspec transaction, a temporary file renamed into place, so a kill never leaves half a file.
    """
    return ModelCheckpoint(
        dirpath=out / CHECKPOINT.parent,
        filename=CHECKPOINT.stem,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,  # after the epoch's scheduler step: resumes exactly
        enable_version_counter=False,
    )


class RunState(Callback):
    """Puts in every checkpoint the run's resolved configuration (and which program ran it) and
    the epoch's validation metrics, which a resume after the last epoch reports as the run
    that never stopped does, without validating again."""

    def __init__(self, cfg: DictConfig, program: str):
        self.config = _resolved(cfg)
        self.program = program
        self.validation: dict[str, float] = {}  # restored from the checkpoint resumed

    def on_save_checkpoint(self, trainer: L.Trainer, module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = {"program": self.program, "config": self.config}
        checkpoint[VALIDATION_KEY] = _validation(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, module, checkpoint: dict) -> None:
        self.validation = checkpoint.get(VALIDATION_KEY, {})

    def last_validation(self, trainer: L.Trainer) -> dict[str, float]:
        return {**self.validation, **_validation(trainer)}


def _validation(trainer: L.Trainer) -> dict[str, float]:
    metrics = trainer.callback_metrics.items()
    return {k: float(v) for k, v in metrics if k.startswith("val/")}


class Run:
    """One run of a program in its directory: what it runs, what it resumes, and how it ends."""

    def __init__(
        self, cfg: DictConfig, command: DictConfig, program: str, checkpoint: Path | None = None
    ):
        self.cfg = cfg  # what runs: the command's configuration, or the resumed run's
        self.program = program
        self.command = command  # the command line's, recorded in .hydra/ as Hydra would
        self.dir = Path(cfg.output_dir)
        self.checkpoint = checkpoint  # the one resumed
        self.stored: dict = {}  # of the checkpoint resumed: its network, epoch and shapes
        self.resumable = "resume" in command  # ptq.py has no resume=
        self._lock = ExitStack()  # the directory's lock, from `accept` to the end of `stoppable`
        self._accepted = self._fitting = self._finishing = False

    def check_directory(self) -> None:
        """A fresh run needs a directory without another run's files; a resume, a run that
        has not finished."""
        if self.checkpoint is None:
            found = _another_runs_file(self.dir)
            if found is not None:
                resume = f" or continue that run with resume={self.dir}" if self.resumable else ""
                raise ValueError(
                    f"{found} exists: {self.dir} holds another run; start in a new "
                    f"directory (hydra.run.dir=...){resume}"
                )
            return
        for name in FINAL:
            if (self.dir / name).exists():
                raise ValueError(
                    f"{self.dir / name} exists: that run has finished, nothing to resume"
                )

    @property
    def network(self) -> dict | None:
        """What rebuilds the resumed retrain's network (its architecture): None if fresh."""
        return self.stored.get("network")

    @contextmanager
    def accepted(self, module):
        """The run of `module` from its first write on (`accept`), stoppable by SIGTERM."""
        with self.stoppable():
            self.accept(module)
            yield self

    @contextmanager
    def stoppable(self):
        """A SIGTERM from here on ends the run with status 143 and a line saying what to do
        next; the directory's lock, taken by `accept`, is held until the end."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main else None
        try:
            with self._lock:
                yield self
        except (Stopped, SIGTERMException):
            raise SystemExit(self._stopped()) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def accept(self, module=None) -> None:
        """The run's first write, inside `stoppable`: its directory locked against a second
        process, Hydra's record of the command written (.hydra/), its log opened. Refused
        before it: a checkpoint to resume holding another network's tensors, a directory
        another process holds."""
        if self.checkpoint is not None:
            check_weights(module.state_dict(), self.stored["shapes"], self.checkpoint)
        first = rank_zero_only.rank == 0  # the others are a distributed run's own processes
        if first:
            self._lock.enter_context(_locked(self.dir))
        self.check_directory()  # again: another process may have finished it meanwhile
        if first:
            _write_hydra_record(self.command)
        _open_run_log()
        if not first:  # its log then exists, and says why the run's other files are not its own
            log.info(
                "process %d of a distributed run: rank 0 writes the run's files",
                rank_zero_only.rank,
            )
        _hydra_made.accepted(_hydra_output_dir())
        self._accepted = True

    def fit(self, trainer: L.Trainer, module, datamodule) -> dict[str, float]:
        """trainer.fit, from the checkpoint resumed; the last validation's metrics (`val/...`)."""
        if self.checkpoint is not None:
            continue_log(trainer.logger, self.stored["epoch"])
        self._fitting = True
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=self.checkpoint)
        finally:
            self._fitting = False
        if trainer.received_sigterm:  # after the last batch, where Lightning raises nothing
            raise Stopped
        state = next(c for c in trainer.callbacks if isinstance(c, RunState))
        return state.last_validation(trainer)

    def finish(self, write: Callable[[], Path]) -> Path:
        """Write the result file, the run's last write: from here on a SIGTERM lets it finish."""
        self._finishing = True
        return write()

    def _on_sigterm(self, signum, frame) -> None:
        if self._finishing:
            log.warning("SIGTERM while the result is written: the run finishes")
        elif not self._fitting or signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            raise Stopped  # Lightning's handler, which stops at the next batch, is not in place

    def _stopped(self) -> int:
        name = self.program
        if not self._accepted:
            log.error("stopped by SIGTERM before it wrote anything: start %s.py again", name)
        elif not self.resumable:
            log.error(
                "stopped by SIGTERM before its result (metrics.json): start %s.py again in a new "
                "directory (hydra.run.dir=...)",
                name,
            )
        elif (self.dir / CHECKPOINT).exists():
            log.error("stopped by SIGTERM: continue the run with resume=%s", self.dir)
        else:
            log.error("stopped by SIGTERM before its first checkpoint: start the run again")
        return STOPPED


def start(cfg: DictConfig, program: str) -> Run:
    """The run to make: a fresh one, in cfg.output_dir, or with `resume=` the run it continues,
    with that run's stored configuration, in that run's directory. Reads only; refuses a
    directory holding another run's files and a checkpoint that is not the program's."""
    if cfg.get("resume") is None:
        run = Run(cfg, cfg, program)
    else:
        ckpt = checkpoint_path(Path(str(cfg.resume)))
        content = load_checkpoint(ckpt)
        stored = content.get(CONFIG_KEY)
        if not isinstance(stored, dict) or stored.get("program") != program:
            raise ValueError(f"{ckpt}: not a checkpoint of {program}.py, cannot resume it")
        log.info("resuming %s with the configuration it started with", ckpt)
        resumed = OmegaConf.create(stored["config"])
        with open_dict(resumed):
            resumed.output_dir = str(ckpt.parent.parent)
            resumed.resume = str(ckpt)
        run = Run(resumed, cfg, program, ckpt)
        run.stored = {
            "epoch": content.get("epoch", -1),
            "network": content.get("edmips_network"),
            "shapes": {k: _shape(v) for k, v in content["state_dict"].items()},
        }
    run.check_directory()
    return run


@contextmanager
def _locked(run_dir: Path):
    """An exclusive lock on the run directory for as long as the run goes on; the system drops
    it when the process ends, however it ends, so no stale lock survives a kill."""
    run_dir.mkdir(parents=True, exist_ok=True)
    held = os.open(run_dir, os.O_RDONLY)  # the directory itself: a lock that leaves no file
    try:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{run_dir}: another process is running this run; wait for it to end"
            ) from None
        yield
    finally:
        os.close(held)


def _another_runs_file(run_dir: Path) -> Path | None:
    """The first of RESULTS (or an ONNX model) in run_dir, if any."""
    for name in RESULTS:
        if (run_dir / name).exists():
            return run_dir / name
    return next(iter(sorted(run_dir.glob("*.onnx"))), None)


class RunLog(logging.FileHandler):
    """Hydra's log file of a run (the `file` handler of hydra.job_logging in conf/*.yaml),
    opened once the run is accepted: the records before are held and written then, so that a
    refused run writes no log into the directory it was given."""

    def __init__(self, filename, mode: str = "a", encoding: str | None = None):
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []  # None once the run is accepted

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        else:
            self.held.append(record)

    def open_log(self) -> None:
        self.acquire()
        try:
            held, self.held = self.held or [], None
            for record in held:
                super().emit(record)
        finally:
            self.release()


def _open_run_log() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLog):
            handler.open_log()


class _HydraMade:
    """What Hydra makes for a run before the program starts, which a run ending before it was
    accepted removes: the folders of its run directory (of a sweep's, and its job's) that did
    not exist, and a sweep's record of itself, multirun.yaml, kept once one of its runs is
    accepted. Noted by edmips.core.cli.CheckRunDir before Hydra creates anything."""

    def __init__(self):
        self.top: Path | None = None  # hydra.run.dir, or hydra.sweep.dir
        self.existing: Path | None = None  # the nearest folder of `top` that existed
        self.record: Path | None = None  # a sweep's multirun.yaml
        self.accepted_dirs: set[Path] = set()  # Hydra's output dirs of the runs accepted

    def note(self, top: str, record: str | None = None) -> None:
        self.top = Path(os.path.abspath(top))
        self.existing = next(p for p in (self.top, *self.top.parents) if p.exists())
        self.record = None if record is None else Path(os.path.abspath(record))
        self.accepted_dirs = set()

    def accepted(self, output_dir: Path | None) -> None:
        if output_dir is not None:
            self.accepted_dirs.add(output_dir)

    def remove(self, output_dir: Path | None) -> None:
        if self.top is None or output_dir is None or output_dir in self.accepted_dirs:
            return
        if not output_dir.is_relative_to(self.top):
            return  # not a run of the Hydra command noted (a test's own config, say)
        if self.record is not None and not self.accepted_dirs:
            self.record.unlink(missing_ok=True)  # a sweep none of whose runs was accepted
        for folder in (output_dir, *output_dir.parents):
            if folder == self.existing or not folder.is_relative_to(self.existing):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: another run's of the sweep, or files put there
                break


_hydra_made = _HydraMade()


def note_hydra_dirs(top: str, record: str | None = None) -> None:
    """Before Hydra creates `top` (hydra.run.dir, or hydra.sweep.dir and its `record`): what a
    run refused later removes (`remove_unaccepted`)."""
    _hydra_made.note(top, record)


def remove_unaccepted() -> None:
    """A run ending before it was accepted (refused, failed or stopped) leaves nothing behind:
    the folders Hydra created for it, if empty, and a sweep's multirun.yaml if none of its runs
    was accepted."""
    _hydra_made.remove(_hydra_output_dir())


def _hydra_output_dir() -> Path | None:
    """The directory Hydra made for the run of this process (None outside a Hydra run)."""
    if not HydraConfig.initialized():
        return None
    out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", throw_on_missing=False)
    return None if out is None else Path(out)


def _write_hydra_record(command: DictConfig) -> None:
    """Hydra's record of the command (.hydra/config.yaml, hydra.yaml, overrides.yaml), which the
    configs keep Hydra from writing itself (hydra.output_subdir: null) so that a refused run
    never rewrites that of the run whose directory it was given."""
    out = _hydra_output_dir()
    if out is None:
        return
    hydra = HydraConfig.get()
    record = out / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(command, [k for k in command if k != "hydra"])
    OmegaConf.save(task, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), record / "hydra.yaml")
    OmegaConf.save(hydra.overrides.task, record / "overrides.yaml")


def continue_log(logger, epoch: int) -> None:
    """A resumed run's logs/metrics.csv keeps the rows of the epochs up to the checkpoint's
    (those of a later epoch the stopped process had begun, or of its test pass, are logged
    again), where Lightning's CSV logger would delete the file it finds."""
    if not isinstance(logger, CSVLogger):
        return  # TensorBoard adds an event file beside the earlier ones
    path = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if _logged_by_epoch(row, epoch)]
    writer = logger.experiment  # Lightning's writer: it has deleted the file
    writer.metrics = [*rows, *writer.metrics]
    writer.save()


def _logged_by_epoch(row: dict, epoch: int) -> bool:
    """A whole row (not one a kill cut short) logged at or before `epoch`."""
    if None in row or None in row.values():
        return False
    try:
        return int(row["epoch"]) <= epoch
    except (KeyError, ValueError):
        return False


def check_weights(state: dict, found: dict, source) -> None:
    """Refuse, in one line, a checkpoint whose tensors (`found`: by name, tensors or shapes)
    are not those of the network built (`state`, its state dict)."""
    shapes = {k: _shape(v) for k, v in found.items()}
    missing = [k for k in state if k not in shapes]
    unknown = [k for k in shapes if k not in state]
    resized = [k for k in state if k in shapes and shapes[k] != tuple(state[k].shape)]
    if missing or unknown or resized:
        example = (missing or unknown or resized)[0]
        raise ValueError(
            f"{source}: the weights of another network ({len(missing)} of this network's "
            f"tensors missing, {len(unknown)} unknown, {len(resized)} of another shape; "
            f"first: {example})"
        )


def _shape(value) -> tuple | None:
    shape = getattr(value, "shape", value)
    return tuple(shape) if isinstance(shape, tuple) else None


def checkpoint_path(source: Path) -> Path:
    """A run directory's checkpoint, or the checkpoint file given."""
    path = source / CHECKPOINT if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's content; a file that is not one (or is truncated) is one ValueError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises is the same refusal
        raise ValueError(f"{path}: not a checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path}: not a checkpoint (no state_dict)")
    return ckpt


def _resolved(cfg: DictConfig) -> dict:
    """The configuration as plain values (Hydra's own node left out)."""
    values = {}
    for key in cfg:
        if key != "hydra":
            value = cfg[key]
            values[key] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
    return values


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
