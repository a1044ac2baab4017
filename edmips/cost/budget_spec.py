"""A budget in what a device pays for: `budget.<key>=<value>`, beside target_bits / target_bitops,
parsed once into BudgetSpecs (pure data: which cost, how much, as the user stated it).

    budget.weight_size=2MiB         every quantized weight: cost=weight_size
    budget.activation_memory=64KiB  the activations they read, summed: cost=activation_memory
    budget.latency_ms=5             their measured total latency: cost=latency_table (cost.path=)
    budget.bitops=1.2e9             their BitOps: cost=bitops (as target_bitops)

A memory is a number with a unit, B, KiB, MiB, GiB (binary) or kB, MB, GB (decimal), or a plain
number of bits (the unit found.json records them in: weight_bits_total, activation_bits_total);
a latency a number of ms; BitOps a number. The key selects the cost (over the default bitops;
a different cost= is refused) and the target, which is converted to the cost's stated unit
(bits per weight, ...) through the cost's own stated_total: the search, its price and the
allocation within 1% then run as for target_bits. A weight size counts the weights of the
fixed-bit layers outside the search too (the first conv and the classifier at 8 bits): they are
taken off the budget before the searched layers' share is stated. The other costs count the
searched layers, as BitOps and target_bits do.

Several at once (`budget.bitops=3e8 budget.weight_size=1480B`, or `target_bits=2
budget.weight_size=1480B`: target_bits counts the cost group's cost, bitops by default) are
upper bounds, each cost at most its target, held by one price each (edmips/search/joint.py).
A key counting the cost that target_bits / target_bitops already counts is refused: it would
be a second target for one cost.
"""

import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel

COSTS = {  # budget key: the cost it counts
    "weight_size": "weight_size",
    "activation_memory": "activation_memory",
    "latency_ms": "latency_table",
    "bitops": "bitops",
}
MEMORY = ("weight_size", "activation_memory")
BITS = {"bit": 1, "bits": 1, "B": 8, "kB": 8e3, "KB": 8e3, "MB": 8e6, "GB": 8e9}
BITS.update({"KiB": 8 * 2**10, "MiB": 8 * 2**20, "GiB": 8 * 2**30})
# of several, the primary (the dynamic program's first) leads
ORDER = ("bitops", "weight_size", "activation_memory", "latency_ms")
DEFAULT_COST = "bitops"  # the cost group's default: a budget key replaces it
TARGET_KEYS = ("target_bits", "target_bitops")
_AMOUNT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


@dataclass(frozen=True)
class BudgetSpec:
    """One budget as the user stated it (`key=value`) and the cost it counts. `amount`: for
    target_bits the target in the cost's stated unit, otherwise the total in the cost's own
    count (bits, ms, BitOps), which `stated_target` states per searched layer."""

    key: str  # target_bits, target_bitops or budget.<name>
    value: object
    cost: str
    amount: float

    @property
    def label(self) -> str:
        return f"{self.key}={self.value}"

    @property
    def is_target_key(self) -> bool:
        return self.key in TARGET_KEYS

    def stated_target(
        self, cost: CostModel, layers: list[LayerCost], fixed_weight_bits: int = 0
    ) -> float:
        """The target in `cost`'s stated unit for the searched `layers` (`fixed_weight_bits`:
        the weights outside them, which a weight size counts)."""
        if self.key == "target_bits":
            return self.amount
        amount = self.amount
        if self.key == "budget.weight_size":  # what the budget leaves the searched layers
            if amount <= fixed_weight_bits:
                raise ValueError(
                    f"{self.label}: the fixed-bit layers outside the search alone take "
                    f"{fixed_weight_bits} bits ({fixed_weight_bits / 8:.0f} B)"
                )
            amount -= fixed_weight_bits
        return cost.stated_total(amount, layers)


def parse(group: Mapping | None, target_bits, target_bitops, cost: str) -> tuple[BudgetSpec, ...]:
    """The budgets a run asks for, the primary first: target_bits / target_bitops (counting
    `cost`, the cost group's), then the `budget` group's keys in ORDER. Refuses both target keys,
    a key beside them that counts the same cost, a key for another cost than `cost`, and any
    amount that is not one."""
    if target_bits is not None and target_bitops is not None:
        raise ValueError("set target_bits or target_bitops, not both")
    group = group or {}
    for key, value in group.items():
        _finite(key, value)
    unknown = sorted(set(group) - set(COSTS))
    if unknown:
        raise ValueError(f"budget.{unknown[0]}: unknown budget; choose from {', '.join(COSTS)}")
    chosen = [(k, group[k]) for k in ORDER if group.get(k) is not None]
    target = "target_bits" if target_bits is not None else None
    target = "target_bitops" if target_bitops is not None else target
    for key, _ in chosen:
        # target_bits counts the cost group's cost: a key counting the same is a second target
        if target is not None and COSTS[key] == cost:
            raise ValueError(f"set budget.{key} or {target}, not both")
        if key == "latency_ms" and cost != COSTS[key]:
            raise ValueError(
                "budget.latency_ms reads a measured table: add cost=latency_table cost.path=<file>"
            )
    counted = {DEFAULT_COST, *(COSTS[k] for k, _ in chosen)}
    if chosen and target is None and cost not in counted:
        key = chosen[0][0]
        raise ValueError(f"budget.{key} counts {COSTS[key]}, not cost={cost}: drop cost={cost}")
    specs = [BudgetSpec(f"budget.{k}", v, COSTS[k], amount(k, v)) for k, v in chosen]
    if target_bitops is not None:
        if cost != "bitops":
            raise ValueError(f"target_bitops is a BitOps budget, not {cost}: set target_bits")
        specs.insert(0, BudgetSpec("target_bitops", target_bitops, cost, float(target_bitops)))
    elif target_bits is not None:
        specs.insert(0, BudgetSpec("target_bits", target_bits, cost, target_bits))
    return tuple(specs)


def _finite(key: str, value) -> None:
    """budget.<key>=inf (or nan, or 1e400MiB): not finite, which `amount` would call not
    positive."""
    number = value.strip().rstrip(string.ascii_letters) if isinstance(value, str) else value
    try:
        number = float(number)
    except (TypeError, ValueError):
        return  # not a number: `amount` says what it must be
    if not math.isfinite(number):
        raise ValueError(f"budget.{key}={value}: not finite; a budget is a positive amount")


def amount(key: str, value) -> float:
    """A budget's value as an amount in its cost's own count: bits, ms or BitOps."""
    where = f"budget.{key}={value}"
    if key in MEMORY and isinstance(value, str):
        match = _AMOUNT.fullmatch(value)
        if match is None:
            raise ValueError(f"{where}: not an amount of memory, such as 2MiB or 512KiB")
        number, unit = float(match[1]), match[2] or "bits"
        if unit not in BITS:
            units = ", ".join(u for u in BITS if u != "bit")
            raise ValueError(f"{where}: unknown unit {unit!r}; write one of {units}")
        counted = number * BITS[unit]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        counted = float(value)
    else:
        kind = {"latency_ms": "a number of ms", "bitops": "a number of BitOps"}
        raise ValueError(f"{where}: must be {kind.get(key, 'an amount of memory')}")
    if not math.isfinite(counted) or counted <= 0:
        raise ValueError(f"{where}: a budget must be positive")
    return counted


def counted_cost(specs: tuple[BudgetSpec, ...], cost: str) -> str:
    """The cost a run counts (the primary of several): the first budget's, else the cost
    group's."""
    return specs[0].cost if specs else cost


def recorded_keys(specs: tuple[BudgetSpec, ...]) -> dict | None:
    """The budget keys as found.json records them, {key: value as given}; None without one."""
    return {s.key.removeprefix("budget."): s.value for s in specs if not s.is_target_key} or None
