import pytest
import torch

from edmips.quant import GAUSS_STEPS, HWGQ_STEPS, StreamQuant, hwgq, integer_weight, quantize_weight


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_weight_levels_are_2_to_the_b_per_channel(bits):
    w = torch.randn(3, 200_000)
    q = quantize_weight(w, bits)
    for channel in q:  # 8-bit grids reach beyond the samples' tails, so "at most" there
        assert channel.unique().numel() == 2**bits or (
            bits == 8 and channel.unique().numel() <= 256
        )
    # symmetric mid-rise grid: levels are odd multiples of step/2
    codes, scale = integer_weight(w, bits)
    assert torch.equal(codes * scale, q) or torch.allclose(codes * scale, q, rtol=0, atol=1e-6)
    assert (codes % 2 != 0).all() and codes.abs().max() <= 2**bits - 1


def test_weight_step_scales_with_channel_std():
    w = torch.randn(2, 5000) * torch.tensor([[1.0], [10.0]])
    q = quantize_weight(w, 1)
    expected = GAUSS_STEPS[1] / 2 * w.std(dim=1)
    assert torch.allclose(q.abs().amax(dim=1), expected, rtol=1e-5)


def test_per_tensor_weights_share_one_grid():
    w = torch.randn(4, 200) * torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert quantize_weight(w, 2, per_channel=False).unique().numel() == 4


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_hwgq_has_at_most_2_to_the_b_levels_on_its_grid(bits):
    x = torch.randn(100_000) * 3
    q = hwgq(x, bits)
    levels = q.unique()
    assert levels.numel() <= 2**bits
    assert levels.min() == 0
    steps = levels / HWGQ_STEPS[bits]
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert levels.max() <= HWGQ_STEPS[bits] * (2**bits - 1) + 1e-6


def test_32_bits_means_not_quantized():
    w, x = torch.randn(4, 9), torch.randn(100)
    assert torch.equal(quantize_weight(w, 32), w)
    assert torch.equal(hwgq(x, 32), torch.relu(x))


def test_weight_gradient_is_straight_through():
    w = torch.randn(8, 16, requires_grad=True)
    g = torch.randn(8, 16)
    (quantize_weight(w, 2) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_hwgq_gradient_is_straight_through_inside_the_clip():
    clip = HWGQ_STEPS[2] * 3
    x = torch.tensor([-1.0, 0.1, 0.7, clip - 0.01, clip + 0.5], requires_grad=True)
    hwgq(x, 2).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_unknown_bit_width_is_refused():
    from edmips.nn import QuantConv2d

    with pytest.raises(ValueError, match="unsupported bit-width 9"):
        QuantConv2d(3, 3, 3, wbits=9)


def test_stream_quant_tracks_range_and_shares_one_grid():
    q = StreamQuant(8)
    q.train()
    x = torch.randn(1000) * 5
    y = q(x)
    assert torch.isclose(q.running_max, x.abs().max())  # first batch initializes the range
    q(x * 2)
    assert torch.isclose(q.running_max, 0.95 * x.abs().max() + 0.05 * 2 * x.abs().max())
    q.eval()
    y = q(torch.randn(1000) * 100)
    codes = y / q.scale()
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.round().abs().max() == 127
