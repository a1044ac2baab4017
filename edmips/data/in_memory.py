"""Base DataModule for data sets held whole in memory as uint8 tensors (synthetic, CIFAR-10)."""

import pytorch_lightning as pl
import torch
from torch import Tensor

from edmips.data.common import check_classes, split_indices
from edmips.data.tensor_loader import TensorLoader


class InMemoryDataModule(pl.LightningDataModule):
    """Splits, places and batches uint8 image tensors; subclasses only implement ``load``.

    ``setup`` holds out ``val_size`` training images (seeded permutation) as the validation
    split and, with ``on_device``, moves everything once to the trainer's device.
    """

    name: str = ""
    num_classes: int = 10
    input_size: tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int = 1000,
        seed: int = 0,
        augment: bool = True,
        on_device: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        self.batch_size, self.val_size, self.seed = batch_size, val_size, seed
        self.augment, self.on_device = augment, on_device
        self.eval_batch_size = eval_batch_size or batch_size
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``train_images, train_labels, test_images, test_labels`` (uint8 NCHW, int)."""
        raise NotImplementedError

    def source(self) -> str:
        """What the data were read from, as error messages name it."""
        return f"the {self.name} data"

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            train_x, train_y, test_x, test_y = self.load()
            train_y, test_y = train_y.long(), test_y.long()
            check_classes(self.name, self.source(), len(torch.unique(train_y)))
            train_i, val_i = split_indices(len(train_x), self.val_size, self.seed, self.name)
            self.splits = {
                "train": (train_x[train_i], train_y[train_i]),
                "val": (train_x[val_i], train_y[val_i]),
                "test": (test_x, test_y),
            }
        device = self._device()
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    def _device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, split: str, train: bool) -> TensorLoader:
        if not self.splits:
            raise RuntimeError(f"{self.name}: call setup() before asking for a dataloader")
        rank, world_size = self._rank()
        # Epochs already trained: on resume Lightning builds the loaders before it advances
        # current_epoch past the checkpoint's epoch, but `processed` already counts it.
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0
        return TensorLoader(
            *self.splits[split],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            augment=train and self.augment,
            drop_last=train,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", train=False)
