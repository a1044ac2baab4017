"""The integer check's speed on the CPU: every way a network's forward is computed, side by side,
and the whole check of the CIFAR-10 test split.

    python bench/verify.py --threads 2 --cifar ../shared/data/cifar10-jpeg.npz
    python bench/verify.py --model resnet_tiny:16 --images 8 --runs 1     # a quick look

Each network gets random float weights (seeded), is quantized at W4A4 with the post-training
family (first conv and classifier at 8 bits, as ptq.py) and calibrated on random images, then
exported. On one batch of --images random images, the forms' runs interleaved (--runs rounds,
the fastest of each kept), one JSON line per network and form with `images_per_s`:

  float        the float network (every quantizer at 32 bits, the same weights)
  network32    the fake-quantized network in float32 (what the check's accuracy runs)
  reference64  the fake-quantized network in float64 (what the thresholds reproduce)
  integer      the integer runtime (edmips.export.runtime; float products where exact, tables)
  integer64    the integer runtime with int64 products and searched thresholds (the slow path)
  qdq, int8    model_qdq.onnx / model_int8.onnx under onnxruntime, where written

then a `ratios` line: float's images/s over each form's. With --cifar, ResNet-20's whole check
(edmips.export.verify: the network on all 10,000 test images, the integer runtime and every
ONNX file with a runner on all of them) is timed: one `whole_check` line with `s`.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
from edmips.export import export, load_bundle  # noqa: E402
from edmips.export.onnx.qdq import qdq_runtime  # noqa: E402
from edmips.export.prepare import reference_copy  # noqa: E402
from edmips.export.runtime import IntegerRuntime, image_codes  # noqa: E402
from edmips.export.verify import verify  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.nn import default_searched, to_fixed  # noqa: E402
from edmips.nn.convert import first_and_last  # noqa: E402
from edmips.ptq import method, stats  # noqa: E402
from edmips.quant.registry import Family  # noqa: E402

PTQ = Family("clipped", "maxabs", "clipped_signed")  # conf/quant/ptq.yaml
NETWORKS = ("resnet20:32", "tv_resnet18:224", "tv_mobilenet_v2:224")
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", default=list(NETWORKS), help="name:image_size")
    p.add_argument("--images", type=int, default=64, help="the batch each form runs")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cifar", type=Path, help="CIFAR-10 .npz: time ResNet-20's whole check")
    p.add_argument("--out", type=Path, help="also write the lines to this file")
    return p.parse_args(argv)


def networks(name: str, size: int):
    """The float network and its W4A4 post-training copy, calibrated on random images."""
    torch.manual_seed(0)
    classes = 10 if size <= 64 else 1000
    model = create_model(name, num_classes=classes, mean=MEAN, std=STD).eval()
    float_model = create_model(name, num_classes=classes, mean=MEAN, std=STD).eval()
    float_model.load_state_dict(model.state_dict())
    searched = default_searched(model, True, True)
    to_fixed(model, {n: (4, 4) for n in searched}, PTQ)
    to_fixed(model, {n: (8, 8) for n in first_and_last(model) if n not in searched}, PTQ)
    calibration = [(torch.rand(16, 3, size, size), None) for _ in range(2)]
    stats.gather(model, calibration, 32)
    stats.finish(model, method("aciq_mix"))
    return float_model, model.eval()


def forms(float_model, model, size: int, out: Path) -> dict:
    """Each form as a function of a batch of images in [0, 1]."""
    export(model, (3, size, size), out)
    graph = load_bundle(out / "integer")
    integer, integer64 = IntegerRuntime(graph), IntegerRuntime(graph, float_products=False)
    network32, reference64 = reference_copy(model, torch.float32), reference_copy(model)
    runs = {
        "float": float_model,
        "network32": network32,
        "reference64": lambda x: reference64(x.double()),
        "integer": lambda x: integer(image_codes(x)),
        "integer64": lambda x: integer64(image_codes(x)),
    }
    for name in ("qdq", "int8"):
        if (out / f"model_{name}.onnx").exists():
            runs[name] = qdq_runtime(out / f"model_{name}.onnx")
    return runs


@torch.no_grad()
def throughput(runs: dict, images: torch.Tensor, rounds: int) -> dict[str, float]:
    """Images per second of each form, its fastest of `rounds` runs, the forms interleaved."""
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():  # warm-up: first-call allocations, onnxruntime's set-up
        run(images[:2])
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(images)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(images) / s for name, s in best.items()}


def bench(spec: str, args) -> list[dict]:
    name, size = spec.split(":")
    size = int(size)
    float_model, model = networks(name, size)
    images = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as out:
        rates = throughput(forms(float_model, model, size, Path(out)), images, args.runs)
    base = {"network": name, "image_size": size, "batch": args.images, "threads": args.threads}
    lines = [base | {"form": form, "images_per_s": round(r, 1)} for form, r in rates.items()]
    ratios = {f"float_over_{form}": round(rates["float"] / r, 2) for form, r in rates.items()}
    return lines + [base | {"ratios": {k: v for k, v in ratios.items() if k != "float_over_float"}}]


def whole_check(path: Path, threads: int) -> dict:
    """ResNet-20's check on the whole CIFAR-10 test split, as retrain.py and ptq.py run it."""
    from edmips.data import CIFAR10DataModule

    data = CIFAR10DataModule(path, batch_size=256, augment=False, on_device=False)
    data.setup("test")
    _, model = networks("resnet20", 32)
    with tempfile.TemporaryDirectory() as out:
        export(model, (3, 32, 32), out)
        start = time.perf_counter()
        checked = verify(model, out, data.test_dataloader())
        seconds = time.perf_counter() - start
    agreements = {k: v for k, v in checked.items() if k.endswith("_agreement")}
    return {
        "network": "resnet20",
        "whole_check": True,
        "s": round(seconds, 1),
        "images": checked["test_images"],
        "checked_images": checked["checked_images"],
        **agreements,
        "threads": threads,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = []
    for spec in args.model:
        for line in bench(spec, args):
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.cifar:
        lines.append(whole_check(args.cifar, args.threads))
        print(json.dumps(lines[-1]), flush=True)
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


if __name__ == "__main__":
    main()
