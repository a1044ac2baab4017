"""ACIQ (Banner et al., analytical clipping for integer quantization): the clip alpha that
minimises the expected squared error of a uniform quantizer for a Laplace or Gaussian prior.

With M bits over [-alpha, alpha] the error is the clipping error of the tails plus the rounding
noise alpha^2 / (3 * 4^M) of the 2^M bins:

    Laplace(b):      2 b^2 exp(-alpha / b) + alpha^2 / (3 * 4^M)
    Gaussian(s):     (s^2 + alpha^2)(1 - erf(alpha / (s sqrt 2)))
                     - sqrt(2 / pi) alpha s exp(-alpha^2 / 2 s^2) + alpha^2 / (3 * 4^M)

Both scale with the prior's width, so alpha = k_M * b (k_M * s), k_M minimising the model at
unit width. A tensor after a ReLU is half of such a prior on [0, alpha]: its error is half the
full model's at M + 1 bits (the same bins over half the range), so it takes the multiplier one
bit up. `mix` picks per tensor the prior whose clip quantizes it with the lower error.
"""

import math
from functools import cache

from scipy.optimize import minimize_scalar
from scipy.special import erf

PRIORS = ("laplace", "gauss")


def rounding_noise(alpha: float, bits: int) -> float:
    return alpha**2 / (3 * 4**bits)


def laplace_mse(alpha: float, b: float, bits: int) -> float:
    return 2 * b**2 * math.exp(-alpha / b) + rounding_noise(alpha, bits)


def gauss_mse(alpha: float, sigma: float, bits: int) -> float:
    tail = (sigma**2 + alpha**2) * (1 - erf(alpha / (sigma * math.sqrt(2))))
    tail -= math.sqrt(2 / math.pi) * alpha * sigma * math.exp(-(alpha**2) / (2 * sigma**2))
    return tail + rounding_noise(alpha, bits)


MSE_MODELS = {"laplace": laplace_mse, "gauss": gauss_mse}


def model_mse(prior: str, alpha: float, width: float, bits: int, half_range: bool) -> float:
    """The prior's expected squared error at clip alpha; half range: of the positive half."""
    if half_range:
        return MSE_MODELS[prior](alpha, width, bits + 1) / 2
    return MSE_MODELS[prior](alpha, width, bits)


@cache
def multiplier(prior: str, bits: int, half_range: bool = False) -> float:
    """k with alpha = k * width minimising the prior's model at `bits` (numerically)."""
    if prior not in MSE_MODELS:
        raise ValueError(f"unknown prior {prior!r}: choose from {', '.join(PRIORS)}")
    m = bits + 1 if half_range else bits
    found = minimize_scalar(
        lambda k: MSE_MODELS[prior](k, 1.0, m),
        bounds=(0.1, 40.0),
        method="bounded",
        options={"xatol": 1e-9},
    )
    return float(found.x)


def aciq_alpha(prior: str, width: float, bits: int, half_range: bool) -> float:
    return multiplier(prior, bits, half_range) * width


def mix(widths: dict[str, float], bits: int, half_range: bool, error) -> tuple[str, float]:
    """(prior, alpha) of the prior whose clip has the lower `error(alpha)` on the tensor, given
    each prior's width (`laplace`: b, `gauss`: sigma). The error is measured on the data: the
    models themselves cannot judge between priors, the lighter-tailed Gaussian's predicting a
    smaller error for any tensor (a Laplace sample included)."""
    alphas = {prior: aciq_alpha(prior, widths[prior], bits, half_range) for prior in PRIORS}
    errors = {prior: error(alpha) for prior, alpha in alphas.items()}
    prior = min(PRIORS, key=errors.__getitem__)
    return prior, alphas[prior]
