"""The fused composite quantizers equal the plain formulas, in value and in gradient."""

import pytest
import torch

from edmips.quant import hwgq, mixed_hwgq, mixed_weight, quantize_weight

WBITS, ABITS = (1, 2, 3, 4), (2, 3, 4)


def _leaf(t):
    return t.clone().requires_grad_(True)


@pytest.mark.parametrize("per_channel", [True, False])
def test_mixed_weight_matches_plain_sum(per_channel):
    torch.manual_seed(0)
    w0, a0, g = torch.randn(16, 8, 3, 3), torch.randn(4), torch.randn(16, 8, 3, 3)
    w1, a1, w2, a2 = _leaf(w0), _leaf(a0), _leaf(w0), _leaf(a0)
    fused = mixed_weight(w1, torch.softmax(a1, 0), WBITS, per_channel)
    plain = sum(
        p * quantize_weight(w2, b, per_channel) for p, b in zip(torch.softmax(a2, 0), WBITS)
    )
    assert torch.allclose(fused, plain, atol=1e-6)
    (fused * g).sum().backward()
    (plain * g).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, atol=1e-6)
    assert torch.allclose(a1.grad, a2.grad, atol=1e-4)


def test_mixed_hwgq_matches_plain_sum():
    torch.manual_seed(0)
    x0, b0, g = torch.randn(4, 8, 10, 10) * 2, torch.randn(3), torch.randn(4, 8, 10, 10)
    x1, b1, x2, b2 = _leaf(x0), _leaf(b0), _leaf(x0), _leaf(b0)
    fused = mixed_hwgq(x1, torch.softmax(b1, 0), ABITS)
    plain = sum(p * hwgq(x2, b) for p, b in zip(torch.softmax(b2, 0), ABITS))
    assert torch.allclose(fused, plain, atol=1e-6)
    (fused * g).sum().backward()
    (plain * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(b1.grad, b2.grad, atol=1e-4)


def _saved_tensors(fn, *inputs):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return saved


@pytest.mark.parametrize("n", [1, 3, 6])
def test_mixed_hwgq_saves_no_tensor_per_candidate(n):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    bits = (2, 3, 4, 5, 6, 8)[:n]
    probs = torch.softmax(torch.zeros(n, requires_grad=True), 0)
    saved = _saved_tensors(mixed_hwgq, x, probs, bits)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1  # the input, whatever the number of candidates
    plain = _saved_tensors(lambda: sum(p * hwgq(x, b) for p, b in zip(probs, bits)))
    assert len([t for t in plain if t.numel() == x.numel()]) >= n  # what the plain path keeps


def test_mixed_weight_saves_no_tensor_per_candidate():
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    probs = torch.softmax(torch.zeros(4, requires_grad=True), 0)
    saved = _saved_tensors(mixed_weight, w, probs, WBITS)
    assert len([t for t in saved if t.numel() == w.numel()]) == 1
