"""ACIQ's per-channel bit allocation: the quota's mean, more bits to wider channels."""

import pytest
import torch

from edmips.ptq.bit_allocation import allocate


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 7, 64])
def test_the_allocation_meets_the_quota_exactly(bits, channels):
    torch.manual_seed(channels)
    widths = torch.rand(channels) ** 3 + 1e-3
    alloc = allocate(widths, bits, 2, 8)
    assert alloc.dtype == torch.int64 and alloc.sum() == bits * channels
    assert alloc.min() >= 2 and alloc.max() <= 8


def test_wider_channels_get_more_bits():
    widths = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    alloc = allocate(widths, 4, 2, 8)
    assert alloc.sum() == 32
    assert (alloc.diff() >= 0).all() and alloc[-1] > alloc[0]
    shuffled = torch.randperm(8)
    assert torch.equal(allocate(widths[shuffled], 4, 2, 8), alloc[shuffled])


def test_it_follows_eq_11_where_no_clamp_or_rounding_intervenes():
    # s^(2/3) doubling from channel to channel: eq. 11 gives one bit more each, shifted so the
    # mean is the quota's 4 bits
    widths = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]) ** 1.5
    assert allocate(widths, 4, 0, 8).tolist() == [2, 3, 4, 5, 6]


def test_equal_or_zero_widths_are_uniform():
    assert allocate(torch.ones(5), 3, 2, 8).tolist() == [3] * 5
    assert allocate(torch.zeros(4), 4, 2, 8).tolist() == [4] * 4
    zero_channel = allocate(torch.tensor([0.0, 1.0, 1.0, 1.0]), 4, 0, 8)
    assert zero_channel[0] == 0 and zero_channel.sum() == 16
