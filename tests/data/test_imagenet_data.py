"""ImageNet-style ImageFolder trees: splits, transforms, loaders and path errors."""

import re

import pytest
import torch
from PIL import Image

from edmips.data import ImageNetDataModule


def make_tree(root, per_class=6, classes=("cat", "dog", "eel")):
    for split, n in (("train", per_class), ("val", 2)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                ext = "JPEG" if i % 2 else "png"
                img = Image.new("RGB", (40 + 3 * i, 30), (80 * c, 10 * i, 50))
                img.save(folder / f"{i}.{ext}")
    return root


def module(root, **kw):
    args = dict(
        path=root,
        batch_size=4,
        val_size=5,
        seed=0,
        num_workers=0,
        num_classes=3,
        image_size=24,
        resize_size=28,
    )
    return ImageNetDataModule(**{**args, **kw})


def test_attributes_are_there_before_setup():
    dm = ImageNetDataModule(path="nowhere")
    assert (dm.name, dm.num_classes, dm.input_size) == ("imagenet", 1000, (3, 224, 224))
    assert len(dm.mean) == len(dm.std) == 3


def test_splits_and_batches(tmp_path):
    dm = module(make_tree(tmp_path))
    dm.setup("fit")
    train, val, test = (dm.datasets[k] for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (13, 5, 6)
    assert not set(train.indices) & set(val.indices)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 3, 24, 24) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0 <= xb.min() and xb.max() <= 1 and xb.max() > 0.2  # [0, 1], not normalized
    assert len(dm.train_dataloader()) == 13 // 4  # drop_last
    assert sum(len(y) for _, y in dm.val_dataloader()) == 5
    assert sum(len(y) for _, y in dm.test_dataloader()) == 6


def test_eval_transform_is_deterministic_and_split_is_seeded(tmp_path):
    make_tree(tmp_path)
    dm = module(tmp_path)
    dm.setup("fit")
    a = torch.cat([x for x, _ in dm.val_dataloader()])
    b = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(a, b)
    other = module(tmp_path, seed=1)
    other.setup("fit")
    assert other.datasets["val"].indices != dm.datasets["val"].indices


def test_default_sizes_are_224(tmp_path):
    dm = module(make_tree(tmp_path, per_class=2), image_size=224, resize_size=256, val_size=1)
    dm.setup("fit")
    assert next(iter(dm.test_dataloader()))[0].shape == (4, 3, 224, 224)
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 224, 224)


def test_missing_tree_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} not found")):
        module(missing).setup("fit")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no val/ folder")):
        module(tmp_path).setup("fit")


def test_wrong_class_count_is_reported(tmp_path):
    with pytest.raises(ValueError, match="has 3 classes, expected num_classes=1000"):
        module(make_tree(tmp_path), num_classes=1000).setup("fit")


def test_a_class_folder_without_images_or_a_tree_of_one_class_is_refused(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(ValueError) as e:
        module(tmp_path, num_classes=4).setup("fit")
    assert str(e.value).startswith(f"imagenet: {tmp_path / 'train'}: Found no valid file for")
    assert "fox" in str(e.value) and "\n" not in str(e.value)
    one = make_tree(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match=r"train has training images of 1 class only: a clas"):
        module(one, num_classes=1).setup("fit")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_does_not_decode_stops_in_one_line_naming_it(tmp_path, workers):
    from edmips.core.cli import one_line_errors

    make_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "3.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # cut short: the header reads, the pixels do not
    dm = module(tmp_path, num_workers=workers, val_size=0, batch_size=1)  # every image read
    dm.setup("fit")  # the tree is fine; the file is met when it is decoded
    with pytest.raises(SystemExit) as e:
        with one_line_errors():
            for _ in dm.train_dataloader():
                pass
    assert str(e.value).startswith(f"error: imagenet: {bad} is not a readable image (")
    assert str(e.value).endswith("): replace or remove it") and "\n" not in str(e.value)


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)  # as Lightning does before each training epoch
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.slow
def test_a_resumed_run_draws_the_batches_and_augmentations_of_an_uninterrupted_one(tmp_path):
    """Worker processes crop and flip at random: epoch 2 of a loader made anew (a resume)
    equals epoch 2 of the loader that ran epochs 0 and 1, and differs from epoch 1."""
    make_tree(tmp_path, per_class=8)
    dm = module(tmp_path, num_workers=2, val_size=0)
    dm.setup("fit")
    going_on = dm.train_dataloader()
    first, second = _epoch(going_on, 0), _epoch(going_on, 1)
    third = _epoch(going_on, 2)
    resumed = _epoch(dm.train_dataloader(), 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(third, resumed))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(second, third))
    assert len(first) == len(resumed) > 1
