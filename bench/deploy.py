"""Deployment on onnxruntime (CPU): latency and file size of one network in three ONNX forms.

    python bench/deploy.py --threads 2              # resnet20, tv_resnet18, tv_mobilenet_v2
    python bench/deploy.py --model resnet_tiny:16 --runs 2 --check-images 4

Each network gets random float weights (seeded), is made an `int8sim` network (conf/quant/
int8sim.yaml) at W4A4 with the first conv and the classifier at 8 bits, its ranges and batch
norms calibrated on a few random batches (latency does not depend on accuracy), and exported.
Side by side, under one onnxruntime with a fixed thread count:

  float  the float network (every quantizer at 32 bits, the same weights), torch.onnx.export
  qdq    model_qdq.onnx: float32 convolutions on integer values, thresholds as binary searches
  int8   model_int8.onnx: QLinearConv and QuantizeLinear requantizations (onnxruntime's int8)

One JSON line per network and form: `ms_b1` / `ms_b64` (median of --runs runs at batch 64 and
3x as many at 1, the forms' runs interleaved), `mb` (file size); then per network the
agreements that the export's check measures on --check-images random images
(edmips.export.verify: the integer runtime, model_qdq.onnx and model_int8.onnx against the
fake-quantized float64 network), the ratios float / int8, the weights' size at their bit-widths
in KiB (`weight_bits_kb`) beside the integer bundle's (`bundle_kb`, and `bundle_weights_kb` its
packed weights), and the int8 model's time per operator type at batch 64 from onnxruntime's profiler
(`profile`, in %).
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
from edmips.cost.weight_size import fixed_weight_bits  # noqa: E402
from edmips.export import export  # noqa: E402
from edmips.export.verify import verify  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.nn import default_searched, to_fixed, to_float  # noqa: E402
from edmips.nn.convert import first_and_last  # noqa: E402
from edmips.quant.registry import Family  # noqa: E402

INT8SIM = Family("pow2_relu", "maxabs_f32", "pow2")  # conf/quant/int8sim.yaml
NETWORKS = ("resnet20:32", "tv_resnet18:224", "tv_mobilenet_v2:224")
FORMS = {"float": "model_float.onnx", "qdq": "model_qdq.onnx", "int8": "model_int8.onnx"}


def networks(name: str, size: int, seed: int = 0):
    """The float network and its int8sim copy (W4A4, first and last at 8 bits), calibrated."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10 if size <= 64 else 1000)
    bits = {n: (4, 4) for n in default_searched(model)}
    quantized = to_fixed(model, {**bits, **dict.fromkeys(first_and_last(model), (8, 8))}, INT8SIM)
    quantized.train()
    with torch.no_grad():  # the ranges and batch-norm statistics of a few batches
        for _ in range(3):
            quantized(torch.rand(8, 3, size, size))
    quantized.eval()
    return to_float(copy.deepcopy(quantized)).eval(), quantized


def export_float(model, size: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.rand(1, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )


def session(path: Path, threads: int, profile: bool = False):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = profile
    options.profile_file_prefix = str(path.parent / "ort_profile")  # beside the model
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latencies(sessions: dict, batch: int, size: int, runs: int) -> dict[str, float]:
    """Median ms of each session at `batch`, the sessions' runs interleaved so that a load
    that comes and goes falls on every form alike."""
    x = {"image": np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)}
    for sess in sessions.values():
        sess.run(None, x)  # the first run allocates
    times = {form: [] for form in sessions}
    for _ in range(runs):
        for form, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, x)
            times[form].append((time.perf_counter() - start) * 1000)
    return {form: statistics.median(t) for form, t in times.items()}


def bundle_sizes(folder: Path) -> dict[str, float]:
    """KiB of the integer bundle, and of the packed weights in it."""
    with np.load(folder / "arrays.npz") as arrays:
        weights = sum(arrays[k].nbytes for k in arrays.files if k.endswith("/weight"))
    files = sum(f.stat().st_size for f in folder.iterdir())
    return {"bundle_kb": round(files / 1024, 1), "bundle_weights_kb": round(weights / 1024, 1)}


def op_profile(path: Path, size: int, threads: int) -> dict[str, float]:
    """Percent of the int8 model's kernel time per operator type at batch 64."""
    sess = session(path, threads, profile=True)
    latencies({"int8": sess}, 64, size, 3)
    events = json.loads(Path(sess.end_profiling()).read_text())
    totals = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"]
    whole = sum(totals.values())
    return {op: round(100 * t / whole, 1) for op, t in totals.most_common(6)}


def bench(spec: str, threads: int, runs: int, check_images: int) -> list[dict]:
    name, size = spec.split(":")
    size = int(size)
    float_net, model = networks(name, size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        export(model, (3, size, size), out)
        export_float(float_net, size, out / FORMS["float"])
        images = torch.rand(check_images, 3, size, size)
        labels = torch.zeros(check_images, dtype=torch.int64)
        checked = verify(model, out, [(images, labels)])
        sessions = {form: session(out / file_name, threads) for form, file_name in FORMS.items()}
        b1, b64 = (latencies(sessions, n, size, r) for n, r in ((1, 3 * runs), (64, runs)))
        lines = [
            {
                "network": spec,
                "form": form,
                "ms_b1": round(b1[form], 2),
                "ms_b64": round(b64[form], 1),
                "mb": round(os.path.getsize(out / file_name) / 2**20, 3),
            }
            for form, file_name in FORMS.items()
        ]
        by_form = {line["form"]: line for line in lines}
        f, q = by_form["float"], by_form["int8"]
        lines.append(
            {
                "network": spec,
                "agreement": {
                    k: checked[k]
                    for k in ("prediction_agreement", "qdq_agreement", "int8_agreement")
                },
                "images": checked["test_images"],
                "float_over_int8_b1": round(f["ms_b1"] / q["ms_b1"], 2),
                "float_over_int8_b64": round(f["ms_b64"] / q["ms_b64"], 2),
                "qdq_over_int8_b64": round(by_form["qdq"]["ms_b64"] / q["ms_b64"], 2),
                "float_over_int8_size": round(f["mb"] / q["mb"], 2),
                "weight_bits_kb": round(fixed_weight_bits(model, []) / 8 / 1024, 1),
                **bundle_sizes(out / "integer"),
                "profile": op_profile(out / FORMS["int8"], size, threads),
            }
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=list(NETWORKS), help="name:image_size")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads")
    parser.add_argument("--runs", type=int, default=10, help="timed runs at batch 64 (3x at 1)")
    parser.add_argument("--check-images", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.model:
        for line in bench(spec, args.threads, args.runs, args.check_images):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
