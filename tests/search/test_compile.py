"""torch.compile computes what eager mode computes, and the `compile` setting resolves per device.

Compiled and eager code may round a value that sits on a rounding boundary differently (their
reductions, and so the weights' standard deviations, differ in the last bit), so the checks
compare what must agree: the quantizer's levels everywhere but a tiny fraction of elements, by
at most one level there, and the layer's outputs and gradients up to such flips.
"""

import pytest
import torch
from omegaconf import OmegaConf

from edmips.nn import MixedConv2d
from edmips.programs.builders import compile_mode
from edmips.quant import hwgq_codes, mixed_hwgq


def _fraction_differing(a, b, tol):
    return ((a - b).abs() > tol * (1 + b.abs())).float().mean().item()


@pytest.mark.slow
def test_compiled_quantizer_levels_match_eager():
    torch.manual_seed(0)
    x = torch.randn(64, 1000) * 2
    for b in (2, 3, 4, 8):
        eager = hwgq_codes(x, b)
        compiled = torch.compile(hwgq_codes, dynamic=False)(x, b)
        assert (eager - compiled).abs().max() <= 1  # a flip is by one level at most
        assert (eager != compiled).float().mean() < 1e-3
    probs = torch.softmax(torch.randn(3), 0)
    eager = mixed_hwgq(x, probs, (2, 3, 4))
    compiled = torch.compile(mixed_hwgq)(x, probs, (2, 3, 4))
    assert _fraction_differing(eager, compiled, 1e-5) < 1e-3


@pytest.mark.slow
def test_compiled_composite_layer_matches_eager():
    torch.manual_seed(0)
    layer = MixedConv2d(8, 16, 3, padding=1, bias=False)
    with torch.no_grad():  # selectors away from uniform, so every probability matters
        layer.alpha_w.copy_(torch.randn(4))
        layer.alpha_a.copy_(torch.randn(3))
    x = torch.randn(4, 8, 12, 12)
    g = torch.randn(4, 16, 12, 12)

    def run(fn):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (out * g).sum().backward()
        grads = (layer.weight.grad, layer.alpha_w.grad, layer.alpha_a.grad)
        return (out.detach(), xi.grad, *(t.clone() for t in grads))

    eager = run(layer)
    compiled = run(torch.compile(layer))
    out, grad_x, grad_w, grad_aw, grad_aa = zip(eager, compiled)
    assert _fraction_differing(*out, 1e-4) < 0.02  # a flipped weight level moves a few outputs
    assert _fraction_differing(*grad_x, 1e-4) < 1e-3  # the mask moves only at a clip
    for e, c in (grad_w, grad_aw, grad_aa):  # sums over every element: flips barely count
        assert torch.allclose(e, c, rtol=1e-3, atol=1e-3 * e.abs().max().item())


def _cfg(accelerator):
    return OmegaConf.create({"trainer": {"accelerator": accelerator}})


@pytest.mark.parametrize(
    "setting,accelerator,mode",
    [
        ("auto", "cpu", None),
        ("auto", "gpu", "default"),
        (True, "cpu", "default"),
        (False, "gpu", None),
        ("reduce-overhead", "gpu", "reduce-overhead"),
    ],
)
def test_compile_setting_resolves_per_device(setting, accelerator, mode):
    assert compile_mode(setting, _cfg(accelerator)) == mode


def test_unknown_compile_setting_is_refused():
    with pytest.raises(ValueError, match="compile must be auto, true, false or one of"):
        compile_mode("fast", _cfg("cpu"))
