"""The max-abs weight quantizer's refinements: bias-corrected weights and per-channel bits stay
codes times scale, with the float weights' per-channel mean (and std)."""

import pytest
import torch

from edmips.quant.maxabs import MaxAbsWeight

FINE = 8


def _weights():
    torch.manual_seed(0)
    return torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1) + 0.05 * torch.randn(16, 1, 1, 1)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["mean", "mean_var"])
def test_corrected_weights_have_the_float_mean_and_are_codes_times_scale(bits, mode):
    w = _weights()
    q = MaxAbsWeight(bits)
    plain = q(w).flatten(1)
    q.correct_bias(w, mode, FINE)
    codes, scale = q.integer(w)
    corrected = q(w)
    assert torch.equal(codes * scale, corrected)  # forward == codes * scale, bit for bit
    assert codes.dtype == torch.int64 and codes.abs().max() <= q.max_code
    assert torch.equal(q.scale(w, 3.0), 3.0 * scale.flatten())
    step = scale.flatten().double()  # a_o / 2^p: the constant's grid
    mean_error = (corrected.flatten(1).double().mean(1) - w.flatten(1).double().mean(1)).abs()
    assert (mean_error <= step / 2 + 1e-6 * w.abs().max()).all()  # c_o rounded to its grid
    before = (plain.double().mean(1) - w.flatten(1).double().mean(1)).abs()
    assert mean_error.sum() < before.sum()
    if mode == "mean_var":
        std = corrected.flatten(1).double().std(1)
        assert torch.allclose(std, w.flatten(1).double().std(1), rtol=1e-5)


def test_the_corrected_grid_is_p_bits_finer():
    w = _weights()
    q = MaxAbsWeight(4)
    plain_codes, plain_scale = q.integer(w)
    q.correct_bias(w, "mean", FINE)
    codes, scale = q.integer(w)
    offset = codes - plain_codes * 2**FINE
    assert torch.equal(offset, offset[:, :1, :1, :1].expand_as(offset))  # one k_o per channel
    assert offset.abs().max() <= 2 ** (FINE - 1)  # |c_o| <= half a step: max-abs never clips
    assert torch.allclose(scale * 2**FINE, plain_scale)
    assert q.max_code == int((7 * 2**FINE + offset.abs()).max())
    q.correct_bias(w, "none", 0)
    assert torch.equal(q(w), plain_codes * plain_scale) and q.max_code == 7


def test_per_channel_bits_give_each_channel_its_own_narrow_range():
    w = _weights()
    bits = torch.tensor([2, 3, 4, 5, 6, 7, 8, 4] * 2)
    q = MaxAbsWeight(4)
    q.set_channel_bits(bits)
    codes, scale = q.integer(w)
    assert torch.equal(codes * scale, q(w))
    top = 2 ** (bits - 1) - 1
    assert torch.equal(codes.flatten(1).abs().amax(1), top)  # each channel's max is a level
    assert q.max_code == 127
    q.correct_bias(w, "mean_var", 4)  # a correction on top of the per-channel grid
    codes, scale = q.integer(w)
    assert torch.equal(codes * scale, q(w))
    with pytest.raises(ValueError, match="per-channel bits must lie in"):
        q.set_channel_bits(torch.tensor([1] * 16))


def test_new_bits_drop_the_refinements():
    w = _weights()
    q = MaxAbsWeight(4)
    q.set_channel_bits(torch.full((16,), 3))
    q.correct_bias(w, "mean", FINE)
    fresh = q.with_bits(3)
    assert not fresh.corrected and fresh.max_code == 3
    assert torch.equal(fresh(w), MaxAbsWeight(3)(w))
    assert "offset" not in q.state_dict()  # a float network's weights load as they are
