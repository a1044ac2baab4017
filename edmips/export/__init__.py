"""Integer-only export: thresholds, the integer graph and its bundle, a reference runtime,
and a QONNX writer. Nothing here is used in training."""

from edmips.export.graph import Graph, load_bundle, save_bundle
from edmips.export.lower import ExportError, lower, reference_copy
from edmips.export.runtime import IntegerRuntime, image_codes, run, run_bundle

__all__ = [
    "ExportError",
    "Graph",
    "IntegerRuntime",
    "image_codes",
    "load_bundle",
    "lower",
    "reference_copy",
    "run",
    "run_bundle",
    "save_bundle",
]
