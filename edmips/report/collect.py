"""Collect search runs (found.json) and retrain runs (metrics.json) into one table.

`collect(paths)` walks the given directories (Hydra sweep dirs or single run dirs) and returns
one `Run` per run found, with every cost the run recorded (edmips.report.summary writes them).
Every file is read through its validating reader (edmips.records), after a check that each of
its numbers is one a float holds; a copy of a run found elsewhere is counted once.
"""

import json
import logging
import math
import os
import reprlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edmips.cost import budget_spec
from edmips.cost import model as cost_models
from edmips.nn.policy import POLICIES
from edmips.quant.registry import EDMIPS
from edmips.records import arch as arch_file
from edmips.records import metrics as metrics_file
from edmips.report.costs import SIZES, readable_size

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
# ptq.py's allocation from measured loss increases; calibration_search: ptq.py's selectors
# learned alone, the weights frozen; micronet: a seed's fixed policy), the float ceiling last.
NETWORKS = (
    "searched",
    "uniform",
    "random",
    "sensitivity",
    "calibration_search",
    *POLICIES,
    "float",
)
FLOAT = "float"  # the float network's kind and network: every layer at 32 bits
PTQ = "ptq"  # a post-training quantized network (ptq.py): never trained at its bits
TESTED = ("retrain", PTQ, FLOAT)  # the kinds of run with a test accuracy
KINDS = (*NETWORKS, PTQ)  # what metrics.json's `kind` may be
# each cost as a budget reads: its name and the unit of its stated number (target_bits)
STATED = {
    "bitops": ("BitOps", "bits eq."),
    "weight_size": ("weight size", "bits/weight"),
    "activation_memory": ("activation memory", "bits/activation"),
    "latency_table": ("latency", "ms"),
}


class ReportError(ValueError):
    """Nothing to report: a path that does not exist, or no run under the given paths."""


@dataclass(frozen=True)
class Run:
    kind: str  # "search", "retrain", "ptq" or "float" (the float network: the ceiling)
    model: str
    data: str | None
    budget: str  # "BitOps 2 bits eq.", "weight size 2 MiB", "mu=0.02", "uniform W2A2"
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
    network: str = "searched"  # the allocation: "searched", "uniform", "random", "sensitivity"
    # the budget a baseline without one is compared at: uniform W2A2 at "BitOps 2 bits eq."
    compared_at: str | None = None
    quant: str = f"{EDMIPS.activation}/{EDMIPS.weight}"  # activation/weight quantizers, bn_fold
    latency_ms: float | None = None  # where a file records one (measured: cost=latency_table)
    record: str = field(default="", repr=False, compare=False)  # its files: copies are equal

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
    ordered = sorted(
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
    return _once(ordered)


def _once(runs: list[Run]) -> list[Run]:
    """The runs less copies of one (a run dir copied elsewhere: the same config, seed and
    results), each named in one warning line."""
    first: dict[str, Run] = {}
    for r in runs:
        original = first.setdefault(r.record, r)
        if original is not r:
            log.warning(
                "%s and %s are copies of one run (same config, seed and results): counted once",
                original.run_dir,
                r.run_dir,
            )
    return list(first.values())


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
    path = run_dir / "found.json"
    a = _load_arch(path)
    return Run(
        "search",
        a.model,
        a.data,
        budget_label(a.extra, path) or _mu(a.mu),
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
        network=_arch_kind(a, path) or "searched",
        quant=_quant_label(Counter((x.aquant, x.wquant) for x in a.layers).most_common(1)[0][0]),
        latency_ms=a.extra.get("latency_ms"),
        record=_record(a.to_dict(), run_dir),
    )


def _quant_label(pair: tuple[str, str], bn_fold: bool = False) -> str:
    """activation/weight quantizer names, and whether batch norms were folded."""
    return "/".join(pair) + (" bn_fold" if bn_fold else "")


def _retrain_run(run_dir: Path) -> Run:
    path = run_dir / "metrics.json"
    _check_numbers(path)
    m = metrics_file.load(path)
    if m.kind not in KINDS:
        raise ValueError(f"{path}: kind={m.kind!r} is not one of {', '.join(KINDS)}")
    if m.allocation is not None and m.allocation not in NETWORKS:
        raise ValueError(f"{path}: allocation={m.allocation!r} is not one of {', '.join(NETWORKS)}")
    # the architecture the run trained (retrain.py and ptq.py write it beside metrics.json): it
    # records the allocation that made it (kind) and the cost its budget counts
    arch_path = run_dir / "arch.json"
    made = _load_arch(arch_path) if arch_path.exists() else None
    made_by = made and _arch_kind(made, arch_path)
    family = m.quant or asdict(EDMIPS)  # files older than `quant`: edmips's
    quant = _quant_label((family["activation"], family["weight"]), bool(m.bn_fold))
    if m.kind == PTQ:  # files older than `allocation` name the arch only
        network = m.allocation or made_by or ("uniform" if m.uniform else _ptq_network(m.arch))
    elif m.uniform:  # files older than `kind` name uniform only
        network = "uniform"
    else:  # retrain.py's kind of an arch file is "searched", whatever allocation made it
        network = made_by if m.kind == "searched" and made_by else m.kind
    compared_at = None
    if network == FLOAT:
        budget, quant = FLOAT, "-"  # nothing is quantized
    elif network in POLICIES:
        budget, compared_at = f"{network} policy", _stated("bitops", m.equivalent_bits)
    elif m.uniform:
        budget = f"uniform W{m.uniform['wbits']}A{m.uniform['abits']}"
        bits = cost_models.get("bitops").stated(m.uniform["wbits"] * m.uniform["abits"])
        compared_at = _stated("bitops", float(bits))
    else:
        given = {k: getattr(m, k) for k in ("target_bits", "budget", "budgets", "latency_table")}
        # metrics.json does not record the cost: its arch.json does (none: bitops, the default)
        given["cost"] = made.extra.get("cost") if made else None
        budget = budget_label(given, path) or _mu(m.mu)
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
        compared_at=compared_at,
        latency_ms=m.latency_ms,
        record=_record([m.to_dict(), made and made.to_dict()], run_dir),
    )


def _load_arch(path: Path) -> arch_file.Arch:
    _check_numbers(path)
    return arch_file.load(path)


def _arch_kind(a: arch_file.Arch, path: Path) -> str | None:
    """The allocation an arch file records having made it (sensitivity), None where none."""
    kind = a.extra.get("kind")
    if kind is not None and kind not in NETWORKS:
        raise ValueError(f"{path}: kind={kind!r} is not one of {', '.join(NETWORKS)}")
    return kind


def _ptq_network(arch: str | None) -> str:
    return arch if arch in ("random", "sensitivity") else "searched"


def _record(content, run_dir: Path) -> str:
    """What makes two run dirs one run: the files' content (results, seed, the architecture)
    and the config the run was started with, where Hydra saved it."""
    config = run_dir / ".hydra" / "config.yaml"
    return json.dumps([content, config.read_text() if config.is_file() else None], sort_keys=True)


def _check_numbers(path: Path) -> None:
    """Refuse a file with a number no float holds (JSON reads 1e400 as inf, NaN as nan, and a
    400-digit integer overflows a float), in one line naming the field. A file that is not JSON
    is left to its reader to name."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    bad = _non_finite(content)
    if bad:
        where, value = bad
        raise ValueError(f"{path}: {where}={reprlib.repr(value)} is not a finite number")


def _non_finite(value, where: str = "") -> tuple[str, object] | None:
    """(the field, the value) of the first number inside `value` that is no finite float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return None if math.isfinite(float(value)) else (where or "value", value)
        except OverflowError:
            return where or "value", value
    if not isinstance(value, (dict, list)):
        return None
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


# -- budgets ---------------------------------------------------------------------------------
def budget_label(given: dict, path: Path) -> str | None:
    """The budget a run was held to, its cost and unit named: "BitOps 3 bits eq.", "weight size
    2 MiB", "latency 1.2 ms", several joined by " + "; None without one. `given`: the fields of
    found.json (or metrics.json) that record it: budget, budgets, target_bits, target_bitops,
    cost, latency_table."""
    keys = {key: _given(key, value, path) for key, value in (given.get("budget") or {}).items()}
    if given.get("budgets"):  # several, each with its cost: a key as given, a target as stated
        return " + ".join(
            keys.get(b["budget"].removeprefix("budget.").partition("=")[0])
            or _stated(b["cost"], b["target"])
            for b in given["budgets"]
        )
    if keys:
        return " + ".join(keys.values())
    if given.get("target_bits") is not None:
        cost = given.get("cost") or ("latency_table" if given.get("latency_table") else "bitops")
        return _stated(cost, given["target_bits"])
    if given.get("target_bitops") is not None:
        return f"BitOps {given['target_bitops']:.4g}"
    return None


def _given(key: str, value, path: Path) -> str:
    """A budget key's value (budget.weight_size=2MiB) in its cost's own count and unit."""
    if key not in budget_spec.COSTS:
        raise ValueError(
            f"{path}: budget.{key} is not a budget key ({', '.join(budget_spec.COSTS)})"
        )
    try:
        amount = budget_spec.amount(key, value)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if key in budget_spec.MEMORY:
        return f"{STATED[key][0]} {_memory(amount)}"
    if key == "latency_ms":
        return f"latency {amount:.4g} ms"
    return f"BitOps {amount:.4g}"


def _memory(bits: float) -> str:
    """Bits in the largest unit that counts them whole: 2 MiB, 1200 B (bits where none does)."""
    for unit, scale in SIZES:
        if bits % scale == 0:
            return f"{bits / scale:.10g} {unit}"
    return f"{bits:.10g} bits"


def _stated(cost: str, target: float) -> str:
    """A target in its cost's stated unit (target_bits): "BitOps 3 bits eq."."""
    name, unit = STATED[cost] if cost in STATED else (cost, cost_models.get(cost).unit)
    return f"{name} {target:.4g} {unit}"


def _mu(mu: float | None) -> str:
    # without a budget, the multiplier the search was run with
    return "-" if mu is None else f"mu={mu:g}"
