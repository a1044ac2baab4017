"""Every registered quantizer follows the protocol: codes * unit is the forward, integer weights
times their scale are the quantized weights, `mix` is the plain selector-weighted sum; the
registry finds each by name, and the calibration context moves ranges in eval mode only."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from edmips.quant import ActivationQuantizer, WeightQuantizer, calibration, registry

ACTIVATIONS = ["hwgq", "ema", "ema_relu", "lsq", "lsq_signed"]
WEIGHTS = ["gauss"]


def test_the_registry_finds_every_member_by_name():
    for name, base in (
        ("hwgq", ActivationQuantizer),
        ("ema", ActivationQuantizer),
        ("image", ActivationQuantizer),
        ("gauss", WeightQuantizer),
        ("clipped", ActivationQuantizer),
        ("clipped_signed", ActivationQuantizer),
        ("maxabs", WeightQuantizer),
        ("ema_relu", ActivationQuantizer),
        ("lsq", ActivationQuantizer),
        ("lsq_signed", ActivationQuantizer),
    ):
        cls = registry.get(name)
        assert issubclass(cls, base) and cls.name == name
    with pytest.raises(
        ValueError,
        match="unknown quantizer 'nope': choose from clipped, clipped_int8, clipped_signed, ",
    ):
        registry.get("nope")


def test_a_module_of_the_package_registers_itself_on_first_lookup():
    # A fresh interpreter imports only the registry: every member comes from the package scan.
    code = "from edmips.quant import registry; print(','.join(registry.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"hwgq", "ema", "image", "gauss"} <= set(out.stdout.strip().split(","))


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("hwgq")(type("Other", (ActivationQuantizer,), {}))


def _calibrated(name: str, bits: int) -> ActivationQuantizer:
    q = registry.get(name)(bits)
    q.train()(torch.randn(1000) * 3)  # a range, where the quantizer tracks one
    return q.eval()


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_codes_times_unit_is_the_forward(name):
    for bits in registry.get(name).supported_bits[:7]:
        q = _calibrated(name, bits)
        x = torch.randn(4096) * 2
        codes = q.codes(x)
        assert codes.dtype == x.dtype and torch.equal(codes, codes.round())
        assert codes.min() >= q.lowest and codes.max() <= q.lowest + q.num_levels - 1
        assert torch.equal(codes * q.unit(), q(x)), (name, bits)


def test_the_image_codes_times_unit_are_its_forward():
    q = registry.get("image")((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    x = torch.rand(2, 3, 8, 8)
    codes = q.codes(x)
    assert codes.min() >= q.lowest and codes.max() <= q.lowest + q.num_levels - 1
    assert torch.equal(codes * q.unit(), q(x)) and q.defines_input


@pytest.mark.parametrize("name", WEIGHTS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_weights_times_scale_are_the_quantized_weights(name, per_channel):
    w = torch.randn(6, 4, 3, 3)
    for bits in registry.get(name).supported_bits:
        q = registry.get(name)(bits, per_channel)
        codes, scale = q.integer(w)
        assert codes.dtype == torch.int64 and int(codes.abs().max()) <= q.max_code
        assert torch.allclose(codes * scale, q(w), rtol=0, atol=1e-6), bits


def _probs(n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(n), 0).requires_grad_()


# An activation quantizer mixes 3 candidates of a feature map under a random output gradient; a
# weight quantizer 4 of a conv's weights under a constant one, its input gradient exact to 1e-8.
MIXES = [(name, (2, 3, 4), (2, 3, 8, 8), 1e-6) for name in ACTIVATIONS] + [
    (name, (1, 2, 3, 4), (8, 4, 3, 3), 1e-8) for name in WEIGHTS
]


@pytest.mark.parametrize(("name", "bits", "shape", "atol"), MIXES, ids=[m[0] for m in MIXES])
def test_mix_is_the_plain_sum(name, bits, shape, atol):
    cls = registry.get(name)
    activation = issubclass(cls, ActivationQuantizer)
    quantizers = [_calibrated(name, b) if activation else cls(b) for b in bits]
    x1 = (torch.randn(shape) * (2 if activation else 1)).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    p1 = _probs(len(bits))
    p2 = p1.detach().clone().requires_grad_()
    mixed = cls.mix(x1, p1, quantizers)
    plain = sum(p * q(x2) for p, q in zip(p2, quantizers))
    assert torch.allclose(mixed, plain, atol=1e-6)
    g = torch.randn_like(mixed) if activation else torch.full_like(mixed, 2.0)
    (mixed * g).sum().backward()
    (plain * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=atol)
    assert torch.allclose(p1.grad, p2.grad, atol=1e-4)


def test_unsupported_bits_are_refused_by_name():
    with pytest.raises(ValueError, match="hwgq: unsupported bit-width 9"):
        registry.get("hwgq")(9)


def test_calibration_moves_ranges_in_eval_mode_and_leaves_batch_norm_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(4), registry.get("ema")(8)).eval()
    ema = model[1]
    bn_mean, bn_var = model[0].running_mean.clone(), model[0].running_var.clone()
    x = torch.randn(16, 4) * 5
    model(x)  # eval, outside the context: nothing moves
    assert float(ema.running_max) == 1.0 and not ema.is_calibrated()
    with calibration(model):
        model(x)
        model(x * 2)
    assert ema.is_calibrated() and float(ema.running_max) > 5
    assert torch.equal(model[0].running_mean, bn_mean) and torch.equal(model[0].running_var, bn_var)
    moved = ema.running_max.clone()
    model(x * 10)  # eval again, after the context: the range stays
    assert torch.equal(ema.running_max, moved) and not ema.calibrating
