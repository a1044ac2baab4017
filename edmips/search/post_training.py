"""The search's selectors learned alone, the network's weights frozen: ptq.py's `arch=search`.

A trained float network's searched layers become composite over the candidate bit-widths (as
in the search), each candidate quantizer calibrated as post-training quantization calibrates it.
Then only the selectors learn, by SGD on training images, to make the composite network's class
distribution match the float network's (the KL divergence that `arch=sensitivity` measures one
layer at a time, here through every layer at once), while the budget's price holds the expected
cost on the target at every step (edmips.search.budget) and the sharpness rises geometrically
from 1 to its final value, as in the search.

The allocation is the most probable one within the budget (the budget's dynamic program over
the selectors' log-probabilities, `Budgets.closest`): it meets one budget within 1%, or
several.
A composite layer mixes a candidate with the others, so the selectors see only part of a
candidate's own error: where one candidate is far worse than its neighbours (2-bit max-abs
weights keep {-max, 0, +max}), the allocation can pick it where the per-layer sensitivity would
not (bench/README.md measures both).
"""

import torch
from rich.progress import track
from torch import Tensor, nn

from edmips.core.classifier import kl_to, training_only
from edmips.nn.layers import is_selector
from edmips.search.budget import tilt_selectors
from edmips.search.budgets import Budgets


def learn_selectors(
    model: nn.Module,
    layers: list[nn.Module],
    price: nn.Module,
    images: Tensor,
    reference: Tensor,
    steps: int,
    lr: float,
    sharpness: float,
    batch_size: int,
    seed: int,
) -> tuple[list[float], float]:
    """Train the selectors of `layers` (composite layers of `model`) alone for `steps` batches
    of `images` against the float network's logits `reference`, under `price` (a budgets'
    `price()`); the weights, batch norms and clips stay as they are. Each step's KL, and the
    final price (the primary budget's)."""
    model.eval()  # batch norm frozen; the selectors are the only thing that moves
    selectors = [p for n, p in model.named_parameters() if is_selector(n)]
    optimizer = torch.optim.SGD(selectors, lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with training_only(model, selectors):
        for step in track(range(steps), description="selectors", transient=True):
            for m in layers:
                m.sharpness.fill_(sharpness ** (step / max(steps - 1, 1)))
            tilt_selectors(layers, price)
            drawn = torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)
            loss = kl_to(reference[drawn], model(images[drawn]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses, float(tilt_selectors(layers, price))


def allocation(layers: list[nn.Module], budgets: Budgets) -> tuple[list[int], list[int]]:
    """The most probable (wbits, abits) per layer within the budgets (one within 1%, or
    several, each an upper bound)."""
    return budgets.closest([m.probs_w() for m in layers], [m.probs_a() for m in layers])
