"""Integer-only export: the lowering to an integer graph, its bundle, a reference runtime and
two ONNX forms. Nothing here is used in training."""

import logging
from pathlib import Path

from edmips.export.ir import Graph, load_bundle, save_bundle
from edmips.export.lower import lower
from edmips.export.prepare import ExportError, reference_copy
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
    """Lower a trained fixed-bit network and write into `out` the bundle (`integer/`), its
    QONNX model (`model.onnx`) and its standard-ops model for onnxruntime (`model_qdq.onnx`);
    returns the paths written. The graph alone comes from `lower`."""
    from edmips.export.onnx_files import save_onnx

    out = Path(out)
    graph = lower(model, input_size)
    paths = [save_bundle(graph, out / "integer")]
    try:
        for name, form in (("model.onnx", "qonnx"), ("model_qdq.onnx", "qdq")):
            paths.append(save_onnx(graph, out / name, form))
    except ExportError as e:  # the bundle stands; float32 ONNX cannot hold this graph
        logging.getLogger(__name__).warning("no ONNX models: %s", e)
    return paths
