"""The check of an exported network: the test images through the float64 fake-quantized
reference, the integer runtime of its bundle and every ONNX form that has a runner.

    verify(model, out_dir, loader) -> {"test_acc", "test_acc_top5", "test_acc_integer",
                                       "prediction_agreement", "<form>_agreement" per form
                                       with a runner (None where its file is absent),
                                       "test_images"}
"""

from pathlib import Path

import torch
from rich.progress import track

from edmips.export import onnx as onnx_forms
from edmips.export.ir import load_bundle
from edmips.export.prepare import reference_copy
from edmips.export.runtime import IntegerRuntime, image_codes


def integer_pair(model, bundle: Path):
    """The fake-quantized network in float64 and the integer runtime of its bundle (checked as
    it is read), as functions of a batch of images; the integer logits are scaled by their
    per-class units, which argmax needs when the classes' weight scales differ."""
    reference, graph = reference_copy(model), load_bundle(bundle)
    integer = IntegerRuntime(graph)
    unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
    return (lambda x: reference(x.double())), (lambda x: integer(image_codes(x)) * unit)


def verify(model, out_dir, loader, max_images: int | None = None) -> dict:
    """Accuracy of the fake-quantized reference and of the integer runtime of `out_dir`'s bundle,
    how often they predict the same class, and how often each ONNX form with a runner agrees
    with the reference, on the first max_images images of `loader` (None: all)."""
    out = Path(out_dir)
    reference, integer = integer_pair(model, out / "integer")
    checked = [f for f in onnx_forms.forms() if f.runner is not None]
    runners = {f.name: f.runner(out / f.file_name) for f in checked if (out / f.file_name).exists()}
    counts = _agreements(reference, integer, runners, loader, max_images)
    total = counts.pop("total")
    record = {key: counts[key] / total for key in ("ref", "ref5", "integer", "agree")}
    return {
        "test_acc": record["ref"],
        "test_acc_top5": record["ref5"],
        "test_acc_integer": record["integer"],
        "prediction_agreement": record["agree"],
        **{
            f"{f.name}_agreement": counts[f.name] / total if f.name in runners else None
            for f in checked
        },
        "test_images": total,
    }


@torch.no_grad()
def _agreements(reference, integer, runners: dict, loader, max_images: int | None) -> dict:
    """Counts over the images: right (reference, its top 5, integer runtime), the integer
    runtime's and each runner's predictions equal to the reference's, and the images."""
    counts = dict.fromkeys(["ref", "ref5", "integer", "agree", *runners, "total"], 0)
    for x, y in track(loader, description="integer check", transient=True):
        if max_images is not None:
            x, y = x[: max_images - counts["total"]], y[: max_images - counts["total"]]
        x, y = x.cpu(), y.cpu()
        logits = reference(x)
        pred = logits.argmax(1)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        pred_integer = integer(x).argmax(1)
        counts["ref"] += int((pred == y).sum())
        counts["ref5"] += int((top5 == y[:, None]).any(1).sum())
        counts["integer"] += int((pred_integer == y).sum())
        counts["agree"] += int((pred == pred_integer).sum())
        for name, run in runners.items():
            counts[name] += int((pred == run(x).argmax(1)).sum())
        counts["total"] += len(y)
        if counts["total"] == max_images:
            break
    return counts
