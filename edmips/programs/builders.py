"""What search.py and retrain.py share: data, model and Trainer from the Hydra config."""

import logging
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import RichProgressBar
from torch import nn

from edmips.core.divergence import StopOnDivergence
from edmips.core.rundir import RunState, epoch_checkpoint
from edmips.cost import layers as cost_layers
from edmips.models.tv import check_image_size


def instantiate(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, where a ValueError or FileNotFoundError of the target (a file it
    reads, a value it refuses) comes out as itself, not inside Hydra's multi-line
    InstantiationException: the entry points' one-line errors see what raised it."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return instantiate(cfg.data)


def build_model(cfg: DictConfig, datamodule, **overrides) -> nn.Module:
    """The registered model named in `cfg.model`, sized for the data's classes and statistics;
    refused where it is built for another image size than the data's."""
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        mean=datamodule.mean,
        std=datamodule.std,
        **overrides,
    )
    check_image_size(model, datamodule.input_size)
    return model


def on_gpu(cfg: DictConfig) -> bool:
    accelerator = cfg.trainer.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def fast_path(cfg: DictConfig) -> bool:
    """bf16 autocast and channels_last: on by default on a GPU (`fast=false` turns them off)."""
    return bool(cfg.fast) and on_gpu(cfg)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(setting, cfg: DictConfig) -> str | None:
    """The torch.compile mode of the network, None for eager. `auto`: the default mode on a GPU,
    where the compiled step is the fastest measured, and eager on a CPU, where compiling a
    short run costs more than it saves; true / false; or a torch.compile mode by name."""
    if setting == "auto":
        return "default" if on_gpu(cfg) else None
    if isinstance(setting, bool):
        return "default" if setting else None
    if setting in COMPILE_MODES:
        return setting
    raise ValueError(
        f"compile must be auto, true, false or one of {', '.join(COMPILE_MODES)}; got {setting!r}"
    )


# What Lightning and the libraries under it print that says nothing about the run: its "💡 Tip"
# advertisements (litlogger, litmodels), the accelerators no run here uses, and, for a run of a
# few batches (the README's short runs), a logging interval longer than the epoch.
LIGHTNING_CHATTER = ("💡 Tip", "TPU available", "HPU available")
CHATTER_WARNINGS = (r"The number of training batches \(\d+\) is smaller than the logging interval",)
# Deprecation notices a dependency raises about its own use of another (Lightning calling a
# deprecated torch API): nothing a user of edmips can act on. Those raised in edmips' own code
# (and in __main__) still show.
DEPENDENCY = r"(?!edmips\b|__main__\b)"


def _not_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LIGHTNING_CHATTER)


def quiet_dependencies() -> None:
    """Keep a run's output to what it does: drop LIGHTNING_CHATTER and the dependencies'
    deprecation warnings (idempotent: called for every Trainer)."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _not_chatter not in rank_zero.filters:
        rank_zero.addFilter(_not_chatter)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=DEPENDENCY)
    for message in CHATTER_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def build_trainer(cfg: DictConfig, program: str, callbacks=()) -> L.Trainer:
    """The Trainer of a `program` run (search, retrain): stops on divergence (before the epoch's
    outputs are written), checkpoints every epoch with the run's configuration inside; quiet
    (quiet_dependencies)."""
    quiet_dependencies()
    out = Path(cfg.output_dir)
    precision = "bf16-mixed" if fast_path(cfg) else cfg.trainer.get("precision", "32-true")
    progress = [RichProgressBar(leave=True)] if cfg.trainer.get("enable_progress_bar", True) else []
    return hydra.utils.instantiate(
        cfg.trainer,
        precision=precision,
        default_root_dir=str(out),
        logger=build_logger(cfg),
        callbacks=[
            StopOnDivergence(cfg.trainer.get("log_every_n_steps", 50)),
            *progress,
            epoch_checkpoint(out),
            RunState(cfg, program),
            *callbacks,
        ],
    )


def build_logger(cfg: DictConfig):
    """The `logger` group's logger (CSV by default); a missing optional package is one line."""
    try:
        return hydra.utils.instantiate(cfg.logger)
    except InstantiationException as e:
        if isinstance(e.__cause__, ImportError):
            problem = str(e.__cause__).splitlines()[0]
            raise ValueError(f"logger {cfg.logger._target_}: {problem}") from None
        raise


def measure(model: nn.Module, datamodule) -> list[cost_layers.LayerCost]:
    return cost_layers.measure(model, tuple(datamodule.input_size))
