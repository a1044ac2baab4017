"""The check of an exported network on the test split.

    verify(model, out_dir, loader) -> {"test_acc", "test_acc_top5", "test_images",
                                       "test_acc_integer", "prediction_agreement",
                                       "<form>_agreement" per form with a runner (None where
                                       its file is absent), "checked_images"}

The fake-quantized network's accuracy is measured on every image of the loader, in float32 and
batched, on the device the check is given. The integer runtime of the bundle (fast path,
edmips.export.runtime) and every ONNX form with a runner are checked on all of them too, or,
where `check_images` limits the check, on a seeded subset drawn uniformly from the whole split
(a test split sorted by class is still checked across its classes).

Which class the fake-quantized network predicts is taken from its float32 run, and recomputed
in float64 (the arithmetic the integer thresholds reproduce exactly) for the images where the
integer runtime predicts another class: float32 rounding can move a level, so only those
images can need it, and a disagreement counts only if float64 confirms it.
"""

import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edmips.export import onnx as onnx_forms
from edmips.export.ir import load_bundle
from edmips.export.prepare import reference_copy
from edmips.export.runtime import IntegerRuntime, image_codes

CHECK_SEED = 0  # the subset a limited check draws


def integer_pair(model, bundle: Path, device="cpu"):
    """The fake-quantized network in float64 and the integer runtime of its bundle (checked as
    it is read), as functions of a batch of images; the integer logits are scaled by their
    per-class units, which argmax needs when the classes' weight scales differ."""
    reference, graph = reference_copy(model, device=device), load_bundle(bundle)
    integer = IntegerRuntime(graph, device)
    unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
    unit = unit.to(device)
    return (
        lambda x: reference(x.to(device, torch.float64)),
        lambda x: integer(image_codes(x)).to(device) * unit,
    )


def checked_positions(total: int, check_images: int | None) -> torch.Tensor | None:
    """The positions in the test split a limited check runs on (None: every image): a seeded
    draw across the whole split, in order."""
    if check_images is None or check_images >= total:
        return None
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(CHECK_SEED))
    return chosen[:check_images].sort().values


def verify(model, out_dir, loader, check_images: int | None = None, device=None) -> dict:
    """Accuracy of the fake-quantized network on every image of `loader`; accuracy of the
    integer runtime of `out_dir`'s bundle, how often it predicts the network's class, and how
    often each ONNX form with a runner does, on all images or `check_images` of them (module
    docstring). `device`: where the network and the runtime run (default: the model's)."""
    out = Path(out_dir)
    if device is None:
        device = next(model.parameters()).device
    reference, integer = integer_pair(model, out / "integer", device)
    network = reference_copy(model, torch.float32, device)
    checked = [f for f in onnx_forms.forms() if f.runner is not None]
    runners = {f.name: f.runner(out / f.file_name) for f in checked if (out / f.file_name).exists()}
    total = _dataset_size(loader)
    if total is None and check_images is not None:
        raise ValueError("a limited integer check needs a loader that says how many images it has")
    positions = None if total is None else checked_positions(total, check_images)
    counts = _count(network, reference, integer, runners, loader, positions, device)
    tested, seen = counts.pop("tested"), counts.pop("checked")
    return {
        "test_acc": counts["right"] / tested,
        "test_acc_top5": counts["right5"] / tested,
        "test_images": tested,
        "test_acc_integer": counts["integer"] / seen,
        "prediction_agreement": counts["agree"] / seen,
        **{
            f"{f.name}_agreement": counts[f.name] / seen if f.name in runners else None
            for f in checked
        },
        "checked_images": seen,
    }


def _dataset_size(loader) -> int | None:
    """The images a loader yields in one pass, where it says without a pass."""
    if hasattr(loader, "dataset"):  # a torch DataLoader
        return len(loader.dataset)
    if hasattr(loader, "shard_size"):  # edmips.data.tensor_loader.TensorLoader
        return loader.shard_size
    if isinstance(loader, (list, tuple)):  # batches in memory
        return sum(len(y) for _, y in loader)
    return None


@torch.no_grad()
def _count(network, reference, integer, runners: dict, loader, positions, device) -> dict:
    """Counts over the images: right (network, its top 5), and on the checked images the
    integer runtime right, its and each runner's predictions equal to the network's."""
    counts = dict.fromkeys(["right", "right5", "integer", "agree", *runners, "tested"], 0)
    counts["checked"] = 0
    columns = (
        TextColumn("integer check"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    size = _dataset_size(loader)
    start = time.perf_counter()
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("check", total=size, rate="")
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = network(x.float())
            pred = logits.argmax(1)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            counts["right"] += int((pred == y).sum())
            counts["right5"] += int((top5 == y[:, None]).any(1).sum())
            first = counts["tested"]
            counts["tested"] += len(y)
            if positions is not None:  # the batch's images among the checked positions
                keep = positions[(positions >= first) & (positions < first + len(y))] - first
                keep = keep.to(device)
                x, y, pred = x[keep], y[keep], pred[keep]
            if len(y):
                pred_integer = integer(x).argmax(1)
                differ = pred_integer != pred
                if bool(differ.any()):  # float32 may have moved a level: float64 decides
                    pred = pred.clone()
                    pred[differ] = reference(x[differ]).argmax(1)
                counts["integer"] += int((pred_integer == y).sum())
                counts["agree"] += int((pred_integer == pred).sum())
                for name, run in runners.items():
                    counts[name] += int((run(x.cpu()).argmax(1).to(device) == pred).sum())
                counts["checked"] += len(y)
            rate = counts["tested"] / max(time.perf_counter() - start, 1e-9)
            progress.update(task, completed=counts["tested"], rate=f"{rate:.0f} images/s")
    return counts
