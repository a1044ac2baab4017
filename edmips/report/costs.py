"""The costs a run records, as the report shows them: table cells and the Pareto plot's x axis.

`python -m edmips report ... --x <cost>` plots accuracy against any of AXES, named as the cost
models are (edmips.cost): each names the Run field that holds it and how its axis reads.
"""

from dataclasses import dataclass

from edmips.cost.budget_spec import BITS

# binary units, largest first, as budget.weight_size=2MiB reads them
SIZES = tuple((unit, BITS[unit]) for unit in ("GiB", "MiB", "KiB", "B"))


@dataclass(frozen=True)
class Axis:
    field: str  # the Run attribute holding the cost
    label: str  # the axis label; a memory's unit is appended when the values are known
    memory: bool = False  # a number of bits, shown in the B/KiB/MiB that fits the values


AXES = {
    "equivalent_bits": Axis("equivalent_bits", "equivalent bits  sqrt(BitOps / FLOPs)"),
    "bitops": Axis("bitops", "BitOps  (sum of FLOPs x w x a)"),
    "weight_size": Axis("weight_bits", "weight size", memory=True),
    "activation_memory": Axis(
        "activation_bits", "activation memory, summed over layer inputs", memory=True
    ),
    "micronet_score": Axis(
        "micronet_score", "MicroNet score  (storage + math ops, relative to the reference)"
    ),
    "latency_table": Axis("latency_ms", "latency (ms, measured table)"),
}
DEFAULT = "equivalent_bits"


def axis(name: str) -> Axis:
    """The axis of a cost's name; an unknown one is refused in one line naming the choices."""
    if name not in AXES:
        raise ValueError(f"--x {name}: unknown cost; choose from {', '.join(AXES)}")
    return AXES[name]


def size_unit(bits: float) -> tuple[str, int]:
    """The largest binary unit the value is at least one of (bytes for anything smaller)."""
    for unit, scale in SIZES:
        if bits >= scale:
            return unit, scale
    return SIZES[-1]


def readable_size(bits: float | None) -> str | None:
    """Bits as a person reads a memory: 1.5 KiB, 2.25 MiB (None stays None: not recorded)."""
    if bits is None:
        return None
    unit, scale = size_unit(bits)
    return f"{bits / scale:.3g} {unit}"
