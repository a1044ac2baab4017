"""CIFAR-10 held in memory as uint8 tensors, from a JPEG .npz copy or the torchvision folder."""

import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edmips.data.common import resolve_path
from edmips.data.in_memory import InMemoryDataModule

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
NPZ_KEYS = {f"{s}_{k}" for s in ("train", "test") for k in ("jpeg", "offsets", "labels")}
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _message(path: Path, problem: str) -> str:
    return (
        f"cifar10: {path} {problem}: expected a .npz copy or a folder with {FOLDER} "
        "(set data.path=..., or data.download=true)"
    )


def find_folder(path: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or inside ``path``, if it holds the batches."""
    for folder in (path, path / FOLDER):
        if (folder / TRAIN_BATCHES[0]).is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def load_npz(path: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decode the JPEG .npz copy (arrays ``{train,test}_{jpeg,offsets,labels}``)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        data = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        problem = f"is not a readable .npz ({str(err).splitlines()[0]})"
        raise ValueError(_message(path, problem)) from None
    missing = NPZ_KEYS - set(getattr(data, "files", ()))
    if missing:
        raise ValueError(_message(path, f"lacks arrays {sorted(missing)}"))
    out = []
    with data:
        for split in ("train", "test"):
            try:
                blob = torch.from_numpy(data[f"{split}_jpeg"])
                offsets = data[f"{split}_offsets"].tolist()
                labels = data[f"{split}_labels"]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                problem = f"is damaged ({split}: {str(err).splitlines()[0]})"
                raise ValueError(_message(path, problem)) from None
            if not np.issubdtype(labels.dtype, np.integer):  # 2.7 is no class: never truncated
                raise ValueError(_message(path, f"has {labels.dtype} {split} labels, not integers"))
            labels = torch.from_numpy(labels.astype(np.int64))
            files = [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=False)]
            if not files:
                raise ValueError(_message(path, f"has no {split} images"))
            try:
                # One batched call: torchvision decodes a list far faster than image by image.
                images = torch.stack(decode_jpeg(files, mode=ImageReadMode.RGB))
            except RuntimeError as err:
                problem = f"holds a {split} image that is not a readable 32x32 JPEG ({err})"
                raise ValueError(_message(path, problem.splitlines()[0])) from None
            _check_split(path, split, images, labels)
            out += [images, labels]
    return tuple(out)


def _check_split(path: Path, split: str, images: Tensor, labels: Tensor) -> None:
    if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        problem = f"has {split} images {tuple(images.shape)} for {len(labels)} labels"
        raise ValueError(_message(path, problem))
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < 10:
        problem = f"has {split} labels outside 0-9 ({int(labels.min())}..{int(labels.max())})"
        raise ValueError(_message(path, problem))


def load_folder(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Read the pickled batches of the standard ``cifar-10-batches-py`` folder."""
    out = []
    for names in (TRAIN_BATCHES, ["test_batch"]):
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        out += [torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))]
    return tuple(out)


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10: 50,000 train images (``val_size`` held out for validation), 10,000 test.

    ``path``: a ``.npz`` JPEG copy, or a directory holding (or being) ``cifar-10-batches-py``;
    relative paths are taken from where the run started. With ``download`` and no data there,
    torchvision downloads the folder format into ``path``.
    """

    name = "cifar10"
    num_classes = 10
    input_size = (3, 32, 32)
    mean, std = MEAN, STD

    def __init__(
        self,
        path: str | os.PathLike = "data/cifar10",
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = False,
        augment: bool = True,
        on_device: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__(batch_size, val_size, seed, augment, on_device, eval_batch_size)
        self.path, self.download = resolve_path(path), download

    def prepare_data(self) -> None:
        # Runs on one process per node before setup: the place to download.
        if self.download and not self.path.is_file() and find_folder(self.path) is None:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(self.path), train=True, download=True)

    def source(self) -> str:
        return str(self.path)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        path = self.path
        if path.is_file():
            return load_npz(path)
        folder = find_folder(path)
        if folder is not None:
            return load_folder(folder)
        if path.is_dir():
            raise FileNotFoundError(_message(path, f"has no {FOLDER} data"))
        raise FileNotFoundError(_message(path, "not found"))
