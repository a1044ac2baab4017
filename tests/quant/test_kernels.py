"""The Triton kernels compute what the PyTorch reference computes, in value and in gradient.

They run here under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors): a private copy of
edmips.quant.kernels is loaded with the variable set, so the rest of the suite is unaffected.
"""

import importlib.util
import os

import pytest
import torch

from edmips.quant import HWGQ_STEPS, StreamQuant, hwgq, mixed_hwgq, mixed_weight
from edmips.quant.activation import hwgq_codes
from edmips.quant.mixed import mixed_hwgq_reference_backward

# The interpreted kernels (a module fixture): built once, on one worker.
pytestmark = pytest.mark.xdist_group("kernels")

ABITS, WBITS = (2, 3, 4), (1, 2, 3, 4)
# float32: the sums over candidates differ only in rounding; bfloat16 outputs carry its 8 bits.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def kernels():
    """The kernels module, interpreted. The variable stays set while this module's tests run:
    the interpreter reads it again when it rewrites the kernels' inner functions."""
    pytest.importorskip("triton")
    path = importlib.util.find_spec("edmips.quant.kernels").origin
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("interpreted_kernels", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def _activation(shape, dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 1.5).to(dtype)
    # Values on rounding boundaries and clips, where an order of operations would show.
    edges = torch.tensor([0.0, -0.0, 0.269, 0.538, 1.614, 1.6171875, 2.775, 5.0, -1.0])
    x.view(-1)[: edges.numel()] = edges.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


CASES = [
    ((2, 3, 5, 7), torch.float32, False),
    ((3, 5, 7, 9), torch.float32, True),
    ((2, 3, 5, 7), torch.bfloat16, False),
    ((2, 6, 5, 3), torch.bfloat16, True),
    ((1111,), torch.float32, False),  # not a multiple of the block
]


@pytest.mark.parametrize("shape,dtype,channels_last", CASES)
def test_mixed_hwgq_kernels_match_reference(kernels, shape, dtype, channels_last):
    x = _activation(shape, dtype, channels_last)
    probs = torch.softmax(torch.tensor([0.3, -1.0, 0.8]), 0)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)

    out = kernels.mixed_hwgq_forward(x, probs, ABITS)
    x_ref = x.clone().requires_grad_(True)
    p_ref = probs.clone().requires_grad_(True)
    ref = mixed_hwgq(x_ref, p_ref, ABITS)
    assert out.dtype == dtype and out.stride() == x.stride()
    assert torch.allclose(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])

    grad_x, grad_p = kernels.mixed_hwgq_backward(x, grad, probs, ABITS)
    ref.backward(grad)
    assert torch.allclose(grad_x.float(), x_ref.grad.float(), rtol=TOL[dtype], atol=TOL[dtype])
    # The reference rounds each product grad * level to bfloat16; the kernel keeps float32.
    assert torch.allclose(grad_p, p_ref.grad, rtol=TOL[dtype] / 2, atol=1e-3)
    # Where the gradient passes is exactly the reference's: both zero at the same places.
    assert torch.equal(grad_x == 0, x_ref.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_hwgq_kernel_levels_are_exactly_the_references(kernels, dtype):
    """With one candidate at probability one, the output is exactly step * hwgq_codes."""
    x = _activation((4, 257), dtype, False)
    for b in (2, 4, 8):
        out = kernels.mixed_hwgq_forward(x, torch.ones(1), (b,))
        assert torch.equal(out, hwgq(x, b))
        assert torch.equal(out, hwgq_codes(x, b) * HWGQ_STEPS[b])


def test_gradient_of_another_layout_is_read_in_the_inputs_layout(kernels):
    x = _activation((2, 3, 4, 5), torch.float32, True)
    grad = torch.randn(2, 3, 4, 5)  # contiguous, x channels_last
    probs = torch.softmax(torch.randn(3), 0)
    grad_x, _ = kernels.mixed_hwgq_backward(x, grad, probs, ABITS)
    expected, _ = mixed_hwgq_reference_backward(x, grad, probs, ABITS)
    assert torch.allclose(grad_x, expected, atol=1e-6)


@pytest.mark.parametrize("shape,dtype,channels_last", CASES[:4])
def test_fixed_hwgq_kernels_match_reference(kernels, shape, dtype, channels_last):
    x = _activation(shape, dtype, channels_last)
    grad = torch.randn(shape).to(dtype)
    for b in (2, 3):
        x_ref = x.clone().requires_grad_(True)
        ref = hwgq(x_ref, b)
        ref.backward(grad)
        assert torch.equal(kernels.hwgq_forward(x, b), ref)
        assert torch.equal(kernels.hwgq_backward(x, grad, b), x_ref.grad)


@pytest.mark.parametrize("shape,dtype,channels_last", CASES[:4])
def test_stream_kernels_match_reference(kernels, shape, dtype, channels_last):
    quant = StreamQuant(8).eval()
    quant.running_max.fill_(2.5)
    x = _activation(shape, dtype, channels_last) * 2
    grad = torch.randn(shape).to(dtype)
    x_ref = x.clone().requires_grad_(True)
    ref = quant(x_ref)
    ref.backward(grad)
    scale = quant.scale().to(dtype)
    assert torch.equal(kernels.stream_forward(x, scale, quant.qmax), ref)
    assert torch.equal(kernels.stream_backward(x, grad, scale, quant.qmax), x_ref.grad)
    assert (x_ref.grad == 0).any() and (x_ref.grad != 0).any()  # both sides of the clip


@pytest.mark.parametrize(
    "shape,channels_last", [((16, 8, 3, 3), False), ((6, 5, 3, 3), True), ((7, 13), False)]
)
def test_mixed_weight_kernels_match_reference(kernels, shape, channels_last):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen) * torch.rand(shape[0], *[1] * (len(shape) - 1)) * 0.1
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    probs = torch.softmax(torch.randn(4, generator=gen), 0)
    grad = torch.randn(shape, generator=gen)
    assert kernels.fits_mixed_weight(w)

    w_ref = w.clone().requires_grad_(True)
    p_ref = probs.clone().requires_grad_(True)
    ref = mixed_weight(w_ref, p_ref, WBITS)
    ref.backward(grad)
    out = kernels.mixed_weight_forward(w, probs, WBITS)
    assert out.stride() == w.stride()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-7)
    grad_p = kernels.mixed_weight_backward(w, grad, probs, WBITS)
    assert torch.allclose(grad_p, p_ref.grad, rtol=1e-4, atol=1e-5)


def test_weight_kernels_refuse_what_they_cannot_hold(kernels):
    assert not kernels.fits_mixed_weight(torch.randn(4, 1))  # one element: no std
    assert not kernels.fits_mixed_weight(torch.randn(2, kernels.MAX_ROW + 1))
    assert not kernels.fits_mixed_weight(torch.randn(8, 6)[:, :3])  # rows not adjacent


def test_an_empty_activation_gives_empty_outputs_and_zero_selector_gradients(kernels):
    x, probs = torch.empty(0, 4), torch.softmax(torch.randn(3), 0)
    assert kernels.mixed_hwgq_forward(x, probs, ABITS).shape == (0, 4)
    grad_x, grad_p = kernels.mixed_hwgq_backward(x, torch.empty(0, 4), probs, ABITS)
    assert grad_x.shape == (0, 4) and torch.equal(grad_p, torch.zeros(3))


def _stack_of_layers(seed=0):
    """Output and gradients of a mixed conv, a fixed conv and a StreamQuant, one after another."""
    from edmips.nn import MixedConv2d, QuantConv2d

    torch.manual_seed(seed)
    mixed = MixedConv2d(5, 6, 3, padding=1)
    with torch.no_grad():
        mixed.alpha_w.copy_(torch.randn(4))
        mixed.alpha_a.copy_(torch.randn(3))
    fixed = QuantConv2d(6, 4, 1, wbits=2, abits=3)
    x = (torch.randn(2, 5, 7, 6) * 1.5).requires_grad_(True)
    out = StreamQuant(8).train()(fixed(mixed(x)))
    out.backward(torch.randn(out.shape))
    params = [x, mixed.weight, mixed.alpha_w, mixed.alpha_a, fixed.weight]
    return out.detach(), [p.grad for p in params]


def test_the_kernel_path_through_autograd_matches_the_reference(kernels, monkeypatch):
    """The autograd functions' CUDA branch (kernel calls, gradient plumbing), run on the CPU
    with the interpreted kernels, against the same layers on the reference path."""
    import sys

    import edmips.quant
    import edmips.quant.activation
    import edmips.quant.mixed

    ref_out, ref_grads = _stack_of_layers()
    monkeypatch.setitem(sys.modules, "edmips.quant.kernels", kernels)
    monkeypatch.setattr(edmips.quant, "kernels", kernels, raising=False)
    calls = []
    for module in (edmips.quant.activation, edmips.quant.mixed):
        monkeypatch.setattr(module, "use_kernels", lambda t: calls.append(t) or True)
    out, grads = _stack_of_layers()
    assert len(calls) == 8  # mixed weight and activation, fixed HWGQ, StreamQuant: fwd and bwd
    assert torch.allclose(out, ref_out, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5)
