"""A budget in what a device pays for: `budget.<key>=<value>`, beside target_bits / target_bitops.

    budget.weight_size=2MiB         the searched layers' weights: cost=weight_size
    budget.activation_memory=64KiB  the activations they read, summed: cost=activation_memory
    budget.latency_ms=5             their measured total latency: cost=latency_table (cost.path=)
    budget.bitops=1.2e9             their BitOps: cost=bitops (as target_bitops)

A memory is a number with a unit, B, KiB, MiB, GiB (binary) or kB, MB, GB (decimal), or a plain
number of bits (the unit found.json records them in: weight_bits_total, activation_bits_total);
a latency a number of ms; BitOps a number. The key selects the cost (over the default bitops;
a different cost= is refused) and the target, which is converted here to the cost's stated
unit (bits per weight, ...) through the cost's own stated_total: the search, its price and
the allocation within 1% then run as for target_bits. One budget at a time for now: several at
once need one price per constraint, a later step.
"""

import math
import re
from contextlib import contextmanager

from omegaconf import DictConfig, OmegaConf

COSTS = {  # budget key: the cost it counts
    "weight_size": "weight_size",
    "activation_memory": "activation_memory",
    "latency_ms": "latency_table",
    "bitops": "bitops",
}
MEMORY = ("weight_size", "activation_memory")
BITS = {"bit": 1, "bits": 1, "B": 8, "kB": 8e3, "KB": 8e3, "MB": 8e6, "GB": 8e9}
BITS.update({"KiB": 8 * 2**10, "MiB": 8 * 2**20, "GiB": 8 * 2**30})
DEFAULT_COST = "bitops"  # the cost group's default: a budget key replaces it
_AMOUNT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


def requested(cfg: DictConfig) -> tuple[str, object] | None:
    """The budget key set and its value (None when none is); refuses two, or a budget beside
    target_bits / target_bitops, or one for another cost than the config's."""
    group = OmegaConf.select(cfg, "budget")
    if group is None:
        return None
    unknown = sorted(set(group) - set(COSTS))
    if unknown:
        raise ValueError(f"budget.{unknown[0]}: unknown budget; choose from {', '.join(COSTS)}")
    chosen = [(k, group[k]) for k in COSTS if group.get(k) is not None]
    if len(chosen) > 1:
        keys = " and ".join(f"budget.{k}" for k, _ in chosen)
        raise ValueError(f"{keys}: one budget at a time for now (several at once is a later step)")
    if not chosen:
        return None
    key, value = chosen[0]
    for other in ("target_bits", "target_bitops"):
        if OmegaConf.select(cfg, other) is not None:
            raise ValueError(f"set budget.{key} or {other}, not both")
    cost = OmegaConf.select(cfg, "cost.name")
    if key == "latency_ms" and cost != COSTS[key]:
        raise ValueError(
            "budget.latency_ms reads a measured table: add cost=latency_table cost.path=<file>"
        )
    if cost not in (COSTS[key], DEFAULT_COST):
        raise ValueError(f"budget.{key} counts {COSTS[key]}, not cost={cost}: drop cost={cost}")
    total(key, value)  # its value, checked before anything is built
    return key, value


def cost_name(cfg: DictConfig) -> str:
    """The cost a run counts: the budget's, else the cost group's."""
    chosen = requested(cfg)
    return COSTS[chosen[0]] if chosen else cfg.cost.name


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


def stated_target(cfg: DictConfig, cost, costs) -> float | None:
    """The target in the cost's stated unit, from target_bits, target_bitops (BitOps) or a
    budget key, for the searched layers `costs`; None without a budget."""
    chosen = requested(cfg)
    if chosen is not None:
        return cost.stated_total(total(*chosen), costs)
    if OmegaConf.select(cfg, "target_bitops") is not None:
        if cost.name != "bitops":
            raise ValueError(f"target_bitops is a BitOps budget, not {cost.name}: set target_bits")
        return cost.stated_total(cfg.target_bitops, costs)
    return OmegaConf.select(cfg, "target_bits")


def record(cfg: DictConfig) -> dict | None:
    """The budget key as found.json records it, {key: value as given}; None without one."""
    chosen = requested(cfg)
    return None if chosen is None else {chosen[0]: chosen[1]}


@contextmanager
def named(cfg: DictConfig):
    """A target's errors (out of reach) say which budget key asked for it: its stated number is
    in the cost's unit (bits per weight), not the one the user wrote (MiB)."""
    try:
        yield
    except ValueError as e:
        asked = requested(cfg)
        if asked is None:
            raise
        raise ValueError(f"budget.{asked[0]}={asked[1]}: {e}") from None
