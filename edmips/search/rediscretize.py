"""Any epoch's selectors of a finished search, discretized again, as an architecture file.

    python -m edmips rediscretize <search run> --epoch N --discretize MODE [--target-bits B] --out F

The paper takes the architecture of an earlier epoch (its epoch 15) or samples several from
the same selectors; history.json holds every epoch's selector probabilities, so neither needs a
new search. MODE: argmax | categorical | multinomial (with --trials) | budget (the most
probable architecture within 1% of --target-bits in the search's cost, by default the search's
own target, or within each of its budgets where it had several).
"""

import argparse
import logging
from pathlib import Path

import torch

from edmips.core.cli import one_line_errors
from edmips.cost import model as cost_models
from edmips.records import arch as arch_file
from edmips.records import history as history_file
from edmips.search.budget import Budget
from edmips.search.budgets import Budgets
from edmips.search.discretize import MODES, choose_bits

log = logging.getLogger(__name__)


def rediscretize(
    run_dir: Path,
    epoch: int,
    mode: str,
    target_bits: float | None = None,
    trials: int = 100,
    seed: int = 0,
) -> arch_file.Arch:
    """The architecture `mode` derives from the selectors after `epoch` epochs (0: the start)."""
    if mode not in (*MODES, "budget"):
        raise ValueError(f"unknown discretization {mode!r}: choose from {', '.join(MODES)}, budget")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(
            f"{run_dir}: a file, not a search run: name the folder holding found.json and "
            "history.json"
        )
    found = arch_file.load(run_dir / "found.json")
    history_path = run_dir / "history.json"
    if not history_path.is_file():
        raise FileNotFoundError(f"{history_path}: no such file (not a finished search run?)")
    history = {entry["epoch"]: entry for entry in history_file.load(history_path, found)}
    if epoch not in history:
        raise ValueError(
            f"{history_path}: no epoch {epoch} (it has {min(history)}..{max(history)})"
        )
    entry = history[epoch]
    pw = [torch.tensor(p) for p in entry["probs_w"]]
    pa = [torch.tensor(p) for p in entry["probs_a"]]
    wspace = [tuple(found.space["wbits"])] * len(pw)
    aspace = found.activation_spaces()
    costs = found.costs()
    budgets = None
    if mode == "budget":
        budgets = _budgets(found, target_bits, costs, wspace, aspace)
    wbits, abits = choose_bits(pw, pa, wspace, aspace, mode, trials, seed, budgets)
    missed = None if budgets is None else budgets.missed(wbits, abits)
    if missed:
        log.warning(missed)
    recorded = {"cost": found.extra.get("cost", "bitops"), "target_bits": None}
    return arch_file.build(
        found.model,
        found.space,
        costs,
        wbits,
        abits,
        entry["probs_w"],
        entry["probs_a"],
        [(x.wquant, x.aquant) for x in found.layers],
        mu=found.mu,
        final_mu=entry["mu"],
        data=found.data,
        val_acc=entry["val_acc"],
        discretization=mode,
        epoch=epoch,
        expected_bits=entry["expected_bits"],
        budget=found.extra.get("budget"),
        fixed_weight_bits=found.fixed_weight_bits,
        searched_in=str(run_dir),
        shared_weights=found.extra.get("shared_weights", True),
        **(recorded if budgets is None else budgets.record(wbits, abits)),
    )


def _budgets(found: arch_file.Arch, target_bits, costs, wspace, aspace) -> Budgets:
    """The search's budgets again, each in its cost's unit (each recorded one where it had
    several), or `target_bits` in the search's cost instead; checked against the space."""
    several = found.extra.get("budgets") if target_bits is None else None
    if several:
        held = [
            Budget(_cost(b["cost"], found), costs, wspace, aspace, b["target"]) for b in several
        ]
        budgets = Budgets(
            held, [b["budget"] for b in several], target_bits=found.extra.get("target_bits")
        )
    else:
        target = found.extra.get("target_bits") if target_bits is None else target_bits
        if target is None:
            raise ValueError("--discretize budget needs --target-bits (the search had no target)")
        cost = _cost(found.extra.get("cost", "bitops"), found)
        budgets = Budgets([Budget(cost, costs, wspace, aspace, target)], [f"target_bits={target}"])
    budgets.check()  # the search's own check: budgets the space can meet
    return budgets


def _cost(name: str, found: arch_file.Arch) -> cost_models.CostModel:
    """A cost the search was held to, configured as it was (a latency table: its file)."""
    return cost_models.get(name).configure({"path": found.extra.get("latency_table")})


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m edmips rediscretize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a search run directory")
    parser.add_argument("--epoch", type=int, required=True, help="epochs trained (0: the start)")
    parser.add_argument("--discretize", default="argmax", choices=(*MODES, "budget"))
    parser.add_argument("--target-bits", type=float, help="budget: the target in the cost's unit")
    parser.add_argument("--trials", type=int, default=100, help="multinomial: draws per layer")
    parser.add_argument("--seed", type=int, default=0, help="categorical, multinomial")
    parser.add_argument("--out", type=Path, required=True, help="the architecture file to write")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.out.exists():
            raise ValueError(f"--out {args.out}: exists; choose a new file")
        if args.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {args.trials}")
        if not 0 <= args.seed < 2**32:  # the seeds search.py takes (programs.checks.MAX_SEED)
            raise ValueError(f"--seed must be in 0 .. 4294967295, got {args.seed}")
        found = rediscretize(
            args.run_dir, args.epoch, args.discretize, args.target_bits, args.trials, args.seed
        )
        path = arch_file.save(found, args.out)
    print(f"{path}: {found.equivalent_bits:.3f} equivalent bits")
    return path
