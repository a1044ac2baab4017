"""The check of an export: the network's accuracy on the whole test split, the integer check on
all of it or on a seeded draw across it, float64 deciding where float32 and the integers differ."""

import torch
from test_export import trained_like

import edmips.export.verify as verify_module
from edmips.export import export
from edmips.export.verify import checked_positions, verify

SIZE = 16


def sorted_by_class(n=40, classes=4, batch=8):
    """A test split sorted by class, as CIFAR-10's is: the first n / classes images are class 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g)
    y = torch.arange(classes).repeat_interleave(n // classes)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_a_limited_check_draws_across_the_split_and_test_acc_uses_every_image(tmp_path):
    model = trained_like("resnet_tiny", SIZE, seed=2)
    export(model, (3, SIZE, SIZE), tmp_path)
    loader = sorted_by_class()
    whole = verify(model, tmp_path, loader)
    limited = verify(model, tmp_path, loader, check_images=8)
    assert whole["test_images"] == limited["test_images"] == 40
    assert whole["checked_images"] == 40 and limited["checked_images"] == 8
    assert limited["test_acc"] == whole["test_acc"]  # the network on every image either way
    assert whole["prediction_agreement"] == limited["prediction_agreement"] == 1.0
    chosen = checked_positions(40, 8)
    assert len(chosen.unique()) == 8 and torch.equal(chosen, checked_positions(40, 8))  # seeded
    labels = torch.cat([y for _, y in loader])[chosen]
    assert len(labels.unique()) >= 3  # not the first class only


def test_float64_decides_where_float32_and_the_integers_differ(tmp_path, monkeypatch):
    """A float32 network that predicts another class everywhere: the check recomputes those
    images in float64 and still finds the integers right; integers that are wrong are caught."""
    model = trained_like("resnet_tiny", SIZE, seed=3)
    export(model, (3, SIZE, SIZE), tmp_path)
    real_copy = verify_module.reference_copy

    def float32_off_by_one(m, dtype=torch.float64, device="cpu"):
        copy = real_copy(m, dtype, device)
        if dtype == torch.float64:
            return copy
        return lambda x: copy(x).roll(1, dims=1)  # each image's class moved

    monkeypatch.setattr(verify_module, "reference_copy", float32_off_by_one)
    record = verify(model, tmp_path, sorted_by_class())
    assert record["prediction_agreement"] == record["qdq_agreement"] == 1.0

    real_pair = verify_module.integer_pair

    def wrong_integers(*args):
        reference, integer = real_pair(*args)
        return reference, lambda x: integer(x).roll(1, dims=1)

    monkeypatch.setattr(verify_module, "reference_copy", real_copy)
    monkeypatch.setattr(verify_module, "integer_pair", wrong_integers)
    assert verify(model, tmp_path, sorted_by_class())["prediction_agreement"] < 0.5
