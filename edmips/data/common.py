"""Helpers the DataModules share: config paths, the seeded train/validation split and the
refusal of a data set of one class."""

import os
from pathlib import Path

import torch
from torch import Tensor


def resolve_path(path: str | os.PathLike) -> Path:
    """A config path made absolute against the directory the user started in.

    Hydra may change the working directory of a run; ``to_absolute_path`` undoes that when
    Hydra is initialised and falls back to the current directory otherwise.
    """
    path = os.path.expanduser(os.fspath(path))
    try:
        from hydra.utils import to_absolute_path
    except ImportError:  # Hydra is optional for library use
        return Path(path).absolute()
    return Path(to_absolute_path(path))


def split_indices(n: int, val_size: int, seed: int, name: str) -> tuple[Tensor, Tensor]:
    """Seeded disjoint (train, val) index tensors; ``val_size`` of the ``n`` go to val.

    Sorted within each split so that the underlying order (e.g. files by class) is kept.
    """
    if not 0 <= val_size < n:
        raise ValueError(f"{name}: val_size={val_size} must be in [0, {n}) ({n} training images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def check_classes(name: str, source, classes: int) -> None:
    """A training set of one class is refused, not warned about: with every label the same the
    network need only predict that class, so the cross-entropy says nothing about which layers
    need their bits (a search would allocate by cost alone) and every network scores 100%.
    It is a wrong label array or a subset cut from class-sorted data, never a task."""
    if classes < 2:
        raise ValueError(
            f"{name}: {source} has training images of {classes} class only: a classifier "
            "learns nothing from it (wrong labels, or a subset of class-sorted data?)"
        )
