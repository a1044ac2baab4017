import pytest
import torch
import torch.nn.functional as F

from edmips.nn import MixedConv2d, MixedLinear, QuantConv2d, QuantLinear, to_fixed, to_search
from edmips.quant import hwgq, quantize_weight

WBITS, ABITS = (1, 2, 3, 4), (2, 3, 4)


def _one_hot_logits(n, i):
    logits = torch.full((n,), -1e9)
    logits[i] = 0.0
    return logits


@pytest.mark.parametrize("wi,ai", [(0, 0), (1, 2), (3, 1)])
def test_one_hot_composite_conv_equals_fixed_conv_exactly(wi, ai):
    torch.manual_seed(0)
    mixed = MixedConv2d(4, 8, 3, padding=1, bias=False, wbits=WBITS, abits=ABITS)
    fixed = QuantConv2d(4, 8, 3, padding=1, bias=False, wbits=WBITS[wi], abits=ABITS[ai])
    fixed.weight.data.copy_(mixed.weight.data)
    with torch.no_grad():
        mixed.alpha_w.copy_(_one_hot_logits(4, wi))
        mixed.alpha_a.copy_(_one_hot_logits(3, ai))
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(mixed(x), fixed(x))


def test_one_hot_composite_linear_equals_fixed_linear_exactly():
    mixed = MixedLinear(6, 5, bias=False, wbits=WBITS, abits=ABITS, pool_input=True)
    fixed = QuantLinear(6, 5, bias=False, wbits=3, abits=4, pool_input=True)
    fixed.weight.data.copy_(mixed.weight.data)
    with torch.no_grad():
        mixed.alpha_w.copy_(_one_hot_logits(4, 2))
        mixed.alpha_a.copy_(_one_hot_logits(3, 2))
    x = torch.randn(3, 6, 4, 4)
    assert torch.equal(mixed(x), fixed(x))


@pytest.mark.parametrize("shared", [True, False])
def test_soft_composite_is_the_selector_weighted_sum(shared):
    torch.manual_seed(0)
    layer = MixedConv2d(4, 8, 3, padding=1, bias=False, wbits=WBITS, abits=ABITS, shared=shared)
    with torch.no_grad():
        layer.alpha_w.copy_(torch.randn(4))
        layer.alpha_a.copy_(torch.randn(3))
        for w in getattr(layer, "extra_weights", []):
            w.add_(torch.randn_like(w))
    weights = [layer.weight] if shared else [layer.weight, *layer.extra_weights]
    weights = weights * (4 if shared else 1)
    w_mix = sum(p * quantize_weight(w, b) for p, w, b in zip(layer.probs_w(), weights, WBITS))
    x = torch.randn(2, 4, 7, 7)
    x_mix = sum(p * hwgq(x, b) for p, b in zip(layer.probs_a(), ABITS))
    assert torch.allclose(layer(x), F.conv2d(x_mix, w_mix, padding=1), atol=1e-5)


def test_composite_layer_runs_one_convolution_whatever_the_candidates():
    calls = []
    layer = MixedConv2d(4, 4, 3, padding=1, wbits=(1, 2, 3, 4, 5, 8), abits=(2, 3, 4, 8))
    original = layer._conv_forward
    layer._conv_forward = lambda *a: calls.append(1) or original(*a)
    layer(torch.randn(1, 4, 5, 5))
    assert len(calls) == 1


def test_gradients_reach_weights_and_both_selectors():
    layer = MixedConv2d(4, 8, 3, padding=1)
    layer(torch.randn(2, 4, 6, 6)).square().sum().backward()
    for p in (layer.weight, layer.alpha_w, layer.alpha_a):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_search_and_fixed_conversions_keep_the_weights():
    net = torch.nn.Sequential(QuantConv2d(3, 4, 3, wbits=8, abits=None), QuantConv2d(4, 4, 3))
    w = net[1].weight.detach().clone()
    to_search(net, ["1"], WBITS, ABITS, shared=False)
    assert isinstance(net[1], MixedConv2d) and torch.equal(net[1].weight, w)
    with torch.no_grad():
        net[1].extra_weights[1].fill_(0.5)  # the 3-bit candidate's own tensor
    to_fixed(net, {"1": (3, 2)})
    assert isinstance(net[1], QuantConv2d) and (net[1].wbits, net[1].abits) == (3, 2)
    assert torch.all(net[1].weight == 0.5)


def test_bias_of_a_quantized_linear_lies_on_the_accumulator_grid():
    from edmips.quant import GAUSS_STEPS, HWGQ_STEPS

    layer = QuantLinear(8, 3, wbits=8, abits=8, per_channel=False, pool_input=True)
    bias = layer.quant_bias(pool_size=16)
    unit = HWGQ_STEPS[8] / 16 * GAUSS_STEPS[8] / 2 * layer.weight.std()
    assert torch.allclose(bias / unit, (bias / unit).round(), atol=1e-3)
