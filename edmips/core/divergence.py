"""Training stops when it diverges: a loss, selector or multiplier that is not finite."""

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from edmips.nn.layers import is_selector

WATCHED = ("loss", "selectors", "multiplier")


class Diverged(ValueError):
    """Training produced a non-finite value; nothing trained from then on can be used."""


class StopOnDivergence(Callback):
    """Records on the device the first step at which each watched value stopped being finite
    (no per-step host sync) and raises Diverged at the next check: every `check_every` steps
    and at the end of every epoch, before the epoch's checkpoint or architecture is written."""

    def __init__(self, check_every: int = 50):
        self.check_every = check_every
        self.first_bad: Tensor | None = None  # [watched, (epoch, step)], -1: finite so far

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        values = [loss, _selectors(module), getattr(module, "mu", None)]
        device = module.device
        finite = torch.stack(
            [
                torch.ones((), dtype=torch.bool, device=device)
                if v is None
                else torch.isfinite(v.detach()).all().to(device)
                for v in values
            ]
        )
        if self.first_bad is None:
            self.first_bad = torch.full((len(WATCHED), 2), -1, dtype=torch.long, device=device)
        # filled on the device: a tensor copied from the host would wait for the device
        where = torch.stack(
            [
                torch.full((), i, dtype=torch.long, device=device)
                for i in (trainer.current_epoch, batch_idx)
            ]
        )
        newly = (~finite & (self.first_bad[:, 0] < 0)).unsqueeze(1)
        self.first_bad = torch.where(newly, where, self.first_bad)
        if (batch_idx + 1) % self.check_every == 0:
            self.check()

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        self.check()

    def check(self) -> None:
        if self.first_bad is None:
            return
        for name, (epoch, step) in zip(WATCHED, self.first_bad.tolist()):
            if epoch >= 0:
                raise Diverged(
                    f"training diverged: the {name} became non-finite at epoch {epoch} step "
                    f"{step}; the learning rate is likely too high"
                )


def _selectors(module) -> Tensor | None:
    alphas = [p.detach().flatten() for n, p in module.named_parameters() if is_selector(n)]
    return torch.cat(alphas) if alphas else None
