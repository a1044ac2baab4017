"""Collect search runs (found.json) and retrain runs (metrics.json) into one table.

`collect(paths)` walks the given directories (Hydra sweep dirs or single run dirs) and returns
one `Run` per run found, with every cost the run recorded (edmips.report.summary writes them).
"""

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from edmips.cost import model as cost_models
from edmips.nn.policy import POLICIES
from edmips.quant.registry import EDMIPS
from edmips.records import arch as arch_file
from edmips.records import metrics as metrics_file
from edmips.report.costs import readable_size

log = logging.getLogger(__name__)

# every cost a run may record; weight_size is weight_bits as a person reads it (KiB, MiB)
COSTS = (
    "equivalent_bits",
    "bitops",
    "weight_bits",
    "weight_size",
    "activation_bits",
    "micronet_score",
    "latency_ms",
)
OPTIONAL = ("latency_ms",)  # a column only where some run records it: most never measure one
COLUMNS = (
    "kind",
    "network",
    "quant",
    "model",
    "data",
    "budget",
    *COSTS,
    "val_acc",
    "test_acc",
    "test_acc_integer",
    "agreement",
    "wall_time_s",
    "run_dir",
)
SUMMARY_COLUMNS = (
    "model",
    "data",
    "budget",
    "network",
    "quant",
    "runs",
    *COSTS,
    "test_acc_mean",
    "test_acc_std",
)
# Where a network's bits came from: the baselines after the searched networks (sensitivity:
# ptq.py's allocation from measured loss increases; micronet: a seed's fixed policy), the float
# ceiling last.
NETWORKS = ("searched", "uniform", "random", "sensitivity", *POLICIES, "float")
FLOAT = "float"  # the float network's kind and network: every layer at 32 bits
PTQ = "ptq"  # a post-training quantized network (ptq.py): never trained at its bits
TESTED = ("retrain", PTQ, FLOAT)  # the kinds of run with a test accuracy


class ReportError(ValueError):
    """Nothing to report: a path that does not exist, or no run under the given paths."""


@dataclass(frozen=True)
class Run:
    kind: str  # "search", "retrain", "ptq" or "float" (the float network: the ceiling)
    model: str
    data: str | None
    budget: str  # "2 bits", "mu=0.02", "uniform W2A2"
    equivalent_bits: float
    bitops: int
    weight_bits: int
    activation_bits: int | None  # None: the file does not record the layers' input sizes
    micronet_score: float | None  # None: a file older than the score
    val_acc: float | None
    test_acc: float | None
    test_acc_integer: float | None
    agreement: float | None
    wall_time_s: float | None
    run_dir: str
    network: str = "searched"  # or a baseline: "uniform", "random", "sensitivity"
    budget_bits: float | None = None  # the equivalent bits asked for (uniform: sqrt(w * a))
    quant: str = f"{EDMIPS.activation}/{EDMIPS.weight}"  # activation/weight quantizers, bn_fold
    latency_ms: float | None = None  # where a file records one (measured: cost=latency_table)

    @property
    def weight_size(self) -> str:
        return readable_size(self.weight_bits)

    def row(self) -> dict:
        return {c: getattr(self, c) for c in COLUMNS}


def shown(columns, rows: list[dict]) -> tuple:
    """The columns worth a table: an optional one only where some row has a value."""
    return tuple(c for c in columns if c not in OPTIONAL or any(r[c] is not None for r in rows))


def collect(paths) -> list[Run]:
    """Every run under `paths`, searches first, then ordered by model, data and bits."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path}: no such file or directory")
        for run_dir, files in _walk(path):
            for name, read in (("found.json", _search_run), ("metrics.json", _retrain_run)):
                if name in files:
                    try:
                        runs.append(read(run_dir))
                    # a broken run must not hide the rest of the sweep: report it and go on
                    # (the readers validate every field they hand on: ValueError names it)
                    except (ValueError, OSError) as e:
                        log.warning("skipped %s: %s", run_dir / name, e)
    if not runs:
        raise ReportError(
            f"no search run (found.json) or retrain run (metrics.json) under "
            f"{', '.join(map(str, paths))}"
        )
    # overlapping paths ("sweep", "sweep/0") name a run twice
    unique = {(r.kind, os.path.realpath(r.run_dir)): r for r in runs}
    return sorted(
        unique.values(),
        key=lambda r: (
            r.kind != "search",
            r.model,
            r.data or "",
            NETWORKS.index(r.network),
            r.equivalent_bits,
            r.run_dir,
        ),
    )


# -- reading runs ----------------------------------------------------------------------------
def _walk(root: Path):
    """(dir, file names) for root and every directory below it, in a stable order."""
    if root.is_file():  # a found.json or metrics.json named directly
        yield root.parent, {root.name}
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .hydra
        yield Path(dirpath), set(filenames)


def _search_run(run_dir: Path) -> Run:
    a = arch_file.load(run_dir / "found.json")
    return Run(
        "search",
        a.model,
        a.data,
        " + ".join(b["budget"] for b in a.extra["budgets"])  # several: every one's key=value
        if a.extra.get("budgets")
        else _budget(
            a.extra.get("target_bits"), a.extra.get("target_bitops"), a.mu, a.extra.get("cost")
        ),
        a.equivalent_bits,
        a.bitops,
        a.weight_bits_total,
        a.activation_bits_total,
        a.micronet_score,
        a.val_acc,
        a.extra.get("test_acc"),
        None,
        None,
        a.extra.get("wall_time_s"),
        str(run_dir),
        quant=_quant_label(Counter((x.aquant, x.wquant) for x in a.layers).most_common(1)[0][0]),
        latency_ms=a.extra.get("latency_ms"),
    )


def _quant_label(pair: tuple[str, str], bn_fold: bool = False) -> str:
    """activation/weight quantizer names, and whether batch norms were folded."""
    return "/".join(pair) + (" bn_fold" if bn_fold else "")


def _retrain_run(run_dir: Path) -> Run:
    m = metrics_file.load(run_dir / "metrics.json")
    family = m.quant or asdict(EDMIPS)  # files older than `quant`: edmips's
    quant = _quant_label((family["activation"], family["weight"]), bool(m.bn_fold))
    network = "uniform" if m.uniform else m.kind  # files older than `kind` name uniform only
    if m.kind == PTQ:  # files older than `allocation` name the arch only
        network = m.allocation or ("uniform" if m.uniform else _ptq_network(m.arch))
    if network not in NETWORKS:
        raise ValueError(f"unknown network kind {network!r}")
    if network == FLOAT:
        budget, budget_bits, quant = FLOAT, None, "-"  # nothing is quantized
    elif network in POLICIES:
        budget, budget_bits = f"{network} policy", m.equivalent_bits
    elif m.uniform:
        budget = f"uniform W{m.uniform['wbits']}A{m.uniform['abits']}"
        bitops = cost_models.get("bitops")
        budget_bits = float(bitops.stated(m.uniform["wbits"] * m.uniform["abits"]))
    else:
        budget = _budget(m.target_bits, None, m.mu)
        budget_bits = m.target_bits
    return Run(
        FLOAT if network == FLOAT else PTQ if m.kind == PTQ else "retrain",
        m.model,
        m.data,
        budget,
        m.equivalent_bits,
        m.bitops,
        m.weight_bits_total,
        m.activation_bits_total,
        m.micronet_score,
        m.val_acc,
        m.test_acc,
        m.test_acc_integer,
        m.prediction_agreement,
        m.wall_time_s,
        str(run_dir),
        network=network,
        quant=quant,
        budget_bits=budget_bits,
        latency_ms=m.latency_ms,
    )


def _ptq_network(arch: str | None) -> str:
    return arch if arch in ("random", "sensitivity") else "searched"


def _budget(target_bits, target_bitops, mu, cost=None) -> str:
    # in budget mode mu is the multiplier the search ended with, not what the user asked for
    if target_bits is not None and cost not in (None, "bitops"):
        return f"{target_bits:g} {cost_models.get(cost).unit}"
    if target_bits is not None:
        return f"{target_bits:g} bits"
    if target_bitops is not None:
        return f"{target_bitops:.3g} BitOps"
    return "-" if mu is None else f"mu={mu:g}"
