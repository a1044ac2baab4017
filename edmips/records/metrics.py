"""metrics.json, the record of a retrain run: the one module that writes and reads it.

    {"schema": 1, "model": ..., "data": ..., "kind": "searched" | "uniform" | "random",
     "seed": ..., "arch": <found.json path, "uniform" or "random">,
     "uniform": {"wbits", "abits"} | null, "target_bits", "mu", "equivalent_bits", "bitops",
     "weight_bits_total", "val_acc", "val_acc_top5", "test_acc", "test_acc_top5",
     "test_acc_integer", "prediction_agreement", "qdq_agreement", "test_images",
     "wall_time_s"}

Accuracies are fractions; test accuracies are on the test split through the float64
fake-quantized reference, `test_acc_integer` through the integer runtime;
`prediction_agreement` is how often the two predict the same class, `qdq_agreement` the same
for `model_qdq.onnx` under onnxruntime (None where no ONNX model was written). Fields missing
from an older file read as None; unknown fields are ignored.
"""

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edmips.records.files import write_text_atomic

SCHEMA = 1


class MetricsError(ValueError):
    """A metrics.json that cannot be read."""


@dataclass(frozen=True)
class RetrainMetrics:
    model: str
    equivalent_bits: float
    bitops: int
    weight_bits_total: int
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
    wall_time_s: float | None = None

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}


REQUIRED = ("model", "equivalent_bits", "bitops", "weight_bits_total")


def save(metrics: RetrainMetrics, path: str | Path) -> Path:
    """Write atomically with the umask's mode; NaN and Infinity are refused (not JSON)."""
    text = json.dumps(metrics.to_dict(), indent=1, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def load(path: str | Path) -> RetrainMetrics:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetricsError(f"{path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise MetricsError(f"{path}: not a JSON object")
    if d.get("schema", SCHEMA) != SCHEMA:
        raise MetricsError(f"{path}: schema {d['schema']!r} is not supported (expected {SCHEMA})")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise MetricsError(f"{path}: missing {', '.join(missing)}")
    for key in ("equivalent_bits", "bitops", "weight_bits_total"):
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricsError(f"{path}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise MetricsError(f"{path}: {key} is not finite")
    known = {f.name for f in fields(RetrainMetrics)}
    return RetrainMetrics(**{k: v for k, v in d.items() if k in known})
