"""Budget control: land the search on a requested equivalent bit-width without tuning mu.

The complexity weight mu is the Lagrange multiplier of the constraint "equivalent bits <=
target". Dual ascent raises it while the expected equivalent bit-width is above the target and
lowers it while below; the update is multiplicative, so it needs no knowledge of the scale of
the complexity term, and it runs on the device (no host sync per step).
"""

import torch
from torch import Tensor


class DualAscent:
    def __init__(
        self, target_bits: float, lr: float = 0.05, min_mu: float = 1e-6, max_mu: float = 1e3
    ):
        if target_bits <= 0:
            raise ValueError(f"target_bits must be positive, got {target_bits}")
        self.target_bits, self.lr, self.min_mu, self.max_mu = target_bits, lr, min_mu, max_mu

    def update(self, mu: Tensor, expected_bits: Tensor) -> Tensor:
        violation = expected_bits / self.target_bits - 1.0
        return (mu.clamp_min(self.min_mu) * torch.exp(self.lr * violation)).clamp(
            self.min_mu, self.max_mu
        )


def closest_to_budget(
    probs_w: list[Tensor],
    probs_a: list[Tensor],
    wbits: list[tuple],
    abits: list[tuple],
    flops: list[int],
    target_bits: float,
    steps: int = 60,
) -> tuple[list[int], list[int]]:
    """The architecture the selectors prefer, at the equivalent bit-width nearest the target.

    Each layer takes the (w, a) pair maximising log p_w + log p_a - lam * FLOPs * w * a / sum
    FLOPs: lam = 0 is winner-take-all, a larger lam buys fewer bits. Bisection on lam finds
    where the network crosses the target; the closer of the two sides wins.
    """
    total = float(sum(flops))
    options = []  # per layer: (score [W, A], cost [W, A]) as float64
    for pw, pa, wb, ab, f in zip(probs_w, probs_a, wbits, abits, flops, strict=True):
        score = (
            pw.detach().double().cpu().log()[:, None] + pa.detach().double().cpu().log()[None, :]
        )
        cost = (
            f / total * torch.tensor(wb, dtype=torch.float64)[:, None] * torch.tensor(ab)[None, :]
        )
        options.append((score, cost))

    def pick(lam: float):
        chosen = [divmod(int((s - lam * c).flatten().argmax()), c.shape[1]) for s, c in options]
        bits = sum(float(c[i, j]) for (_, c), (i, j) in zip(options, chosen)) ** 0.5
        return chosen, bits

    lo, hi = -1e4, 1e4  # lam: -1e4 buys the most bits anywhere, 1e4 the fewest
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pick(mid)[1] > target_bits else (lo, mid)
    (above, b_above), (below, b_below) = pick(lo), pick(hi)
    chosen = above if abs(b_above - target_bits) < abs(b_below - target_bits) else below
    return (
        [wb[i] for wb, (i, _) in zip(wbits, chosen)],
        [ab[j] for ab, (_, j) in zip(abits, chosen)],
    )
