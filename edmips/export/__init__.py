"""Integer-only export: thresholds, the integer graph and its bundle, a reference runtime,
and a QONNX writer. Nothing here is used in training."""

import logging
from pathlib import Path

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


def export(model, input_size, out) -> list[Path]:
    """Lower a trained fixed-bit network and write `integer/` (the bundle) and `model.onnx`
    into `out`; returns the paths written. The graph is also returned by `lower` alone."""
    from edmips.export.qonnx import save_qonnx

    graph = lower(model, input_size)
    paths = [save_bundle(graph, Path(out) / "integer")]
    try:
        paths.append(save_qonnx(graph, Path(out) / "model.onnx"))
    except ExportError as e:  # the bundle stands; QONNX's float32 cannot hold this graph
        logging.getLogger(__name__).warning("no QONNX model: %s", e)
    return paths
