"""The training families' quantizers: QAT simulation's moving-average ranges and narrow-range
max-abs weights (`qatsim`), LSQ's learned steps (`learned`)."""

import math

import pytest
import torch

from edmips.quant import registry


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_max_abs_weights_are_narrow_range_with_the_largest_weight_a_level(bits):
    w = torch.randn(6, 4, 3, 3)
    codes, scale = registry.get("maxabs")(bits).integer(w)
    top = 2 ** (bits - 1) - 1
    assert int(codes.min()) >= -top and int(codes.max()) <= top  # never -2^(b-1)
    assert torch.equal(codes.flatten(1).abs().amax(1), torch.full((6,), top))
    assert torch.allclose(scale.flatten(), w.flatten(1).abs().amax(1) / top)


@pytest.mark.parametrize("name", ["ema", "ema_relu"])
def test_the_moving_range_after_two_batches_is_the_formula(name):
    q = registry.get(name)(4).train()
    a, b = torch.randn(64) * 3, torch.randn(64) * 5
    q(a)
    q(b)
    seen = (lambda x: x.abs()) if q.signed else torch.relu
    expected = 0.95 * float(seen(a).max()) + 0.05 * float(seen(b).max())
    assert float(q.running_max) == pytest.approx(expected, rel=1e-6)


def test_the_unsigned_moving_range_is_a_relu_on_its_step():
    q = registry.get("ema_relu")(3).train()
    x = torch.randn(1000) * 2
    y = q(x)
    step = float(x.relu().max()) / 7
    assert float(y.min()) == 0 and torch.equal(q.codes(x), (y / step).round())
    assert torch.allclose(y, (x.relu() / step).round().clamp(0, 7) * step)


@pytest.mark.parametrize("name", ["lsq", "lsq_signed"])
def test_the_learned_step_starts_at_lsq_s_value(name):
    q = registry.get(name)(4).train()
    x = torch.randn(8, 16, 4, 4)
    q(x)
    seen = x if q.signed else x.relu()
    assert float(q.unit()) == pytest.approx(2 * float(seen.abs().mean()) / math.sqrt(q.qmax))
    q(x * 10)  # only the first batch sets it
    assert float(q.unit()) == pytest.approx(2 * float(seen.abs().mean()) / math.sqrt(q.qmax))


@pytest.mark.parametrize("name", ["lsq", "lsq_signed"])
def test_lsq_gradients_of_the_input_and_the_step(name):
    q = registry.get(name)(3).train()
    q.initial_step(0.4)
    x = (torch.randn(4, 32) * 2).requires_grad_()
    grad_out = torch.randn(4, 32)
    (q(x) * grad_out).sum().backward()
    xs = (x if q.signed else x.relu()).detach()
    v = xs / 0.4
    inside = (v >= q.lowest) & (v <= q.qmax)
    # The input's gradient: straight through inside the range (and, unsigned, above zero).
    passes = inside & (x.detach() > 0) if not q.signed else inside
    assert torch.allclose(x.grad, grad_out * passes, rtol=1e-6, atol=0)  # (g / s) * s
    # The step's: round(v) - v inside, the range's end outside, times g = 1/sqrt(n qmax).
    per_value = torch.where(inside, v.round() - v, v.clamp(q.lowest, q.qmax))
    g = 1 / math.sqrt(32 * q.qmax)
    assert float(q.step.grad) == pytest.approx(float((grad_out * per_value).sum()) * g, rel=1e-5)


def test_the_learned_step_moves_towards_less_error():
    """A few plain gradient steps on the reconstruction error lower it: the step learns."""
    torch.manual_seed(0)
    q = registry.get("lsq")(2).train()
    x = torch.randn(256, 64).relu() * 3
    q.initial_step(0.05)  # far too fine: the top level clips most values
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    errors = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((q(x) - x) ** 2).mean()
        loss.backward()
        opt.step()
        errors.append(loss.item())
    assert errors[-1] < 0.5 * errors[0]
