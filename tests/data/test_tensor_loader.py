"""The in-memory loader: batches, epochs, augmentation, sharding, and no host-device syncs."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from edmips.data.tensor_loader import TensorLoader, crop_flip


def data(n=50, h=8, w=8):
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8)
    # Label = index, so every batch says which samples it holds.
    return images, torch.arange(n)


def seen(loader):
    return torch.cat([y for _, y in loader])


def test_eval_batches_keep_every_sample_in_order():
    x, y = data(50)
    loader = TensorLoader(x, y, 16)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(seen(loader), y)
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(xb, x[:16].float() / 255)


def test_train_shuffles_differently_each_epoch_and_drops_last():
    x, y = data(50)
    loader = TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=3)
    first, second = seen(loader), seen(loader)
    assert len(loader) == 3 and len(first) == len(second) == 48
    assert len(set(first.tolist())) == 48  # no repeats within an epoch
    assert not torch.equal(first, second)
    again = TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=3)
    assert torch.equal(seen(again), first)  # seeded
    again.set_epoch(1)
    assert torch.equal(seen(again), second)
    other = TensorLoader(x, y, 16, shuffle=True, drop_last=True, seed=4)
    assert not torch.equal(seen(other), first)


def test_iter_probe_does_not_use_up_an_epoch():
    x, y = data(20)
    loader = TensorLoader(x, y, 5, shuffle=True, seed=1)
    iter(loader)  # Lightning calls iter() once just to check the loader is iterable
    assert loader.epoch == 0


def test_augmentation_changes_images_but_keeps_shape_and_labels():
    x, y = data(64, 12, 12)
    plain = list(TensorLoader(x, y, 64, seed=0))[0][0]
    aug_x, aug_y = list(TensorLoader(x, y, 64, augment=True, seed=0))[0]
    assert aug_x.shape == plain.shape and torch.equal(aug_y, y)
    assert 0 <= aug_x.min() and aug_x.max() <= 1
    changed = (aug_x != plain).flatten(1).any(1).float().mean()
    assert changed > 0.8  # 1 in 18 images keeps offset (4, 4) with no flip


def test_crop_flip_is_a_shift_with_zero_fill_or_its_mirror():
    x = torch.arange(1, 1 + 2 * 3 * 5 * 5, dtype=torch.int64).view(2, 3, 5, 5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = crop_flip(x, 2, gen)
        for img, src in zip(out, x, strict=True):
            padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
            windows = [padded[:, i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
            candidates = windows + [win.flip(-1) for win in windows]
            assert any(torch.equal(img, c) for c in candidates)


@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_and_equal(shuffle):
    x, y = data(103)
    shards = [
        seen(TensorLoader(x, y, 8, shuffle=shuffle, seed=5, rank=r, world_size=4)) for r in range(4)
    ]
    assert all(len(s) == 25 for s in shards)  # 103 // 4; the remainder of 3 is dropped
    union = torch.cat(shards)
    assert len(set(union.tolist())) == 100
    lengths = {len(TensorLoader(x, y, 8, rank=r, world_size=4)) for r in range(4)}
    assert lengths == {4}  # every rank runs the same number of steps


class NoHostSync(TorchFunctionMode):
    """Fails on any torch call that reads device values back to the host."""

    SYNCING = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
        torch.Tensor.cpu,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.nonzero,
        torch.nonzero,
        torch.Tensor.any,
        torch.Tensor.all,
        torch.masked_select,
        torch.Tensor.masked_select,
        torch.unique,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNCING:
            raise AssertionError(f"host sync: {func.__name__}")
        if func is torch.Tensor.__getitem__ and _has_bool_index(args[1]):
            raise AssertionError("boolean-mask indexing (a data-dependent shape)")
        return func(*args, **kwargs)


def _has_bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def test_sync_detector_catches_syncs():
    t = torch.ones(3)
    with pytest.raises(AssertionError, match="item"), NoHostSync():
        t.sum().item()
    with pytest.raises(AssertionError, match="boolean"), NoHostSync():
        t[t > 0]


def test_an_epoch_makes_no_host_sync():
    x, y = data(70, 10, 10)
    loader = TensorLoader(x, y, 16, shuffle=True, augment=True, drop_last=True, world_size=2)
    with NoHostSync():
        batches = [b for b in loader]
    assert len(batches) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_epoch_on_gpu_makes_no_cuda_sync():
    x, y = data(300, 32, 32)
    loader = TensorLoader(x.cuda(), y.cuda(), 64, shuffle=True, augment=True, drop_last=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        n = sum(1 for _ in loader)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert n == 4
