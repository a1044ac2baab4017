"""How ptq.py rounds the weights, from its config: `ptq.rounding` (nearest, or AdaRound's learned
rounding: edmips.ptq.adaround) and `ptq.reconstruction` (what the rounding is learned to
reproduce: each layer's output, or each block's: edmips.ptq.reconstruct), checked before
anything is built and applied after calibration."""

import logging
import time

import torch
from omegaconf import DictConfig
from torch import nn

from edmips.core.checks import PTQ_DEFAULTS
from edmips.ptq.adaround import Settings, round_network
from edmips.ptq.reconstruct import reconstruct_network
from edmips.ptq.stats import batches
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.registry import Family, get

log = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "adaround")
LEARNERS = {"layer": round_network, "block": reconstruct_network}  # by ptq.reconstruction
RECONSTRUCTIONS = tuple(LEARNERS)


def check(cfg: DictConfig, family: Family) -> None:
    """ptq.rounding and its settings, before anything is built (`family`: the run's)."""
    rounding, reconstruction = cfg.ptq.rounding, cfg.ptq.reconstruction
    if rounding not in ROUNDINGS:
        raise ValueError(f"ptq.rounding={rounding}: choose from {', '.join(ROUNDINGS)}")
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(
            f"ptq.reconstruction={reconstruction}: choose from {', '.join(RECONSTRUCTIONS)}"
        )
    if rounding == "nearest":
        if reconstruction != PTQ_DEFAULTS["ptq.reconstruction"]:
            raise ValueError(
                f"ptq.reconstruction={reconstruction}: only a learned rounding reconstructs; "
                "add ptq.rounding=adaround"
            )
        return
    weight = family.weight
    if not issubclass(get(weight), MaxAbsWeight):
        raise ValueError(
            f"ptq.rounding=adaround: quant's weight quantizer ({weight}) is not max-abs, the grid "
            "AdaRound learns on (quant=ptq's is): drop it"
        )
    correction = cfg.ptq.bias_correction
    if correction not in ("none", PTQ_DEFAULTS["ptq.bias_correction"]):
        raise ValueError(
            f"ptq.bias_correction={correction}: ptq.rounding=adaround stores the learned weights, "
            "so there is nothing left to correct: drop it"
        )
    for key in ("iterations", "images", "batch_size"):
        value = cfg.ptq.adaround[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ptq.adaround.{key}={value}: a whole number, at least 1")
    value = cfg.ptq.adaround.regularization
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"ptq.adaround.regularization={value}: a number, at least 0")
    value = cfg.ptq.adaround.drop
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"ptq.adaround.drop={value}: a probability, at least 0 and below 1")


def correction(cfg: DictConfig) -> str:
    """The bias correction applied: none under AdaRound, whose stored weights it would not move
    (edmips.ptq.adaround's docstring)."""
    return "none" if cfg.ptq.rounding == "adaround" else cfg.ptq.bias_correction


def apply(cfg: DictConfig, model: nn.Module, float_net: nn.Module, loader) -> dict:
    """Round `model`'s weights as ptq.rounding says; what metrics.json records of it."""
    if cfg.ptq.rounding == "nearest":
        return {"rounding": "nearest"}
    if cfg.ptq.bias_correction != "none":
        log.info("ptq.bias_correction=%s is not applied after adaround", cfg.ptq.bias_correction)
    start = time.perf_counter()
    settings = adaround_settings(cfg)
    images = torch.cat(list(batches(loader, settings.images)))
    if len(images) < settings.images:
        raise ValueError(
            f"ptq.adaround.images={settings.images}: the training split has only {len(images)}"
        )
    learn = LEARNERS[cfg.ptq.reconstruction]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:  # on the GPU where there is one (an ImageNet network's blocks); the rest runs on the CPU
        results = learn(
            model.to(device), float_net.to(device), images.to(device), settings, cfg.seed
        )
    finally:
        model.cpu()
        float_net.cpu()
    seconds = time.perf_counter() - start
    changed = sum(r.changed for r in results.values())
    total = sum(r.weights for r in results.values())
    ratio = sum(r.learned_error / max(r.nearest_error, 1e-30) for r in results.values())
    log.info(
        "adaround (%s reconstruction): %d %ss on %d images in %.1f s; %d of %d weights rounded "
        "away from nearest; output error %.2f of nearest rounding's (mean over %ss)",
        cfg.ptq.reconstruction,
        len(results),
        cfg.ptq.reconstruction,
        len(images),
        seconds,
        changed,
        total,
        ratio / max(1, len(results)),
        cfg.ptq.reconstruction,
    )
    return {
        "rounding": "adaround",
        "reconstruction": cfg.ptq.reconstruction,
        "rounding_time_s": seconds,
    }


def adaround_settings(cfg: DictConfig) -> Settings:
    """`cfg.ptq.adaround` (ptq.py's config, or conf/ptq.yaml as it is) as Settings."""
    s = cfg.ptq.adaround
    return Settings(
        int(s.iterations), int(s.images), int(s.batch_size), float(s.regularization), float(s.drop)
    )
