"""The training families' quantizers: QAT simulation's moving-average ranges and narrow-range
max-abs weights (`qatsim`), LSQ's learned steps (`learned`), one per channel at the input of a
depthwise conv."""

import math

import pytest
import torch
from torch import nn

from edmips.nn import quantize, to_fixed, to_search
from edmips.quant import registry
from edmips.quant.registry import Family

LEARNED = Family("lsq", "maxabs", "lsq_signed")
QATSIM = Family("ema_relu", "maxabs", "ema")


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


def _depthwise_net() -> nn.Module:
    """A stem, a depthwise conv with two outputs per channel ("2"), a pointwise conv ("4") and
    a classifier ("8"), each after a ReLU."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _step_shapes(model: nn.Module) -> dict[str, list[tuple]]:
    """Each layer's input steps' shapes (a composite layer's, one per candidate)."""
    shapes = {}
    for name, layer in model.named_modules():
        qs = getattr(layer, "input_quants", None) or [getattr(layer, "input_quant", None)]
        if any(hasattr(q, "step") for q in qs):
            shapes[name] = [tuple(q.step.shape) for q in qs]
    return shapes


def test_only_a_depthwise_conv_s_learned_input_has_a_step_per_channel():
    model = quantize(_depthwise_net(), wbits=4, abits=4, family=LEARNED)
    per_channel = {"2": [(4,)], "4": [()], "8": [()]}
    assert _step_shapes(model) == per_channel
    assert [tuple(q.step.shape) for q in model.signed_quant.children()] == [()]  # the image's
    # Every way a layer gets its quantizers: a family's at new bits, a composite's candidates.
    assert _step_shapes(to_fixed(model, {"2": (3, 3), "4": (3, 3)}, LEARNED)) == per_channel
    to_search(model, ["2", "4"], wbits=(2, 4), abits=(2, 4), family=LEARNED)
    assert _step_shapes(model) == {"2": [(4,), (4,)], "4": [(), ()], "8": [()]}
    to_fixed(model, {"2": (4, 4), "4": (4, 4)}, LEARNED)
    assert _step_shapes(model) == per_channel
    # A quantizer without per-channel steps stays per tensor there.
    ema = quantize(_depthwise_net(), wbits=4, abits=4, family=QATSIM)
    assert ema.get_submodule("2").input_quant.running_max.shape == ()


@pytest.mark.parametrize("name", ["lsq", "lsq_signed"])
def test_per_channel_lsq_gradients_are_lsq_s_in_each_channel(name):
    q = registry.get(name)(3, channels=4).train()
    steps = torch.tensor([0.1, 0.4, 1.0, 2.5])
    q.initial_step(1.0)
    with torch.no_grad():
        q.step.copy_(steps)
    x = (torch.randn(2, 4, 3, 5) * 2).requires_grad_()
    grad_out = torch.randn(2, 4, 3, 5)
    (q(x) * grad_out).sum().backward()
    xs = (x if q.signed else x.relu()).detach()
    v = xs / steps.view(1, -1, 1, 1)
    inside = (v >= q.lowest) & (v <= q.qmax)
    passes = inside & (x.detach() > 0) if not q.signed else inside
    assert torch.allclose(x.grad, grad_out * passes, rtol=1e-6, atol=0)
    # Per channel: g = 1/sqrt(n qmax) with n the values of one channel of one image (3 x 5).
    per_value = torch.where(inside, v.round() - v, v.clamp(q.lowest, q.qmax))
    g = 1 / math.sqrt(15 * q.qmax)
    assert torch.allclose(q.step.grad, (grad_out * per_value).sum((0, 2, 3)) * g, rtol=1e-5)
    # The codes on N x C x H x W: the forward's levels, each channel on its own step.
    y = q(x.detach())
    assert torch.equal(q.codes(x.detach()) * steps.view(1, -1, 1, 1), y)
    assert torch.equal(q.codes(x.detach()), v.round().clamp(q.lowest, q.qmax))


@pytest.mark.parametrize("name", ["lsq", "lsq_signed"])
def test_per_channel_steps_start_at_each_channel_s_lsq_value(name):
    q = registry.get(name)(4, channels=4).train()
    scales = torch.tensor([0.1, 1.0, 10.0, 0.0])  # the last channel silent
    x = torch.randn(8, 4, 5, 5) * scales.view(1, -1, 1, 1)
    q(x)
    seen = (x if q.signed else x.relu()).abs()
    expected = 2 * seen.mean((0, 2, 3)) / math.sqrt(q.qmax)
    expected[3] = 2 * seen.mean() / math.sqrt(q.qmax)  # a silent channel: the tensor's step
    assert torch.allclose(q.unit(), expected, rtol=1e-5)
    assert len(set(q.unit().tolist())) == 4
    q.initial_step(0.5)
    assert torch.equal(q.unit(), torch.full((4,), 0.5))
    assert q.with_bits(2).step.shape == (4,) and "channels=4" in repr(q)


def test_a_state_dict_of_steps_per_tensor_still_loads():
    """A checkpoint from before per-channel steps: every step a scalar."""
    model = quantize(_depthwise_net(), wbits=4, abits=4, family=LEARNED)
    state = model.state_dict()
    old = {
        k: torch.tensor(0.25 + i) if k.endswith(".step") else v
        for i, (k, v) in enumerate(state.items())
    }
    fresh = quantize(_depthwise_net(), wbits=4, abits=4, family=LEARNED)
    fresh.load_state_dict(old)
    for name in ("4", "8"):
        step = fresh.get_submodule(name).input_quant.step
        assert step.shape == () and torch.equal(step, old[f"{name}.input_quant.step"])
    depthwise = fresh.get_submodule("2").input_quant.step
    assert torch.equal(depthwise, old["2.input_quant.step"].expand(4))
