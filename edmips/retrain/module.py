"""RetrainModule: quantization-aware training of a network with fixed per-layer bit-widths."""

import torch.nn.functional as F
from torch import Tensor, nn

from edmips.core.classifier import Classifier, make_optimizer
from edmips.nn.fold import freeze_batch_norms


class RetrainModule(Classifier):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        channels_last: bool = False,
        compile: str | None = None,
        network: dict | None = None,
        bn_freeze_epoch: int | None = None,
    ):
        super().__init__(model, num_classes, channels_last, compile)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.network = network  # what rebuilds the network from a checkpoint alone (export)
        self.bn_freeze_epoch = bn_freeze_epoch  # folded batch norms: running statistics from it

    def on_train_epoch_start(self) -> None:
        if self.bn_freeze_epoch is not None and self.current_epoch >= self.bn_freeze_epoch:
            freeze_batch_norms(self.model)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits.detach(), y)
        self.log_dict(
            {"train/loss": loss.detach(), "train/acc": self.train_acc},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
        )
        return loss

    def configure_optimizers(self):
        optimizer = make_optimizer(self.optimizer, self.model.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["edmips_network"] = self.network
