"""Integer-only export: thresholds, the integer graph and its bundle, a reference runtime,
and a QONNX writer. Nothing here is used in training."""

import logging
from pathlib import Path

from torch import fx

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
    (QONNX, written from the bundle) into `out`; returns the paths written. A model converted
    by `edmips.nn.quantize` also gets `model_qdq.onnx` (QuantizeLinear/DequantizeLinear, for
    plain onnxruntime)."""
    from edmips.export.qonnx import save_qonnx

    out = Path(out)
    graph = lower(model, input_size)
    paths = [save_bundle(graph, out / "integer")]
    if isinstance(model, fx.GraphModule):
        from edmips.export.onnx_graph import save_onnx

        paths.append(save_onnx(model, input_size, out / "model_qdq.onnx"))
    try:
        paths.append(save_qonnx(graph, out / "model.onnx"))
    except ExportError as e:  # the bundle stands; QONNX's float32 cannot hold this graph
        logging.getLogger(__name__).warning("no QONNX model: %s", e)
    return paths
