"""ACIQ's multipliers are the optima of its MSE models and the seed's constants; its clips
beat min-max on Laplace data; mix picks the prior with the lower model error."""

import math

import pytest
import torch

from edmips.ptq import aciq, clipping
from edmips.quant.clipped import ClipStatistics

# Banner et al. (int_quantizer.py): alpha = k * b (Laplace), k * sigma (Gaussian), by bits;
# the half range of a tensor after a ReLU takes the tables one bit up.
SEED = {
    ("laplace", False): {2: "2.83", 3: "3.89", 4: "5.03", 8: "9.89"},
    ("gauss", False): {2: "1.71", 3: "2.15", 4: "2.55", 8: "3.92"},
    ("laplace", True): {2: "3.89", 3: "5.02", 4: "6.2", 8: "11.16"},
    ("gauss", True): {2: "2.15", 3: "2.55", 4: "2.93", 8: "4.2"},
}
CASES = [(p, h, b, k) for (p, h), table in SEED.items() for b, k in table.items()]


@pytest.mark.parametrize("prior,half,bits,seed", CASES)
def test_the_multipliers_are_the_seeds_constants_to_their_digits(prior, half, bits, seed):
    # The seed's constants are the optima cut to their digits (some rounded, some truncated:
    # 5.0286 is both its 4-bit 5.03 and its half-range 3-bit 5.02): within one last digit.
    digits = len(seed.split(".")[1])
    assert abs(aciq.multiplier(prior, bits, half) - float(seed)) < 10**-digits


@pytest.mark.parametrize("prior,half,bits,seed", CASES)
def test_the_multipliers_minimise_the_mse_model(prior, half, bits, seed):
    width = 0.7
    alpha = aciq.aciq_alpha(prior, width, bits, half)
    best = aciq.model_mse(prior, alpha, width, bits, half)
    for delta in (-1e-3, 1e-3, -0.05, 0.05):
        assert best < aciq.model_mse(prior, alpha + delta, width, bits, half)


def test_an_unknown_prior_is_refused():
    with pytest.raises(ValueError, match="unknown prior 'cauchy'"):
        aciq.multiplier("cauchy", 4)


def _stats(x: torch.Tensor) -> ClipStatistics:
    stats = ClipStatistics()
    stats.add(x)
    return stats


def _laplace(n=200_000, b=0.5):
    torch.manual_seed(0)
    return torch.distributions.Laplace(0.0, b).sample((n,))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_aciq_beats_min_max_on_a_laplace_sample(bits, signed):
    x = _laplace()
    stats = _stats(x)
    errors = {
        name: clipping.measured_mse(x, clipping.method(name)(stats, bits, signed), bits, signed)
        for name in ("minmax", "aciq_laplace", "aciq_mix", "mse")
    }
    assert errors["aciq_laplace"] < errors["minmax"]
    assert errors["aciq_mix"] < errors["minmax"]
    assert errors["mse"] <= errors["aciq_laplace"] * 1.01  # the measured optimum, on a grid


def test_the_laplace_width_is_the_mean_absolute_deviation():
    x = _laplace(b=0.5) + 3.0
    assert clipping.widths(_stats(x), signed=True)["laplace"] == pytest.approx(0.5, rel=0.02)
    assert clipping.widths(_stats(x - 3.0), signed=False)["laplace"] == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("signed", [True, False])
def test_mix_picks_the_prior_with_the_lower_mse(signed):
    torch.manual_seed(0)
    for x, expected in ((_laplace(), "laplace"), (torch.randn(200_000), "gauss")):
        stats = _stats(x)
        errors = {
            prior: clipping.measured_mse(
                x, clipping.method(f"aciq_{prior}")(stats, 3, signed), 3, signed
            )
            for prior in aciq.PRIORS
        }
        assert min(errors, key=errors.get) == expected
        assert clipping.aciq_mix(stats, 3, signed) == clipping.method(f"aciq_{expected}")(
            stats, 3, signed
        )


def test_the_mse_models_alone_would_favour_the_gaussian():
    x = _laplace()
    widths = clipping.widths(_stats(x), signed=True)
    predicted = {
        p: aciq.model_mse(p, aciq.aciq_alpha(p, widths[p], 3, False), widths[p], 3, False)
        for p in aciq.PRIORS
    }
    assert predicted["gauss"] < predicted["laplace"]  # so mix measures the error instead


def test_the_clip_never_exceeds_the_largest_value():
    x = torch.tensor([-1.0, 1.0] * 50)  # two points: b = 1, and 2.83 b would be beyond them
    assert clipping.method("aciq_laplace")(_stats(x), 2, True) == 1.0
    assert not math.isnan(clipping.method("mse")(_stats(torch.zeros(10)), 2, True))


def test_an_unknown_clip_method_is_refused():
    with pytest.raises(ValueError, match="ptq.activation_clip=tanh: choose from minmax"):
        clipping.method("tanh")
