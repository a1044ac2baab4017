"""metrics.json, the record of a retrain run: the one module that writes and reads it.

    {"schema": 1, "model": ..., "data": ...,
     "kind": "searched" | "uniform" | "random" | "float" | "ptq",
     "seed": ..., "arch": <found.json path, "uniform", "random" or "float">,
     "uniform": {"wbits", "abits"} | null, "target_bits", "mu", "equivalent_bits", "bitops",
     "weight_bits_total", "activation_bits_total", "micronet_score", "latency_ms" and
     "latency_table" (where the architecture was held to a measured latency table),
     "budget" and "budgets" (the budget keys it was found within, and with several each one's
     target and spend, as found.json records them), "val_acc", "val_acc_top5",
     "test_acc", "test_acc_top5",
     "test_images", "test_acc_integer", "prediction_agreement", "qdq_agreement",
     "checked_images", "integer_export", "quant": {"activation", "weight", "signed"},
     "bn_fold", "wall_time_s",
     "kernels": "triton" | "eager", "compiled": true | false}

`kernels` and `compiled` say which path the training ran (edmips.core.device_check): the fused
Triton quantizer kernels or their PyTorch formulas (a CPU run, or kernels that failed the
start-of-run check on the GPU), and whether the network was torch.compiled.

A post-training quantized network (kind "ptq", written by ptq.py) adds "activation_clip" (the
clip method), "bias_correction" and "bit_allocation" (the weight refinements),
"calibration_images" and "float_acc" (the float network's test accuracy, measured in the same
run), "allocation" (where its bits came from: "uniform", "random", "searched", "sensitivity"
or "calibration_search"), "rounding" (how its weights were rounded: "nearest" or "adaround"),
"reconstruction" (what a learned rounding reproduced: each "layer"'s output or each "block"'s)
and "rounding_time_s" (the seconds a learned rounding took); it has no val_acc.

Accuracies are fractions. `test_acc` and `test_acc_top5` are the fake-quantized network's on
all `test_images` of the test split; the integer check (edmips.export.verify) runs on
`checked_images` of them (all, or a seeded draw across the split where `integer_check_images`
limits it): `test_acc_integer` through the integer runtime, `prediction_agreement` how often it
predicts the network's class, `qdq_agreement` the same for `model_qdq.onnx` under onnxruntime
(None where no ONNX model was written); every other ONNX form with a runner adds its own
`<form>_agreement`. `integer_export` says whether the
integer graph was written and checked: false for the float network (`kind: "float"`, every
layer at 32 bits), which has nothing quantized to export, so its test accuracies are the float
network's and its integer fields are None. Fields missing from an older file read
as None; other unknown fields are ignored.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edmips.records.arch import BUDGETS, KERNELS
from edmips.records.files import write_text_atomic
from edmips.records.json_values import (
    COUNT,
    FLAG,
    FRACTION,
    INTEGER,
    NON_NEGATIVE,
    NUMBER,
    OBJECT,
    POSITIVE,
    TEXT,
    Kind,
    check_fields,
    is_int,
)

SCHEMA = 1
AGREEMENT = "_agreement"  # how often another form predicts as the fake-quantized network


class MetricsError(ValueError):
    """A metrics.json that cannot be read."""


@dataclass(frozen=True)
class RetrainMetrics:
    model: str
    equivalent_bits: float
    bitops: int
    weight_bits_total: int
    activation_bits_total: int | None = None  # as found.json: None where it is not recorded
    micronet_score: float | None = None  # the MicroNet challenge's (edmips.cost.micronet)
    latency_ms: float | None = None  # the searched layers' measured latency (cost=latency_table)
    latency_table: str | None = None  # the table's file
    budget: dict | None = None  # {budget key: value as given}, as found.json
    budgets: list | None = None  # several budgets: each one's target and spend, as found.json
    data: str | None = None
    kind: str = "searched"  # what was retrained: a searched network or a baseline
    seed: int | None = None
    arch: str | None = None
    uniform: dict | None = None
    target_bits: float | None = None
    mu: float | None = None
    val_acc: float | None = None
    val_acc_top5: float | None = None
    test_acc: float | None = None
    test_acc_top5: float | None = None
    test_acc_integer: float | None = None
    prediction_agreement: float | None = None
    qdq_agreement: float | None = None
    test_images: int | None = None
    checked_images: int | None = None  # the images of the integer check, of test_images
    integer_export: bool | None = None
    quant: dict | None = None  # the quantizer family's members
    bn_fold: bool | None = None  # whether batch norms were folded into the convs before them
    wall_time_s: float | None = None
    kernels: str | None = None  # "triton" or "eager": the quantizers' path in training
    compiled: bool | None = None  # whether the network trained torch.compiled
    activation_clip: str | None = None  # ptq only, as the five below
    bias_correction: str | None = None
    bit_allocation: str | None = None
    calibration_images: int | None = None
    float_acc: float | None = None
    allocation: str | None = None  # ptq: "uniform", "random", "searched", "sensitivity", ...
    rounding: str | None = None  # ptq: "nearest" or "adaround" (edmips.ptq.adaround)
    reconstruction: str | None = None  # ptq adaround: "layer" or "block"
    rounding_time_s: float | None = None  # ptq: the learned rounding's seconds
    other_agreements: dict = field(default_factory=dict)  # "<form>_agreement" of other forms

    @classmethod
    def from_record(cls, record: dict) -> "RetrainMetrics":
        """The metrics of a record whose unknown keys are other forms' agreements (or, from a
        file, fields this version does not know, which are dropped)."""
        known = {f.name for f in fields(cls)} - {"other_agreements"}
        others = {k: v for k, v in record.items() if k not in known and k.endswith(AGREEMENT)}
        return cls(**{k: v for k, v in record.items() if k in known}, other_agreements=others)

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, **asdict(self)}
        others = d.pop("other_agreements")
        d.update(others)
        return d


REQUIRED = ("model", "equivalent_bits", "bitops", "weight_bits_total")
# What each field's value must be (or null).
FIELDS = {
    "model": TEXT,
    "equivalent_bits": NON_NEGATIVE,
    "bitops": COUNT,
    "weight_bits_total": COUNT,
    "activation_bits_total": COUNT,
    "micronet_score": NON_NEGATIVE,
    "latency_ms": NON_NEGATIVE,
    "latency_table": TEXT,
    "budget": OBJECT,  # as found.json
    "budgets": BUDGETS,
    "data": TEXT,
    "kind": TEXT,
    "seed": INTEGER,
    "arch": TEXT,
    "uniform": Kind(
        lambda x: isinstance(x, dict) and is_int(x.get("wbits")) and is_int(x.get("abits")),
        '{"wbits": <integer>, "abits": <integer>}',
    ),
    "target_bits": POSITIVE,
    "mu": NUMBER,
    "val_acc": FRACTION,
    "val_acc_top5": FRACTION,
    "test_acc": FRACTION,
    "test_acc_top5": FRACTION,
    "test_acc_integer": FRACTION,
    "prediction_agreement": FRACTION,
    "qdq_agreement": FRACTION,
    "test_images": COUNT,
    "checked_images": COUNT,
    "integer_export": FLAG,
    "quant": Kind(
        lambda x: (
            isinstance(x, dict) and all(isinstance(x.get(k), str) for k in ("activation", "weight"))
        ),
        '{"activation": <name>, "weight": <name>, ...}',
    ),
    "bn_fold": FLAG,
    "wall_time_s": NON_NEGATIVE,
    "kernels": KERNELS,
    "compiled": FLAG,
    "activation_clip": TEXT,
    "bias_correction": TEXT,
    "bit_allocation": TEXT,
    "calibration_images": COUNT,
    "float_acc": FRACTION,
    "allocation": TEXT,
    "rounding": TEXT,
    "reconstruction": TEXT,
    "rounding_time_s": NON_NEGATIVE,
}


def save(metrics: RetrainMetrics, path: str | Path) -> Path:
    """Write atomically with the umask's mode; NaN and Infinity are refused (not JSON)."""
    text = json.dumps(metrics.to_dict(), indent=1, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def load(path: str | Path) -> RetrainMetrics:
    """Read and validate a file: every field of its kind (FIELDS), one line naming the field."""
    path = Path(path)

    def fail(problem: str):
        raise MetricsError(f"{path}: {problem}")

    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        fail(f"not JSON ({e})")
    if not isinstance(d, dict):
        fail("not a JSON object")
    if d.get("schema", SCHEMA) != SCHEMA:
        fail(f"schema {d['schema']!r} is not supported (expected {SCHEMA})")
    missing = [k for k in REQUIRED if d.get(k) is None]
    if missing:
        fail(f"missing {', '.join(missing)}")
    agreements = {k: FRACTION for k in d if k.endswith(AGREEMENT)}
    check_fields(d, {**agreements, **FIELDS}, fail)
    return RetrainMetrics.from_record(d)
