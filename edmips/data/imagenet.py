"""ImageNet from an ImageFolder tree (``train/``, ``val/``) through worker-process DataLoaders.

The tree is checked when it is read (a class folder without images, one class only), the
images when they are decoded: decoding every file up front would cost as long as an epoch, so
a file that does not decode stops the run where it is met, in one line naming the file (the
epoch's checkpoint before it stands: replace the file and resume)."""

import copy
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from edmips.data.common import check_classes, resolve_path, split_indices
from edmips.data.tensor_loader import seed_for

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def transforms(train: bool, image_size: int = 224, resize_size: int = 256):
    """Standard ImageNet augmentation, ending in a float [0, 1] tensor (no Normalize)."""
    from torchvision.transforms import v2

    head = (
        [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    )
    # Crop the PIL image first, then convert: decoding dominates, tensors stay small.
    return v2.Compose([*head, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class UnreadableImage(ValueError):
    """An image file that does not decode. Raised in a DataLoader worker, it reaches the main
    process rebuilt by torch from the worker's whole traceback as text; only its last line,
    this message, is kept, so that it stays one line."""

    def __init__(self, message: str):
        last = message.strip().splitlines()[-1]
        super().__init__(last.removeprefix(f"{__name__}.{type(self).__name__}: "))


def load_image(path: str):
    """The RGB image of a file (torchvision's loader), or UnreadableImage naming the file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise these for bad data
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(
            f"imagenet: {path} is not a readable image ({problem}): replace or remove it"
        ) from None


class EpochSampler(RandomSampler):
    """A random order that is a function of (seed, epoch), as are the loader's workers' seeds:
    `set_epoch` (which Lightning calls before each training epoch) reseeds the generator the
    loader and this sampler share, so a resumed run draws the batches and augmentations an
    uninterrupted one draws."""

    def __init__(self, data, seed: int, generator: torch.Generator):
        super().__init__(data, generator=generator)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(seed_for(self.seed, epoch))


def image_folder(folder: Path, transform):
    """torchvision's ImageFolder of `folder`, with the project's loader; a folder without
    class folders, or a class folder without images, is one line naming the folder."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform, loader=load_image)
    except FileNotFoundError as e:
        raise ValueError(f"imagenet: {folder}: {str(e).splitlines()[0]}") from None


class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet-style data: ``path/train`` (``val_size`` images held out, seeded) and
    ``path/val`` as the test split. Lightning adds the DistributedSampler under DDP.
    """

    name = "imagenet"
    mean, std = MEAN, STD

    def __init__(
        self,
        path: str | os.PathLike = "data/imagenet",
        batch_size: int = 256,
        val_size: int = 10000,
        seed: int = 0,
        num_workers: int = 8,
        num_classes: int = 1000,
        image_size: int = 224,
        resize_size: int = 256,
        eval_batch_size: int | None = None,
        pin_memory: bool = True,
    ):
        super().__init__()
        self.path = resolve_path(path)
        self.batch_size, self.val_size, self.seed = batch_size, val_size, seed
        self.num_workers, self.num_classes, self.pin_memory = num_workers, num_classes, pin_memory
        self.image_size, self.resize_size = image_size, resize_size
        self.input_size = (3, image_size, image_size)
        self.eval_batch_size = eval_batch_size or batch_size
        self.datasets: dict[str, torch.utils.data.Dataset] = {}

    def _folder(self, split: str) -> Path:
        folder = self.path / split
        if not folder.is_dir():
            what = "not found" if not self.path.exists() else f"has no {split}/ folder"
            raise FileNotFoundError(
                f"imagenet: {self.path} {what}: expected an ImageFolder tree with train/ and "
                "val/ (one sub-folder per class; set data.path=...)"
            )
        return folder

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train_dir, test_dir = self._folder("train"), self._folder("val")
        train = image_folder(train_dir, transforms(True, self.image_size))
        check_classes(self.name, train_dir, len(train.classes))
        if len(train.classes) != self.num_classes:
            raise ValueError(
                f"imagenet: {train_dir} has {len(train.classes)} classes, "
                f"expected num_classes={self.num_classes}"
            )
        # The validation split is the same files with eval transforms: copy, do not rescan.
        held_out = copy.copy(train)
        held_out.transform = transforms(False, self.image_size, self.resize_size)
        train_idx, val_idx = split_indices(len(train), self.val_size, self.seed, self.name)
        test = image_folder(test_dir, held_out.transform)
        if test.classes != train.classes:
            raise ValueError(f"imagenet: {test_dir} and {train_dir} have different class folders")
        self.datasets = {
            "train": Subset(train, train_idx.tolist()),
            "val": Subset(held_out, val_idx.tolist()),
            "test": test,
        }

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("imagenet: call setup() before asking for a dataloader")
        workers, generator = self.num_workers, torch.Generator()
        sampler = EpochSampler(self.datasets[split], self.seed, generator) if train else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            # Training workers start anew each epoch, seeded from the epoch's generator:
            # persistent ones would carry their random state from one epoch into the next.
            persistent_workers=workers > 0 and not train,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
