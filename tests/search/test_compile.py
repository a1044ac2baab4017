"""torch.compile of a composite layer computes what eager mode computes (value and gradients)."""

import pytest
import torch

from edmips.nn import MixedConv2d


@pytest.mark.slow
def test_compiled_composite_layer_matches_eager():
    torch.manual_seed(0)
    layer = MixedConv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(4, 8, 12, 12)
    g = torch.randn(4, 16, 12, 12)

    def run(fn):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (out * g).sum().backward()
        return (
            out.detach(),
            xi.grad,
            layer.weight.grad.clone(),
            layer.alpha_w.grad.clone(),
            layer.alpha_a.grad.clone(),
        )

    eager = run(layer)
    compiled = run(torch.compile(layer))
    for e, c in zip(eager, compiled):
        assert torch.allclose(e, c, rtol=1e-4, atol=1e-4)
