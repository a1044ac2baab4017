"""What the search and retrain LightningModules share: the network, its forward on the fast
path, and the validation / test steps with their metrics; and the distance of a quantized
network's class distribution from the float network's, which post-training allocations
measure (arch=sensitivity, arch=search), and what trains part of a network against it."""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


def kl_to(reference: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(reference) || softmax(logits)), averaged over the images: how far a quantized
    network's class distribution is from the float network's (zero for the float network)."""
    target = F.log_softmax(reference, -1)
    return F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean", log_target=True)


@contextmanager
def training_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Within: of `model`'s parameters only `params` take gradients; after, each as it was."""
    trained = {id(p) for p in params}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(id(p) in trained)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def make_optimizer(factory, params) -> torch.optim.Optimizer:
    """factory(params), fused (one kernel per step for all parameters) when the parameters are
    on a GPU, the optimizer has a fused implementation (SGD, Adam, AdamW, Adagrad) and the
    configuration chose no implementation itself (`fused` or `foreach`)."""
    params = list(params)
    chosen = {"fused", "foreach"} & set(getattr(factory, "keywords", {}))
    fusable = "fused" in inspect.signature(factory).parameters and not chosen
    if params and params[0].is_cuda and fusable:
        return factory(params, fused=True)
    return factory(params)


class Classifier(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        channels_last: bool = False,
        compile: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        # compile: a torch.compile mode, None for eager (programs.builders.compile_mode decides).
        self.set_compile(compile)
        # validate_args=False: argument checks read values back to the host on every update.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = self.train_acc.clone()
        self.test_acc = self.train_acc.clone()
        top5 = MulticlassAccuracy(
            num_classes, top_k=min(5, num_classes), average="micro", validate_args=False
        )
        self.val_acc5, self.test_acc5 = top5, top5.clone()

    def set_compile(self, mode: str | None) -> None:
        """Run the network compiled with torch.compile `mode`, or eagerly (None): the start-of-run
        check (edmips.core.device_check) turns compiling off where it fails. Compiling is lazy,
        so this costs nothing until the next forward."""
        self.compile_mode = mode
        # A bound method rather than a submodule: the state dict holds the network once, under
        # "model.", compiled or not, so a checkpoint loads whatever either run chose.
        self.forward_fn = (torch.compile(self.model, mode=mode) if mode else self.model).__call__

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_fn(x)

    def _eval_step(self, batch, metric, metric5, prefix: str) -> None:
        x, y = batch
        logits = self(x)
        metric(logits, y)
        metric5(logits, y)
        self.log_dict(
            {
                f"{prefix}/loss": F.cross_entropy(logits, y),
                f"{prefix}/acc": metric,
                f"{prefix}/acc5": metric5,
            },
            on_epoch=True,
            prog_bar=prefix == "val",
            sync_dist=True,
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_acc5, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_acc5, "test")
