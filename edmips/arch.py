"""The architecture file (`found.json`): the one module that writes, reads and validates it.

    {"schema": 1, "model": "resnet20", "space": {"wbits": [...], "abits": [...]},
     "layers": [{"name", "type", "flops", "params", "wbits", "abits", "probs_w", "probs_a"}, ...],
     "bitops": ..., "equivalent_bits": ..., "weight_bits_total": ..., "mu": ..., "data": ...,
     "val_acc": ..., ...}

Layers are listed in forward order. Totals are recomputed from the layers when a file is
built, so they always agree with them. Every problem with a file is an ArchError whose
message is one line naming the file and the problem.
"""

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edmips import complexity
from edmips.complexity import LayerCost

SCHEMA = 1
LAYER_KEYS = ("name", "type", "flops", "params", "wbits", "abits", "probs_w", "probs_a")


class ArchError(ValueError):
    """A malformed architecture file, or one that does not fit the model it names."""


@dataclass(frozen=True)
class LayerArch:
    name: str
    type: str
    flops: int
    params: int
    wbits: int
    abits: int
    probs_w: list[float] = field(default_factory=list)
    probs_a: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Arch:
    model: str
    space: dict[str, list[int]]
    layers: list[LayerArch]
    bitops: int
    equivalent_bits: float
    weight_bits_total: int
    mu: float | None = None
    data: str | None = None
    val_acc: float | None = None
    extra: dict = field(default_factory=dict)  # target, final multiplier, test accuracy, ...

    def bits(self) -> dict[str, tuple[int, int]]:
        return {layer.name: (layer.wbits, layer.abits) for layer in self.layers}

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, **asdict(self)}
        d.update(d.pop("extra"))
        return d


def build(
    model: str,
    space: dict,
    costs: list[LayerCost],
    wbits: list[int],
    abits: list[int],
    probs_w=None,
    probs_a=None,
    **meta,
) -> Arch:
    """An Arch for layers with the given costs and choices; totals are computed here."""
    probs_w = probs_w or [[] for _ in costs]
    probs_a = probs_a or [[] for _ in costs]
    layers = [
        LayerArch(c.name, c.type, c.flops, c.params, int(w), int(a), list(pw), list(pa))
        for c, w, a, pw, pa in zip(costs, wbits, abits, probs_w, probs_a, strict=True)
    ]
    ops = complexity.bitops(costs, wbits, abits)
    known = {k: meta.pop(k) for k in ("mu", "data", "val_acc") if k in meta}
    return Arch(
        model=model,
        space={"wbits": list(space["wbits"]), "abits": list(space["abits"])},
        layers=layers,
        bitops=ops,
        equivalent_bits=complexity.equivalent_bits(ops, complexity.total_flops(costs)),
        weight_bits_total=complexity.weight_bits(costs, wbits),
        **known,
        extra=meta,
    )


def uniform(model: str, costs: list[LayerCost], wbits: int, abits: int, **meta) -> Arch:
    """Every searchable layer at the same bit-widths: the baseline an arch is compared with."""
    space = {"wbits": [wbits], "abits": [abits]}
    return build(model, space, costs, [wbits] * len(costs), [abits] * len(costs), **meta)


def save(arch: Arch, path: str | Path) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_dumps(arch.to_dict()))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load(path: str | Path, known_models=None) -> Arch:
    """Read and validate a file; `known_models` (names) rejects a model that does not exist."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchError(f"{path}: not JSON ({e})") from None
    return from_dict(d, str(path), known_models)


DERIVED = ("schema", "bitops", "equivalent_bits", "weight_bits_total")


def from_dict(d, source: str = "arch", known_models=None) -> Arch:
    """Validate the content of an arch file (as read from JSON); errors name `source`."""

    def fail(problem: str):
        raise ArchError(f"{source}: {problem}")

    if not isinstance(d, dict):
        fail("not a JSON object")
    if d.get("schema") != SCHEMA:
        fail(f"schema {d.get('schema')!r} is not supported (expected {SCHEMA})")
    for key in ("model", "space", "layers"):
        if key not in d:
            fail(f"missing {key!r}")
    if known_models is not None and d["model"] not in known_models:
        fail(f"unknown model {d['model']!r}")
    space = d["space"]
    if not (
        isinstance(space, dict) and _int_list(space.get("wbits")) and _int_list(space.get("abits"))
    ):
        fail('\'space\' must be {"wbits": [ints], "abits": [ints]}')
    if not isinstance(d["layers"], list) or not d["layers"]:
        fail("'layers' must be a non-empty list")
    for i, layer in enumerate(d["layers"]):
        missing = [k for k in LAYER_KEYS if not isinstance(layer, dict) or k not in layer]
        if missing:
            fail(f"layer {i} lacks {', '.join(missing)}")
        # A layer whose input arrives quantized (the image) has no activation choice: its
        # single activation "candidate" is that input's bit-width, which the space need not hold.
        kinds = ("wbits",) if len(layer["probs_a"]) == 1 else ("wbits", "abits")
        for kind in kinds:
            if layer[kind] not in space[kind]:
                name, bits = layer["name"], layer[kind]
                fail(f"layer {name!r}: {kind}={bits} is outside the space {space[kind]}")
    costs = [LayerCost(x["name"], x["type"], x["flops"], x["params"], 0, ()) for x in d["layers"]]
    rest = {k: v for k, v in d.items() if k not in (*DERIVED, "space", "layers", "model")}
    arch = build(
        d["model"],
        space,
        costs,
        [x["wbits"] for x in d["layers"]],
        [x["abits"] for x in d["layers"]],
        [x["probs_w"] for x in d["layers"]],
        [x["probs_a"] for x in d["layers"]],
        **rest,
    )
    if "bitops" in d and not math.isclose(d["bitops"], arch.bitops, rel_tol=1e-9):
        fail(f"'bitops' {d['bitops']} does not match its layers ({arch.bitops})")
    return arch


def check_matches(arch: Arch, model_name: str, costs: list[LayerCost], source="arch") -> None:
    """The file must describe this model's searchable layers, in forward order."""
    if arch.model != model_name:
        raise ArchError(f"{source}: made for model {arch.model!r}, not {model_name!r}")
    names = [c.name for c in costs]
    got = [layer.name for layer in arch.layers]
    if len(got) != len(names):
        raise ArchError(
            f"{source}: {len(got)} layers, but {model_name} has {len(names)} searchable layers"
        )
    for want, have in zip(names, got):
        if want != have:
            raise ArchError(f"{source}: layer {have!r} where {model_name} has {want!r}")


def _dumps(d: dict) -> str:
    """JSON with one line per field and one line per layer: readable and diff-friendly."""
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "layers"]
    layers = [f"  {json.dumps(layer)}" for layer in d["layers"]]
    return "{\n" + ",\n".join(fields) + ',\n "layers": [\n' + ",\n".join(layers) + "\n ]\n}\n"


def _int_list(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(v, int) and v > 0 for v in x)
