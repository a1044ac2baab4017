"""Latency measured on a device, read from a table: `cost=latency_table cost.path=<file>`.

Accelerators, FPGAs and microcontrollers run a layer in a time no formula of its FLOPs and
bits predicts, so the user measures it and the search reads the table. The file:

    CSV, a header and one row per (layer, w, a):      JSON, the same as a list of objects:
        layer,wbits,abits,latency_ms                    [{"layer": "layer1.0.conv1",
        layer1.0.conv1,2,2,0.0125                         "wbits": 2, "abits": 2,
        conv:16:16:3:1:1:32:32,4,4,0.031                  "latency_ms": 0.0125}, ...]

`layer` is a layer's name (its module path) or its shape key, one entry for every layer of
that shape: conv:Cin:Cout:k:stride:groups:H:W (H, W the input's; k, stride "3" or "3x1") or
linear:in:out (edmips.cost.layers). A name wins over a shape. Other columns are ignored. Every
(layer, w, a) the search can choose needs an entry: a missing one is refused, in one line
naming it, when the run is built (before training).

Stated in milliseconds: the searched layers' total latency (layers run one after another).
Internally a total is counted per unit of the table's largest entry (`total_size`), so that the
budget's price, whose range is fixed, sees costs of the same scale whatever the device's
speed; `stated` turns that back into ms.
"""

import csv
import io
import json
import math
import re
from pathlib import Path

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel, register

COLUMNS = ("layer", "wbits", "abits", "latency_ms")
NO_FILE = (
    "cost=latency_table reads a table measured on a device: add cost.path=<file.csv|.json> "
    "(columns layer,wbits,abits,latency_ms)"
)
Entries = dict[tuple[str, int, int], float]


@register
class LatencyTable(CostModel):
    name = "latency_table"
    unit = "ms (latency_table)"

    def __init__(self, entries: Entries | None = None, source: str = "cost=latency_table"):
        self.entries = entries
        self.source = source

    def configure(self, settings) -> "LatencyTable":
        path = None if settings is None else settings.get("path")
        if path in (None, ""):
            raise ValueError(NO_FILE)
        return LatencyTable(load(path), str(Path(path).resolve()))

    def entry(self, layer: LayerCost, w: int, a: int) -> float:
        entries = self._entries()
        for key in (layer.name, layer.shape_key):
            ms = entries.get((key, w, a))
            if ms is not None:
                return ms
        shape = f" (shape {layer.shape_key})" if layer.shape_key else ""
        raise ValueError(
            f"{self.source}: no latency for layer {layer.name!r}{shape} at wbits={w} "
            f"abits={a}: add a row for the layer's name or its shape"
        )

    def size(self, layer: LayerCost) -> int:
        return 1  # unused: totals are stated per network (total_size), not per layer

    def total_size(self, layers: list[LayerCost]) -> float:
        return self._scale()

    def stated(self, per_size):
        return per_size * self._scale()

    def per_size(self, stated: float) -> float:
        return stated / self._scale()

    def _entries(self) -> Entries:
        if self.entries is None:  # the registry's own instance: the checks configure one
            raise ValueError(NO_FILE)
        return self.entries

    def _scale(self) -> float:
        return max(self._entries().values())


def recorded(costs: list[CostModel], layers: list[LayerCost], wbits, abits) -> dict:
    """What found.json records of a measured table among the costs a run was held to: the
    architecture's latency (ms) and the table's file; {} without one."""
    for table in costs:
        if isinstance(table, LatencyTable):
            ms = table.stated_total(table.total(layers, wbits, abits), layers)
            return {"latency_ms": ms, "latency_table": table.source}
    return {}


def load(path: str | Path) -> Entries:
    """The table of a file, {(layer or shape key, w, a): ms}; every problem is one line."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{path}: a latency table is a .csv or a .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's UTF-8 BOM is no header
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a latency table ({type(e).__name__})") from None
    rows = _json_rows(text, path) if path.suffix.lower() == ".json" else _csv_rows(text, path)
    entries: Entries = {}
    for where, row in rows:
        key = _entry_key(row, f"{path}: {where}")
        if key in entries:
            layer, w, a = key
            raise ValueError(f"{path}: {where}: a second entry for {layer} at w={w} a={a}")
        entries[key] = _latency(row["latency_ms"], f"{path}: {where}")
    if not entries:
        raise ValueError(f"{path}: no entries")
    if max(entries.values()) <= 0:
        raise ValueError(f"{path}: every latency is 0: nothing to budget")
    return entries


def _csv_rows(text: str, path: Path):
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        header = ",".join(COLUMNS)
        raise ValueError(f"{path}: no column {', '.join(missing)} (the header is {header})")
    for row in reader:
        yield f"line {reader.line_num}", row


def _json_rows(text: str, path: Path):
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: a JSON latency table is a list of objects {list(COLUMNS)}")
    for i, item in enumerate(items):
        missing = [c for c in COLUMNS if not isinstance(item, dict) or c not in item]
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {', '.join(missing)}")
        yield f"entry {i}", item


def _entry_key(row: dict, where: str) -> tuple[str, int, int]:
    layer = row["layer"]
    if not isinstance(layer, str) or not layer.strip():
        raise ValueError(f"{where}: layer must be a layer's name or shape key, got {layer!r}")
    return layer.strip(), _bits(row["wbits"], "wbits", where), _bits(row["abits"], "abits", where)


def _bits(value, key: str, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")


def _latency(value, where: str) -> float:
    try:
        ms = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        ms = math.nan
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"{where}: latency_ms must be a number of ms >= 0, got {value!r}")
    return ms
