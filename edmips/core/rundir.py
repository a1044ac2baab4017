"""The run directory: one run per directory, a checkpoint after every epoch, and resuming it.

A run writes `checkpoints/last.ckpt` (atomically, replacing the previous one) at the end of
every epoch. The checkpoint holds the run's own configuration, so `resume=<run dir or
checkpoint>` continues the run in its directory with the configuration it started with.
A new run refuses a directory that already holds one: two runs never mix their files.
"""

import logging
import pickle
import signal
import zipfile
from pathlib import Path

import pytorch_lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"
FINAL = ("found.json", "metrics.json")  # written when a run has finished
RESULTS = (*FINAL, "history.json", str(CHECKPOINT))
CONFIG_KEY = "edmips_config"


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


class StoreConfig(Callback):
    """Puts the run's resolved configuration (and which program ran it) in every checkpoint."""

    def __init__(self, cfg: DictConfig, program: str):
        self.config = _resolved(cfg)
        self.program = program

    def on_save_checkpoint(self, trainer: L.Trainer, module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = {"program": self.program, "config": self.config}


def start(cfg: DictConfig, program: str) -> tuple[DictConfig, Path | None]:
    """The configuration to run and the checkpoint to resume from (None: a fresh run).

    A fresh run refuses a directory holding another run's files; `resume=` takes the stored
    configuration of the run it continues and that run's directory."""
    if cfg.get("resume") is None:
        out = Path(cfg.output_dir)
        for name in RESULTS:
            if (out / name).exists():
                raise ValueError(
                    f"{out / name} exists: {out} holds another run; start in a new directory "
                    f"(hydra.run.dir=...) or continue that run with resume={out}"
                )
        return cfg, None
    ckpt = checkpoint_path(Path(str(cfg.resume)))
    stored = load_checkpoint(ckpt).get(CONFIG_KEY)
    if stored is None or stored["program"] != program:
        raise ValueError(f"{ckpt}: not a checkpoint of {program}.py, cannot resume it")
    run_dir = ckpt.parent.parent
    for name in FINAL:
        if (run_dir / name).exists():
            raise ValueError(f"{run_dir / name} exists: that run has finished, nothing to resume")
    log.info("resuming %s with the configuration it started with", ckpt)
    resumed = OmegaConf.create(stored["config"])
    with open_dict(resumed):
        resumed.output_dir = str(run_dir)
        resumed.resume = str(ckpt)
    return resumed, ckpt


def fit(trainer: L.Trainer, module, datamodule, resume_from: Path | None) -> None:
    """trainer.fit; a SIGTERM (a cluster's time limit) ends the process with status 143 and
    the way to continue, where Lightning would exit 0 as if the run had finished."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except SIGTERMException:
        run_dir = Path(trainer.default_root_dir)
        log.error("stopped by SIGTERM: continue the run with resume=%s", run_dir)
        raise SystemExit(128 + signal.SIGTERM) from None


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
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
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
