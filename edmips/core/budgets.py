"""A budget in what a device pays for: `budget.<key>=<value>`, beside target_bits / target_bitops.

    budget.weight_size=2MiB         every quantized weight: cost=weight_size
    budget.activation_memory=64KiB  the activations they read, summed: cost=activation_memory
    budget.latency_ms=5             their measured total latency: cost=latency_table (cost.path=)
    budget.bitops=1.2e9             their BitOps: cost=bitops (as target_bitops)

A memory is a number with a unit, B, KiB, MiB, GiB (binary) or kB, MB, GB (decimal), or a plain
number of bits (the unit found.json records them in: weight_bits_total, activation_bits_total);
a latency a number of ms; BitOps a number. The key selects the cost (over the default bitops;
a different cost= is refused) and the target, which is converted here to the cost's stated
unit (bits per weight, ...) through the cost's own stated_total: the search, its price and
the allocation within 1% then run as for target_bits. A weight size counts the weights of the
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
from contextlib import contextmanager

from omegaconf import DictConfig, OmegaConf

from edmips.cost import model as cost_models

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
_AMOUNT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


def requested(cfg: DictConfig) -> list[tuple[str, object]]:
    """The budget keys set and their values, bitops first (the primary of several); refuses a
    key beside target_bits / target_bitops that counts the same cost, or one for another cost
    than the config's."""
    group = OmegaConf.select(cfg, "budget")
    if group is None:
        return []
    unknown = sorted(set(group) - set(COSTS))
    if unknown:
        raise ValueError(f"budget.{unknown[0]}: unknown budget; choose from {', '.join(COSTS)}")
    chosen = [(k, group[k]) for k in ORDER if group.get(k) is not None]
    cost = OmegaConf.select(cfg, "cost.name")
    target = _target_key(cfg)
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
    for key, value in chosen:
        total(key, value)  # its value, checked before anything is built
    return chosen


def several(cfg: DictConfig) -> bool:
    """Several budgets at once (keys, or keys beside target_bits / target_bitops): each is an
    upper bound, met jointly (edmips/search/joint.py)."""
    return len(requested(cfg)) + (_target_key(cfg) is not None) > 1


def _target_key(cfg: DictConfig) -> str | None:
    for key in ("target_bits", "target_bitops"):
        if OmegaConf.select(cfg, key) is not None:
            return key
    return None


def cost_name(cfg: DictConfig) -> str:
    """The cost a run counts (the primary of several): target_bits's, the cost group's, else
    the first budget key's."""
    chosen = requested(cfg)
    return COSTS[chosen[0][0]] if chosen and _target_key(cfg) is None else cfg.cost.name


def total(key: str, value) -> float:
    """A budget's value as a total in its cost's own count: bits, ms or BitOps."""
    where = f"budget.{key}={value}"
    if key in MEMORY and isinstance(value, str):
        match = _AMOUNT.fullmatch(value)
        if match is None:
            raise ValueError(f"{where}: not an amount of memory, such as 2MiB or 512KiB")
        number, unit = float(match[1]), match[2] or "bits"
        if unit not in BITS:
            units = ", ".join(u for u in BITS if u != "bit")
            raise ValueError(f"{where}: unknown unit {unit!r}; write one of {units}")
        amount = number * BITS[unit]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = float(value)
    else:
        kind = {"latency_ms": "a number of ms", "bitops": "a number of BitOps"}
        raise ValueError(f"{where}: must be {kind.get(key, 'an amount of memory')}")
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"{where}: a budget must be positive")
    return amount


def stated_target(cfg: DictConfig, cost, costs, fixed_weight_bits: int = 0) -> float | None:
    """The target in the cost's stated unit, from target_bits, target_bitops (BitOps) or a
    budget key, for the searched layers `costs` (`fixed_weight_bits`: the weights outside
    them); None without a budget (one budget: with several, `targets`)."""
    chosen = requested(cfg)
    if chosen and _target_key(cfg) is None:
        return cost.stated_total(_searched_share(*chosen[0], fixed_weight_bits), costs)
    return _from_target_key(cfg, cost, costs)


def _searched_share(key: str, value, fixed_weight_bits: int) -> float:
    """What a budget leaves the searched layers: a weight size less the fixed layers' weights."""
    amount = total(key, value)
    if key != "weight_size":
        return amount
    if amount <= fixed_weight_bits:
        raise ValueError(
            f"budget.{key}={value}: the fixed-bit layers outside the search alone take "
            f"{fixed_weight_bits} bits ({fixed_weight_bits / 8:.0f} B)"
        )
    return amount - fixed_weight_bits


def _from_target_key(cfg: DictConfig, cost, costs) -> float | None:
    """target_bits as given, or target_bitops (a BitOps budget) in the cost's stated unit."""
    if OmegaConf.select(cfg, "target_bitops") is None:
        return OmegaConf.select(cfg, "target_bits")
    if cost.name != "bitops":
        raise ValueError(f"target_bitops is a BitOps budget, not {cost.name}: set target_bits")
    return cost.stated_total(cfg.target_bitops, costs)


def targets(cfg: DictConfig, costs, fixed_weight_bits: int = 0) -> list[tuple[str, object, float]]:
    """Every budget as (its key=value, its configured cost model, its target in the cost's
    stated unit), target_bits / target_bitops first: the primary cost of several."""
    found = []
    key = _target_key(cfg)
    if key is not None:
        cost = cost_models.get(cfg.cost.name).configure(cfg.cost)
        found.append((f"{key}={cfg[key]}", cost, _from_target_key(cfg, cost, costs)))
    for key, value in requested(cfg):
        cost = cost_models.get(COSTS[key]).configure(cfg.cost)
        share = _searched_share(key, value, fixed_weight_bits)
        found.append((f"budget.{key}={value}", cost, cost.stated_total(share, costs)))
    return found


def record(cfg: DictConfig) -> dict | None:
    """The budget key as found.json records it, {key: value as given}; None without one."""
    return dict(requested(cfg)) or None


@contextmanager
def named(cfg: DictConfig):
    """A target's errors (out of reach) say which budget key asked for it: its stated number is
    in the cost's unit (bits per weight), not the one the user wrote (MiB)."""
    try:
        yield
    except ValueError as e:
        asked = requested(cfg)
        if len(asked) != 1 or several(cfg):  # several: joint.py's errors name theirs
            raise
        raise ValueError(f"budget.{asked[0][0]}={asked[0][1]}: {e}") from None
