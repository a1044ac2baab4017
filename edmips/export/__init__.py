"""Integer-only export: the lowering to an integer graph, its bundle, a reference runtime and
two ONNX forms. Nothing here is used in training."""

import copy
import logging
from pathlib import Path

import torch

from edmips.export.ir import Graph, load_bundle, save_bundle
from edmips.export.lower import lower
from edmips.export.prepare import ExportError, reference_copy
from edmips.export.runtime import IntegerRuntime, image_codes, run, run_bundle
from edmips.quant.calibrate import calibration

__all__ = [
    "ExportError",
    "check_lowerable",
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
    """Lower a trained fixed-bit network and write into `out` the bundle (`integer/`) and every
    ONNX form (edmips/export/onnx/: `model.onnx` for qonnx, `model_qdq.onnx` for onnxruntime);
    returns the paths written. The graph alone comes from `lower`."""
    from edmips.export import onnx as onnx_forms

    out = Path(out)
    graph = lower(model, input_size)
    paths = [save_bundle(graph, out / "integer")]
    for form in onnx_forms.forms():
        try:
            paths.append(onnx_forms.save_onnx(graph, out / form.file_name, form.name))
        except ExportError as e:  # the bundle stands; this form cannot hold the graph
            logging.getLogger(__name__).warning("no %s: %s", form.file_name, e)
    return paths


def check_lowerable(model, input_size) -> None:
    """Raise the lowering's refusals (an operation it cannot lower, a layer it cannot hold)
    before training, not after it: a copy of the network, its ranges and batch norms calibrated
    on two random images, is lowered and dropped. What it refuses, it refuses for any trained
    weights. The copy runs in training mode (batch statistics): through an untrained network's
    running statistics the activations can fade to nothing, its ranges to their floor, and a
    product of codes (a gate of exactly 0.5 times such a range) land on a rounding tie."""
    trial = copy.deepcopy(model).cpu().train()
    images = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), calibration(trial):
        trial(images)
    lower(trial.eval(), input_size)
