"""The architecture file (`found.json`): the one module that writes, reads and validates it.

    {"schema": 2, "model": "resnet20", "space": {"wbits": [...], "abits": [...]},
     (and "sbits": [...] in a search of signed inputs)
     "layers": [{"name", "type", "flops", "params", "wbits", "abits", "probs_w", "probs_a",
                 "wquant", "aquant", "input_numel"}, ...],
     "bitops": ..., "equivalent_bits": ..., "weight_bits_total": ..., "fixed_weight_bits": ...,
     "activation_bits_total": ..., "micronet_score": ..., "mu": ..., "data": ...,
     "val_acc": ..., ...}

Layers are listed in forward order; `wquant` / `aquant` name each layer's weight and input
quantizers in edmips.quant.registry (`aquant` of a layer whose input arrives quantized names
what quantized it: "image" for the image). A schema-1 file, which has no names, is read as
edmips's family (gauss weights, hwgq activations). `input_numel` (the activation elements a
layer reads, per sample) is optional: a file without it has no `activation_bits_total` (null).
`micronet_score` is the MicroNet challenge's score against `data`'s reference network
(edmips.cost.micronet). `fixed_weight_bits` is what the weights of the quantized layers outside
the file take (the first conv and the classifier of a search that skips them, at their fixed
bits); `weight_bits_total` counts them with the layers', every quantized weight (a file without
it counts its layers only).
`kernels` and `compiled` (optional, absent from older files) say which path the search ran:
"triton" (the fused quantizer kernels) or "eager" (their PyTorch formulas: a CPU run, or a GPU
whose kernels failed the start-of-run check, edmips.core.device_check), and whether the network
was torch.compiled.
Totals are recomputed from the layers when a file is built, so they always agree with them.
Every problem with a file is an ArchError whose message is one line naming the file and the
problem.
"""

import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost
from edmips.cost.micronet import micronet_score
from edmips.nn.convert import input_space
from edmips.nn.layers import INPUT_BITS
from edmips.quant import EDMIPS
from edmips.quant.registry import get
from edmips.records.files import write_text_atomic
from edmips.records.json_values import (
    COUNT,
    FLAG,
    FRACTION,
    NON_NEGATIVE,
    NUMBER,
    OBJECT,
    POSITIVE,
    TEXT,
    Kind,
    check_fields,
    int_list,
    is_int,
    is_number,
    is_probabilities,
    non_finite,
    reject_constant,
)

SCHEMA = 2
SPACE_KEYS = ("wbits", "abits", "sbits")
READS = (1, 2)  # schemas read; 1 lacks the quantizer names
QUANT_KEYS = ("wquant", "aquant")
LAYER_KEYS = (
    "name",
    "type",
    "flops",
    "params",
    "wbits",
    "abits",
    "probs_w",
    "probs_a",
    *QUANT_KEYS,
)
OPTIONAL_LAYER_KEYS = ("input_numel", "shape_key")  # files written before they were recorded


def _is_budget(b) -> bool:
    """One of several budgets as the search records it (edmips.search.joint.achieved)."""
    return (
        isinstance(b, dict)
        and isinstance(b.get("budget"), str)
        and b.get("cost") in cost_models.names()
        and is_number(b.get("target"))
    )


BUDGETS = Kind(
    lambda x: isinstance(x, list) and all(_is_budget(b) for b in x),
    'a list of {"budget": "key=value", "cost": <a cost>, "target": <a number>, ...}',
)

# The quantizers' two implementations a run may go through (the `kernels` field here and in
# metrics.json): the fused Triton kernels, or the PyTorch formulas.
KERNEL_PATHS = ("triton", "eager")
KERNELS = Kind(lambda x: x in KERNEL_PATHS, " or ".join(f'"{k}"' for k in KERNEL_PATHS))


# Every field the writers put beside the layers, and what its value must be (or null). A field
# not listed here is kept but read by nothing.
FIELDS = {
    "model": TEXT,
    "bitops": COUNT,
    "equivalent_bits": NON_NEGATIVE,
    "weight_bits_total": COUNT,
    "activation_bits_total": COUNT,
    "micronet_score": NON_NEGATIVE,
    "mu": NON_NEGATIVE,
    "data": TEXT,
    "val_acc": FRACTION,
    "test_acc": FRACTION,
    "test_acc_top5": FRACTION,
    "wall_time_s": NON_NEGATIVE,
    "final_mu": NUMBER,  # a budget's price can fall below zero
    "final_prices": OBJECT,
    "discretization": TEXT,
    "expected_bits": NON_NEGATIVE,
    "target_bits": POSITIVE,
    "target_bitops": POSITIVE,
    "budget": OBJECT,  # {key: value as given}
    "budgets": BUDGETS,
    "cost": Kind(lambda x: x in cost_models.names(), f"a cost ({', '.join(cost_models.names())})"),
    "latency_ms": NON_NEGATIVE,
    "latency_table": TEXT,  # the measured table's file
    "shared_weights": FLAG,
    "world_size": COUNT,
    "epoch": COUNT,
    "searched_in": TEXT,
    "kind": TEXT,
    "sensitivity_loss": TEXT,
    "sensitivity_quant": OBJECT,
    "sensitivity_images": COUNT,
    "loss_at_8_bits": NUMBER,
    "search_steps": COUNT,
    "search_images": COUNT,
    "loss_at_start": NUMBER,
    "loss_at_end": NUMBER,
    "loss_increase": OBJECT,
    "kernels": KERNELS,
    "compiled": FLAG,
}


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
    wquant: str = EDMIPS.weight
    aquant: str = EDMIPS.activation
    input_numel: int | None = None  # None: not recorded
    shape_key: str | None = None  # edmips.cost.layers; what a latency table may key it by


@dataclass(frozen=True)
class Arch:
    model: str
    space: dict[str, list[int]]
    layers: list[LayerArch]
    bitops: int
    equivalent_bits: float
    weight_bits_total: int  # every quantized weight: the layers' and fixed_weight_bits
    fixed_weight_bits: int = 0
    activation_bits_total: int | None = None  # None: a layer's input size is not recorded
    micronet_score: float | None = None
    mu: float | None = None
    data: str | None = None
    val_acc: float | None = None
    extra: dict = field(default_factory=dict)  # target, final multiplier, test accuracy, ...

    def bits(self) -> dict[str, tuple[int, int]]:
        return {layer.name: (layer.wbits, layer.abits) for layer in self.layers}

    def costs(self) -> list[LayerCost]:
        """The layers' measured costs, as far as the file records them."""
        return _costs(self.layers)

    def activation_spaces(self) -> list[tuple[int, ...]]:
        """Each layer's input candidates, as the search had them (edmips.nn.input_space); one
        recorded probability, the bits it read."""
        return [
            input_space(x.aquant, self.space["abits"], self.space.get("sbits"))
            if len(x.probs_a) > 1
            else (x.abits,)
            for x in self.layers
        ]

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
    quantizers=None,
    **meta,
) -> Arch:
    """An Arch for layers with the given costs and choices; totals are computed here.
    `quantizers`: (wquant, aquant) per layer, edmips's by default."""
    probs_w = probs_w or [[] for _ in costs]
    probs_a = probs_a or [[] for _ in costs]
    quantizers = quantizers or [(EDMIPS.weight, EDMIPS.activation) for _ in costs]
    layers = [
        LayerArch(c.name, c.type, c.flops, c.params, int(w), int(a), list(pw), list(pa), *q)
        for c, w, a, pw, pa, q in zip(
            costs, wbits, abits, probs_w, probs_a, quantizers, strict=True
        )
    ]
    layers = [
        replace(x, input_numel=c.input_numel or None, shape_key=c.shape_key or None)
        for x, c in zip(layers, costs)
    ]
    bitops = cost_models.get("bitops")
    ops = bitops.total(costs, wbits, abits)
    known = {k: meta.pop(k) for k in ("mu", "data", "val_acc", "fixed_weight_bits") if k in meta}
    fixed = known.get("fixed_weight_bits", 0)
    # 0 input elements: a cost read back from a file that does not record them
    activations = None
    if all(c.input_numel > 0 for c in costs):
        activations = cost_models.get("activation_memory").total(costs, wbits, abits)
    return Arch(
        model=model,
        space={k: list(v) for k, v in space.items() if k in SPACE_KEYS and v is not None},
        layers=layers,
        bitops=ops,
        equivalent_bits=bitops.stated_total(ops, costs),
        weight_bits_total=cost_models.get("weight_size").total(costs, wbits, abits) + fixed,
        activation_bits_total=activations,
        micronet_score=micronet_score(costs, wbits, abits, known.get("data")),
        **known,
        extra=meta,
    )


def space_of(space) -> dict[str, list[int]]:
    """The candidates a config's `space` group searches, as the file records them."""
    return {k: list(space[k]) for k in SPACE_KEYS if space.get(k) is not None}


def with_quantizers(arch: Arch, quantizers: list[tuple[str, str]]) -> Arch:
    """The architecture with its layers' (wquant, aquant) replaced, in layer order."""
    layers = [
        replace(layer, wquant=w, aquant=a)
        for layer, (w, a) in zip(arch.layers, quantizers, strict=True)
    ]
    return replace(arch, layers=layers)


def uniform(model: str, costs: list[LayerCost], wbits: int, abits: int, **meta) -> Arch:
    """Every searchable layer at the same bit-widths: the baseline an arch is compared with."""
    space = {"wbits": [wbits], "abits": [abits]}
    n = len(costs)
    return build(model, space, costs, [wbits] * n, [abits] * n, None, None, **meta)


def save(arch: Arch, path: str | Path) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    return write_text_atomic(path, _dumps(arch.to_dict()))


def load(path: str | Path, known_models=None) -> Arch:
    """Read and validate a file; `known_models` (names) rejects a model that does not exist."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(), parse_constant=reject_constant)
    except FileNotFoundError:
        raise ArchError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ArchError(f"{path}: a directory, not an arch file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchError(f"{path}: not JSON ({e})") from None
    except ValueError as e:  # NaN or Infinity
        raise ArchError(f"{path}: {e}") from None
    return from_dict(d, str(path), known_models)


DERIVED = (
    "schema",
    "bitops",
    "equivalent_bits",
    "weight_bits_total",
    "activation_bits_total",
    "micronet_score",
)


def from_dict(d, source: str = "arch", known_models=None) -> Arch:
    """Validate the content of an arch file (as read from JSON); errors name `source`."""

    def fail(problem: str):
        raise ArchError(f"{source}: {problem}")

    if not isinstance(d, dict):
        fail("not a JSON object")
    if d.get("schema") not in READS:
        fail(f"schema {d.get('schema')!r} is not supported (expected one of {list(READS)})")
    keys = LAYER_KEYS[: -len(QUANT_KEYS)] if d["schema"] == 1 else LAYER_KEYS
    for key in ("model", "space", "layers"):
        if d.get(key) is None:
            fail(f"missing {key!r}")
    check_fields(d, FIELDS, fail)
    if known_models is not None and d["model"] not in known_models:
        fail(f"unknown model {d['model']!r}")
    space = d["space"]
    if not (
        isinstance(space, dict)
        and int_list(space.get("wbits"))
        and int_list(space.get("abits"))
        and ("sbits" not in space or int_list(space["sbits"]))
    ):
        fail('\'space\' must be {"wbits": [ints], "abits": [ints]} (and "sbits": [ints])')
    if not isinstance(d["layers"], list) or not d["layers"]:
        fail("'layers' must be a non-empty list")
    bad = non_finite(d)
    if bad:
        fail(f"{bad} is not a finite number")
    fixed = d.get("fixed_weight_bits", 0)
    if not is_int(fixed) or fixed < 0:
        fail(f"'fixed_weight_bits'={fixed!r} is not a non-negative integer")
    for i, layer in enumerate(d["layers"]):
        _check_layer(i, layer, keys, space, fail)
    costs = [
        LayerCost(
            x["name"], x["type"], x["flops"], x["params"], x.get("input_numel") or 0, (),
            x.get("shape_key") or "",
        )
        for x in d["layers"]
    ]  # fmt: skip
    rest = {k: v for k, v in d.items() if k not in (*DERIVED, "space", "layers", "model")}
    arch = build(
        d["model"],
        space,
        costs,
        [x["wbits"] for x in d["layers"]],
        [x["abits"] for x in d["layers"]],
        [x["probs_w"] for x in d["layers"]],
        [x["probs_a"] for x in d["layers"]],
        [tuple(x.get(k, getattr(LayerArch, k)) for k in QUANT_KEYS) for x in d["layers"]],
        **rest,
    )
    if "bitops" in d and not math.isclose(d["bitops"], arch.bitops, rel_tol=1e-9):
        fail(f"'bitops' {d['bitops']} does not match its layers ({arch.bitops})")
    return arch


def _check_layer(i: int, layer, keys, space: dict, fail) -> None:
    """One layer entry of a file: its keys, numbers, probabilities and quantizer names."""
    missing = [k for k in keys if not isinstance(layer, dict) or k not in layer]
    if missing:
        fail(f"layer {i} lacks {', '.join(missing)}")
    name = layer["name"]
    for key in ("name", "type"):
        if not isinstance(layer[key], str):
            fail(f"layer {i}: {key}={layer[key]!r} is not a string")
    for key in ("wbits", "abits", "flops", "params", "input_numel"):
        if key in OPTIONAL_LAYER_KEYS and layer.get(key) is None:
            continue
        if not is_int(layer[key]) or layer[key] < 0:
            fail(f"layer {name!r}: {key}={layer[key]!r} is not a non-negative integer")
    if not isinstance(layer.get("shape_key", ""), (str, type(None))):
        fail(f"layer {name!r}: shape_key={layer['shape_key']!r} is not a string")
    for key in ("probs_w", "probs_a"):
        probs = layer[key]
        if not is_probabilities(probs):
            fail(f"layer {name!r}: {key} must be a list of probabilities")
    for key in QUANT_KEYS:
        try:
            get(layer.get(key, getattr(LayerArch, key)))
        except (ValueError, TypeError):
            fail(f"layer {name!r}: {key}={layer[key]!r} is not a registered quantizer")
    # A layer whose input arrives quantized (the image) has no activation choice: its
    # activation bit-width is that input's, which the space need not hold (check_matches
    # confirms against the model that the layer is such a layer).
    for kind in ("wbits", "abits"):
        allowed = space[kind]
        if kind == "abits":
            allowed = [*allowed, *space.get("sbits", []), INPUT_BITS]
        if layer[kind] not in allowed:
            bits = layer[kind]
            fail(f"layer {name!r}: {kind}={bits} is outside the space {space[kind]}")


def _costs(layers: list[LayerArch]) -> list[LayerCost]:
    return [
        LayerCost(x.name, x.type, x.flops, x.params, x.input_numel or 0, (), x.shape_key or "")
        for x in layers
    ]


def _dumps(d: dict) -> str:
    """JSON with one line per field and one line per layer: readable and diff-friendly."""
    dumps = partial(json.dumps, allow_nan=False)  # NaN and Infinity are not JSON
    fields = [f" {dumps(k)}: {dumps(v)}" for k, v in d.items() if k != "layers"]
    layers = [f"  {dumps(layer)}" for layer in d["layers"]]
    return "{\n" + ",\n".join(fields) + ',\n "layers": [\n' + ",\n".join(layers) + "\n ]\n}\n"
