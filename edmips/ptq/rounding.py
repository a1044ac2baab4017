"""How ptq.py rounds the weights: `ptq.rounding` (nearest, or AdaRound's learned rounding:
edmips.ptq.adaround) and `ptq.reconstruction` (what the rounding is learned to reproduce: each
layer's output, or each block's: edmips.ptq.reconstruct), checked before anything is built
(edmips.programs.checks) and applied after calibration."""

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from edmips.ptq.adaround import Settings, round_network
from edmips.ptq.reconstruct import reconstruct_network
from edmips.ptq.stats import batches

log = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "adaround")
LEARNERS = {"layer": round_network, "block": reconstruct_network}  # by ptq.reconstruction
RECONSTRUCTIONS = tuple(LEARNERS)


@dataclass(frozen=True)
class Rounding:
    """ptq.rounding, ptq.reconstruction, ptq.bias_correction and ptq.adaround, checked
    (edmips.programs.checks)."""

    method: str  # ROUNDINGS
    reconstruction: str  # RECONSTRUCTIONS
    bias_correction: str  # as configured
    settings: Settings  # AdaRound's

    @property
    def correction(self) -> str:
        """The bias correction applied: none under AdaRound, whose stored weights it would not
        move (edmips.ptq.adaround's docstring)."""
        return "none" if self.method == "adaround" else self.bias_correction


def apply(rounding: Rounding, model: nn.Module, float_net: nn.Module, loader, seed: int) -> dict:
    """Round `model`'s weights as ptq.rounding says; what metrics.json records of it."""
    if rounding.method == "nearest":
        return {"rounding": "nearest"}
    if rounding.bias_correction != "none":
        log.info("ptq.bias_correction=%s is not applied after adaround", rounding.bias_correction)
    start = time.perf_counter()
    settings = rounding.settings
    images = torch.cat(list(batches(loader, settings.images)))
    if len(images) < settings.images:
        raise ValueError(
            f"ptq.adaround.images={settings.images}: the training split has only {len(images)}"
        )
    reconstruction = rounding.reconstruction
    learn = LEARNERS[reconstruction]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:  # on the GPU where there is one (an ImageNet network's blocks); the rest runs on the CPU
        results = learn(model.to(device), float_net.to(device), images.to(device), settings, seed)
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
        reconstruction,
        len(results),
        reconstruction,
        len(images),
        seconds,
        changed,
        total,
        ratio / max(1, len(results)),
        reconstruction,
    )
    return {
        "rounding": "adaround",
        "reconstruction": reconstruction,
        "rounding_time_s": seconds,
    }


def adaround_settings(s) -> Settings:
    """`ptq.adaround` (of ptq.py's config, or conf/ptq.yaml as it is), checked, as Settings."""
    return Settings(
        int(s.iterations), int(s.images), int(s.batch_size), float(s.regularization), float(s.drop)
    )
