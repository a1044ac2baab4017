"""Lightning DataModules yielding float [0, 1] NCHW images (not normalized) and int64 labels."""

from edmips.data.cifar10 import CIFAR10DataModule
from edmips.data.imagenet import ImageNetDataModule
from edmips.data.synthetic import SyntheticDataModule, make_synthetic
from edmips.data.tensor_loader import TensorLoader

__all__ = [
    "CIFAR10DataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "TensorLoader",
    "make_synthetic",
]
