"""CIFAR-10 from both on-disk formats, and the errors for a wrong or missing path."""

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edmips.data import CIFAR10DataModule
from edmips.data.cifar10 import MEAN, load_npz

REAL_NPZ = Path(__file__).parents[2] / ".." / "shared" / "data" / "cifar10-jpeg.npz"


def write_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> np.ndarray:
    """A tiny cifar-10-batches-py folder in the real pickle layout; returns all train rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        rows.append(data)
    return np.concatenate(rows[:5])


def write_npz(path: Path, n_train: int = 6, n_test: int = 3) -> dict:
    """A small .npz in the JPEG format of DESIGN.md, with flat-colour images."""
    arrays = {"classes": np.array(["a", "b"])}
    for split, n in (("train", n_train), ("test", n_test)):
        files = []
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (20 * i, 100, 200)).save(buf, "JPEG", quality=95)
            files.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(files)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(f) for f in files]).astype(np.int64)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_attributes_are_there_before_setup():
    dm = CIFAR10DataModule(path="nowhere")
    assert (dm.name, dm.num_classes, dm.input_size) == ("cifar10", 10, (3, 32, 32))
    assert dm.mean == MEAN and len(dm.std) == 3


@pytest.mark.parametrize("inner", [True, False])
def test_torchvision_folder_loads(tmp_path, inner):
    train_rows = write_batches(tmp_path / "cifar-10-batches-py")
    path = tmp_path if inner else tmp_path / "cifar-10-batches-py"
    dm = CIFAR10DataModule(path=path, val_size=5, batch_size=4, seed=0)
    dm.setup("fit")
    train_x, train_y = dm.splits["train"]
    assert len(train_x) == 15 and len(dm.splits["val"][0]) == 5 and len(dm.splits["test"][0]) == 4
    # The pickle rows are channel-major 32x32 planes, as torchvision reads them.
    val_x = dm.splits["val"][0]
    expected = {bytes(r) for r in train_rows}
    assert all(bytes(img.flatten().numpy()) in expected for img in torch.cat([train_x, val_x]))
    assert train_y.dtype == torch.int64
    xb, yb = next(iter(dm.test_dataloader()))
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1


def test_npz_loads_and_decodes(tmp_path):
    arrays = write_npz(tmp_path / "c.npz")
    train_x, train_y, test_x, test_y = load_npz(tmp_path / "c.npz")
    assert train_x.shape == (6, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (3, 3, 32, 32)
    assert torch.equal(train_y, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    # JPEG is lossy, but a flat colour comes back within a few levels.
    blue = train_x[:, 2].float().mean(dim=(1, 2))
    assert torch.allclose(blue, torch.full((6,), 200.0), atol=4)


def test_relative_path_is_resolved_against_the_start_directory(tmp_path, monkeypatch):
    write_npz(tmp_path / "c.npz")
    monkeypatch.chdir(tmp_path)
    dm = CIFAR10DataModule(path="c.npz", val_size=2)
    monkeypatch.chdir("/")
    dm.setup("fit")
    assert dm.path == tmp_path / "c.npz" and len(dm.splits["train"][0]) == 4


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    expected = re.escape(f"{missing} not found") + ".*cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=expected):
        CIFAR10DataModule(path=missing).setup("fit")
    with pytest.raises(FileNotFoundError, match="has no cifar-10-batches-py data"):
        CIFAR10DataModule(path=tmp_path).setup("fit")


def test_wrong_file_format_names_it(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not a readable .npz")):
        CIFAR10DataModule(path=bad).setup("fit")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks arrays \['test_jpeg'"):
        CIFAR10DataModule(path=tmp_path / "other.npz").setup("fit")


def _emptied(arrays: dict, split: str) -> dict:
    return {
        **arrays,
        f"{split}_jpeg": np.zeros(0, np.uint8),
        f"{split}_offsets": np.zeros(1, np.int64),
        f"{split}_labels": np.zeros(0, np.uint8),
    }


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: _emptied(a, "train"), "has no train images"),
        (lambda a: _emptied(a, "test"), "has no test images"),
        (lambda a: {**a, "train_labels": a["train_labels"] + 0.7}, "has float64 train labels,"),
        (lambda a: {**a, "test_labels": a["test_labels"] * 1.0}, "has float64 test labels, not"),
        (lambda a: {**a, "train_labels": a["train_labels"] * 0 + 3}, "of 1 class only: a class"),
    ],
)
def test_a_npz_without_a_split_or_a_task_is_refused(tmp_path, change, message):
    arrays = write_npz(tmp_path / "good.npz")
    np.savez(tmp_path / "bad.npz", **change(arrays))
    with pytest.raises(ValueError) as e:
        CIFAR10DataModule(path=tmp_path / "bad.npz", val_size=2).setup("fit")
    assert str(e.value).startswith(f"cifar10: {tmp_path / 'bad.npz'} ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_NPZ.exists(), reason=f"{REAL_NPZ} not present")
def test_real_npz_copy():
    dm = CIFAR10DataModule(path=REAL_NPZ, val_size=5000, seed=0)
    dm.setup("fit")
    (train_x, _), (val_x, _), (test_x, test_y) = (dm.splits[k] for k in ("train", "val", "test"))
    assert train_x.shape == (45000, 3, 32, 32) and val_x.shape == (5000, 3, 32, 32)
    assert test_x.shape == (10000, 3, 32, 32) and train_x.dtype == torch.uint8
    assert torch.equal(test_y.bincount(), torch.full((10,), 1000))
    mean = test_x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(MEAN), atol=0.01)
    assert len(dm.train_dataloader()) == 45000 // 128
