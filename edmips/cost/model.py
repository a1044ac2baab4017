"""The cost protocol: what a budget counts, and the registry of cost models by name.

A cost model gives each searched layer a table C[w, a] over its candidate bit-widths (`entry`)
and says how a total is stated to users: per unit of the layers' summed `size` (BitOps per
FLOP, weight bits per parameter), passed through `stated` (BitOps: the square root, so that
W2A2 everywhere reads 2 equivalent bits). Budgets, the price that holds a search on one, the
allocation that lands on one and the totals of an architecture file all read these tables.

A new cost is one module of edmips.cost that defines a subclass decorated with `@register`,
one config conf/cost/<name>.yaml (`name: <name>`) and one test: `get` imports every module of
this package before its first lookup, so the module needs no import anywhere else.

The registry holds one instance per cost, made without arguments. A cost that needs settings
(latency_table: the file a user measured) reads them from its config group in `configure`,
which returns a configured instance; edmips.programs.checks is the one caller.
"""

import numpy as np
import torch
from torch import Tensor, nn

from edmips import Registry
from edmips.cost.layers import LayerCost

_MODELS = Registry("cost", "edmips.cost")  # CostModel instances


class CostModel:
    name: str  # the registry's key: cost=<name>
    unit: str  # what a stated number is, e.g. "equivalent bits"

    def entry(self, layer: LayerCost, w: int, a: int) -> int | float:
        """C[w, a]: the layer's cost at w-bit weights and a-bit activations."""
        raise NotImplementedError

    def size(self, layer: LayerCost) -> int:
        """The layer's size: totals are stated per unit of the layers' summed size."""
        raise NotImplementedError

    def stated(self, per_size):
        """A total per unit of size, as users read it (numbers, arrays or tensors)."""
        return per_size

    def per_size(self, stated: float) -> float:
        """The inverse of `stated`: a target as a total per unit of size."""
        return stated

    def configure(self, settings) -> "CostModel":
        """The cost model for a config group's settings (cost.<key>); most need none."""
        return self

    def factors(self, wspace, aspace) -> tuple[list, list] | None:
        """(u, v) where C[i, j] = size * u[i] * v[j]; None for a table that is no product. The
        price tilts product tables by their factors, without the matrix products."""
        return None

    # -- derived from the above ---------------------------------------------------------------
    def table(self, layer: LayerCost, wspace, aspace) -> np.ndarray:
        return np.array([[self.entry(layer, w, a) for a in aspace] for w in wspace])

    def total(self, layers: list[LayerCost], wbits, abits):
        return sum(self.entry(c, w, a) for c, w, a in zip(layers, wbits, abits, strict=True))

    def total_size(self, layers: list[LayerCost]) -> int | float:
        """What totals are stated per: the layers' summed size (a cost stated as a total, such
        as a latency in ms, returns a constant instead)."""
        return sum(self.size(c) for c in layers)

    def stated_total(self, total, layers: list[LayerCost]) -> float:
        return float(self.stated(total / self.total_size(layers)))

    def expected(self, layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
        """The stated cost expected under the selector softmaxes, differentiable: the search's
        penalty (mu is the cross-entropy traded for one stated unit)."""
        total = 0
        for cost, m in layers:
            p_w, p_a = m.probs_w(), m.probs_a()
            total = total + p_w @ self._device_table(cost, m, p_w) @ p_a
        return self.stated(total / self.total_size([c for c, _ in layers]))

    def _device_table(self, cost: LayerCost, m: nn.Module, like: Tensor) -> Tensor:
        """The layer's table as a tensor beside `like`, made once: the penalty is computed every
        training step, and a table rebuilt there would be a host-to-device copy per layer."""
        key = (cost, m.wbits, m.abits_space(), like.device, like.dtype)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            table = self.table(cost, m.wbits, m.abits_space())
            cache[key] = torch.tensor(table, dtype=like.dtype, device=like.device)
        return cache[key]


def register(cls: type[CostModel]) -> type[CostModel]:
    """Class decorator: the cost model, under its name."""
    _MODELS.add(cls.name, cls())
    return cls


def get(name: str) -> CostModel:
    return _MODELS.get(name)


def names() -> list[str]:
    return _MODELS.names()
