"""Thresholds reproduce the float quantized activation; accumulators fit their width."""

import pytest
import torch
from torch import nn

from edmips.export.thresholds import (
    accumulator_bits,
    apply_thresholds,
    bits_for_range,
    compute_thresholds,
)
from edmips.quant import HWGQ_STEPS, StreamQuant, hwgq_codes


def _random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))  # negative scales flip direction
        bn.weight[0] = 0.0  # a constant channel
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


@pytest.mark.parametrize("abits", [2, 3, 4, 8])
def test_thresholds_reproduce_hwgq_after_batch_norm_for_every_accumulator(abits):
    """Exhaustive: every accumulator value of a small layer, every channel."""
    channels, lo, hi = 6, -700, 700
    unit = torch.rand(channels, dtype=torch.float64) * 0.01 + 1e-4  # input x weight scale
    bn = _random_bn(channels, abits)

    def reference(acc):  # what the fake-quantized network computes, channel by channel
        y = bn((acc * unit[:, None]).t()[:, :, None, None])[:, :, 0, 0].t()
        return hwgq_codes(y, abits)

    thresholds, sign = compute_thresholds(reference, channels, 2**abits, lo, hi)
    acc = torch.arange(lo, hi + 1)[None].expand(channels, -1)
    assert torch.equal(
        apply_thresholds(acc, thresholds, sign, channel_dim=0), reference(acc.double()).long()
    )
    varies = reference(torch.tensor([[lo, hi]], dtype=torch.float64).expand(channels, 2))
    varies = varies[:, 0] != varies[:, 1]  # a channel saturated over the range has no direction
    gamma = bn.weight.detach()
    assert (sign[varies & (gamma < 0)] == -1).all() and (sign[varies & (gamma > 0)] == 1).all()
    assert varies.any()


def test_thresholds_reproduce_the_signed_stream_quantizer():
    q = StreamQuant(8).double().eval()
    q.running_max.fill_(3.7)
    unit = torch.tensor([0.013, 0.002], dtype=torch.float64)[:, None]

    def reference(acc):  # the level index the quantizer's forward produces, as 0 .. 254
        x = acc * unit
        level = torch.round(q(x) / q.scale())
        assert torch.equal(level, q.codes(x))
        return level + 127

    lo, hi = -5000, 5000
    thresholds, sign = compute_thresholds(reference, 2, 255, lo, hi)
    acc = torch.arange(lo, hi + 1)[None].expand(2, -1)
    got = apply_thresholds(acc, thresholds, sign, channel_dim=0)
    assert torch.equal(got, reference(acc.double()).long())
    assert got.min() == 0 and got.max() == 254


def test_float32_thresholds_would_be_off_where_these_are_exact():
    """The known failure: thresholds derived in float32 miss level boundaries."""
    step = HWGQ_STEPS[4]
    unit = torch.tensor([[1 / 3 * step]], dtype=torch.float64)  # boundaries at acc = 1.5, 4.5...

    def reference(acc):
        return hwgq_codes(acc * unit, 4)

    thresholds, _ = compute_thresholds(reference, 1, 16, -100, 100)
    acc = torch.arange(-100, 101)[None]
    assert torch.equal(
        apply_thresholds(acc, thresholds, torch.ones(1, dtype=torch.long), 0),
        reference(acc.double()).long(),
    )


def test_bits_for_range():
    assert bits_for_range(-128, 127) == 8
    assert bits_for_range(-129, 127) == 9
    assert bits_for_range(0, 255) == 9
    assert bits_for_range(0, 0) == 1


@pytest.mark.parametrize("seed", range(5))
def test_extreme_weights_and_inputs_never_overflow_the_computed_width(seed):
    g = torch.Generator().manual_seed(seed)
    fan_in = int(torch.randint(1, 5000, (1,), generator=g))
    wbits, abits = (
        int(torch.randint(1, 9, (1,), generator=g)),
        int(torch.randint(1, 9, (1,), generator=g)),
    )
    wmax, amax = 2**wbits - 1, 2**abits - 1
    bits = accumulator_bits(fan_in, 0, amax, wmax)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    # the extremes: every weight at +-max against every input at max, and random mixes
    weights = torch.stack(
        [
            torch.full((fan_in,), wmax),
            torch.full((fan_in,), -wmax),
            (torch.randint(0, 2, (fan_in,), generator=g) * 2 - 1) * wmax,
        ]
    )
    x = torch.stack(
        [torch.full((fan_in,), amax), torch.randint(0, amax + 1, (fan_in,), generator=g)]
    )
    acc = x @ weights.t()
    assert acc.min() >= lo and acc.max() <= hi
    assert (
        acc.abs().max() > 2 ** (bits - 2) - 1
    )  # and the width is not wasteful: the top bit is used
