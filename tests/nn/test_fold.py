"""Batch norm folded into the conv before it: the same network at 32 bits (and, with a scale per
output channel, at any bit-width), batch statistics in training until the freeze and the
running ones after, and a fold that matters for a per-tensor scale (its export:
tests/export/test_family_export.py)."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edmips.models import create_model
from edmips.nn import QuantConv2d, default_searched, to_fixed, to_float
from edmips.nn.convert import first_and_last
from edmips.nn.fold import (
    absorb_batch_norms,
    conv_bn_pairs,
    fold_batch_norms,
    folded_batch_norms,
)
from edmips.quant.registry import Family
from edmips.retrain.module import RetrainModule

QATSIM = Family("ema_relu", "maxabs", "ema")


def _trained_like(name: str, family: Family | None = None, bits=(4, 4)) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    if family is not None:
        layers = {**dict.fromkeys(first_and_last(model), (8, 8))}
        layers.update(dict.fromkeys(default_searched(model), bits))
        to_fixed(model, layers, family)
    for bn in model.modules():  # batch norms that do something: scales of both signs
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(-1.5, 1.5)
    model.train()
    with torch.no_grad():  # ranges and batch-norm statistics as a few training steps give them
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2"])
def test_folded_and_absorbed_equal_unfolded_at_32_bits(name):
    model = to_float(_trained_like(name))
    x = torch.rand(4, 3, 32, 32)
    expected = model(x)
    folded, absorbed = copy.deepcopy(model), copy.deepcopy(model)
    assert len(fold_batch_norms(folded)) > 0 and len(absorb_batch_norms(absorbed)) > 0
    assert torch.allclose(folded(x), expected, rtol=0, atol=1e-5)
    assert torch.allclose(absorbed(x), expected, rtol=0, atol=1e-5)


def test_with_a_scale_per_channel_the_fold_keeps_the_grid_and_per_tensor_it_does_not():
    model = _trained_like("resnet20", QATSIM)
    x = torch.rand(4, 3, 32, 32)
    folded = copy.deepcopy(model)
    fold_batch_norms(folded)
    assert torch.allclose(folded(x), model(x), rtol=0, atol=1e-5)
    for m in (model, folded):
        for layer in m.modules():
            if isinstance(layer, QuantConv2d):
                layer.weight_quant.per_channel = False
    assert not torch.allclose(folded(x), model(x), rtol=0, atol=1e-3)


def test_every_conv_that_feeds_only_a_batch_norm_is_paired():
    model = create_model("resnet20", num_classes=10)
    pairs = conv_bn_pairs(model)
    # The stem and each block's first conv; a block's second conv feeds the residual add.
    assert pairs[0] == ("conv1", "bn1") and ("stages.0.0.conv1", "stages.0.0.bn1") in pairs
    assert all(not conv.endswith("conv2") for conv, _ in pairs)
    assert len(pairs) == 1 + 9 + 2  # stem, 9 blocks, 2 downsamples


def test_folded_training_uses_batch_statistics_until_the_freeze_then_the_running_ones():
    model = _trained_like("resnet_tiny", QATSIM)
    fold_batch_norms(model)
    module = RetrainModule(model, 10, optimizer=None, bn_freeze_epoch=2)
    bn = folded_batch_norms(model)[0]
    x = torch.rand(8, 3, 32, 32) * 3

    for epoch, frozen in ((0, False), (1, False), (2, True), (3, True)):
        module._trainer = SimpleNamespace(current_epoch=epoch)
        model.train()  # as a training epoch starts
        module.on_train_epoch_start()
        before = bn.running_mean.clone()
        model(x)
        moved = not torch.equal(bn.running_mean, before)
        assert moved != frozen and bn.training != frozen, epoch
