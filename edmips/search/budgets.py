"""The budgets one allocation is held to, behind one interface for one budget or several.

One budget is a target met within 1% in its stated unit; its price may go negative
(edmips/search/budget.py). Several are upper bounds, each with a price >= 0
(edmips/search/joint.py). The two semantics differ on purpose and stay where they are; every
caller (the search, arch=random, arch=sensitivity, ptq.py's arch=search, rediscretize, the
records) asks `Budgets` and never how many budgets there are.
"""

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from edmips.cost.budget_spec import BudgetSpec
from edmips.cost.latency_table import recorded
from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel
from edmips.search import joint
from edmips.search.budget import (
    Budget,
    BudgetPrice,
    best_scoring,
    check_reachable,
    closest_to_budget,
    random_allocation,
)


class Budgets:
    """Budgets (each a Budget: cost, layers, candidates, target in the cost's stated unit) with
    their labels (`key=value`, as the user wrote them); the first is the primary."""

    def __init__(
        self, held: Sequence[Budget], labels: Sequence[str], named: bool = False, target_bits=None
    ):
        if not held:
            raise ValueError("no budget to hold an allocation to")
        self.held, self.labels = list(held), list(labels)
        # one budget from a budget.<key>: its errors say which key (the stated number is in the
        # cost's unit, bits per weight, not the one the user wrote, MiB)
        self.named = named and len(self.held) == 1
        self.target_bits = target_bits  # as the user gave it, beside several: found.json's

    @classmethod
    def of(
        cls,
        specs: Sequence[BudgetSpec],
        costs: Mapping[str, CostModel],
        layers: list[LayerCost],
        wspaces: list[tuple[int, ...]],
        aspaces: list[tuple[int, ...]],
        fixed_weight_bits: int = 0,
        tables=None,
    ) -> "Budgets":
        """The budgets `specs` ask for over these layers and candidates, each cost configured
        in `costs` (by name); `fixed_weight_bits`: the weights outside the layers. Checked:
        one against its reach (`tables`: its tables, when they are at hand), several
        together."""
        held = [
            Budget(c, layers, wspaces, aspaces, s.stated_target(c, layers, fixed_weight_bits))
            for s, c in ((s, costs[s.cost]) for s in specs)
        ]
        named = len(specs) == 1 and not specs[0].is_target_key
        target_bits = next((s.value for s in specs if s.key == "target_bits"), None)
        budgets = cls(held, [s.label for s in specs], named, target_bits)
        budgets.check(tables)
        return budgets

    def __len__(self) -> int:
        return len(self.held)

    @property
    def primary(self) -> Budget:
        return self.held[0]

    @property
    def several(self) -> bool:
        return len(self.held) > 1

    def check(self, tables=None) -> None:
        """Refuses budgets the space cannot meet: one out of its reach (`tables`: its tables,
        when they are at hand), several that cannot be met together, naming the one."""
        if self.several:
            joint.check_jointly_reachable(self.held, self.labels)
            return
        with _named(self.labels[0] if self.named else None):
            check_reachable(self.primary, tables)

    def price(self) -> nn.Module:
        """What solves for the price(s) that hold the expected cost on the budgets (in the
        search and ptq.py's arch=search): `tilts(logits_w, logits_a)`."""
        if self.several:
            return joint.JointPrice(self.held, self.labels)
        return BudgetPrice(self.primary)

    def closest(self, probs_w: list[Tensor], probs_a: list[Tensor]):
        """The most probable allocation within the budgets, (wbits, abits)."""
        if self.several:
            return joint.joint_closest(probs_w, probs_a, self.held)
        return closest_to_budget(probs_w, probs_a, self.primary)

    def random(self, seed: int):
        """A random allocation within the budgets, fixed by `seed`."""
        if self.several:
            return joint.joint_random(self.held, seed)
        return random_allocation(self.primary, seed)

    def best(self, scores):
        """The allocation maximising the summed scores[l][i, j] within the budgets."""
        if self.several:
            return joint.joint_best(scores, self.held)
        return best_scoring(scores, self.primary)

    def missed(self, wbits, abits, tolerance: float = 0.01) -> str | None:
        """A line where the allocation misses the budgets by more than `tolerance`: one budget's
        target (the layers' few (w, a) choices can leave every allocation that far off; the
        nearest is taken), or one of several exceeded (none met them all); None where it
        does not."""
        spent = joint.stated_costs(self.held, wbits, abits)
        if not self.several:
            (budget,), (cost,) = self.held, spent
            off = abs(cost - budget.target) / budget.target
            if off > tolerance:
                return (
                    f"no allocation within {100 * tolerance:.0f}% of the target "
                    f"{budget.target:.4g} {budget.cost.unit} was found: the nearest, {cost:.4g}, "
                    f"is {100 * off:.2f}% off"
                )
            return None
        for label, budget, cost in zip(self.labels, self.held, spent):
            per_size = budget.cost.per_size  # as the joint allocation compares them: totals
            if per_size(cost) > (1 + tolerance) * per_size(budget.target):
                return (
                    f"no allocation within every budget was found: {label} spends {cost:.4g} "
                    f"{budget.cost.unit}, over its target of {budget.target:.4g}"
                )
        return None

    def record(self, wbits, abits) -> dict:
        """What found.json records of the budgets an allocation was made within: the primary's
        cost; one budget's target in its unit (`target_bits`), or beside several target_bits as
        the user gave it and each one's target and spend (`budgets`); a latency table's ms."""
        first = self.primary
        record = {"cost": first.cost.name}
        record |= recorded([b.cost for b in self.held], first.layers, wbits, abits)
        if not self.several:
            return record | {"target_bits": first.target}
        spent = joint.achieved(self.held, self.labels, wbits, abits)
        return record | {"target_bits": self.target_bits, "budgets": spent}


class _named:
    """Prefixes a ValueError's message with `label` (None: as it is)."""

    def __init__(self, label: str | None):
        self.label = label

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if self.label is not None and isinstance(error, ValueError):
            raise ValueError(f"{self.label}: {error}") from None
        return False
