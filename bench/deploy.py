"""Deployment on onnxruntime (CPU): latency, file size and agreement of one network's ONNX forms,
edmips's beside onnxruntime's own static quantization of the same float network.

    python bench/deploy.py --threads 2              # resnet20, tv_resnet18, tv_mobilenet_v2
    python bench/deploy.py --quant int8sim          # another family (conf/quant/<name>.yaml)
    python bench/deploy.py --model resnet_tiny:16 --runs 2 --check-images 4 --out /tmp/deploy

Each network gets random float weights (seeded) and is made a network of the family --quant
names (conf/quant/<name>.yaml; default edmips) at W4A4 with the first conv and the classifier at
8 bits. Three seeded random batches calibrate it (latency does not depend on accuracy): through
the network in training mode (batch norms and moving ranges), then, where a quantizer has
still seen nothing (the ptq family's clips), through it in eval mode under calibration and the
clips set by ACIQ-mix (edmips.ptq.stats, as bench/ptq.py). It is exported, and side by side,
under one onnxruntime with a fixed thread count:

  float    the float network (every quantizer at 32 bits, the same weights), torch.onnx.export
  qdq      model_qdq.onnx: float32 convolutions on integer values, thresholds as binary searches
  int8     model_int8.onnx: onnxruntime's int8 kernels (QLinearConv where the family's
           thresholds are its requantization, as int8sim's; ConvInteger and exact thresholds
           otherwise); absent where the export refuses it
  ort_qop  onnxruntime.quantization.quantize_static of the float ONNX network (pre-processed
           by quant_pre_process), QuantFormat.QOperator (QLinearConv ...)
  ort_qdq  the same in QuantFormat.QDQ (QuantizeLinear / DequantizeLinear around float ops)

onnxruntime's quantization: per channel, uint8 activations and int8 weights, MinMax ranges from
the same three calibration batches.

One JSON line per network and form: `ms_b1` / `ms_b64` (median of --runs runs at batch 64 and
3x as many at 1, the forms' runs interleaved), `mb` (file size); then per network a summary on
--check-images random images: `agreement`, the export's check (edmips.export.verify: the
integer runtime, model_qdq.onnx and model_int8.onnx against the fake-quantized float64
network, whose integers they compute); `float_agreement`, how often each quantized form and
the fake-quantized network (`fake_quant`) predict the float network's class; `float_over`, per
form the float network's time over the form's at batch 1 and 64 and its file size over the
form's; the weights' size at their bit-widths in KiB (`weight_bits_kb`) beside the integer
bundle's (`bundle_kb`, and `bundle_weights_kb` its packed weights), and where model_int8.onnx
is written its time per operator type at batch 64 from onnxruntime's profiler (`profile`, in %).
"""

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from omegaconf import OmegaConf
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
from edmips.cost.weight_size import fixed_weight_bits  # noqa: E402
from edmips.export import export  # noqa: E402
from edmips.export.verify import verify  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.nn import default_searched, to_fixed, to_float  # noqa: E402
from edmips.nn.convert import first_and_last  # noqa: E402
from edmips.ptq import method, stats  # noqa: E402
from edmips.quant.registry import DEPLOY, Family  # noqa: E402

NETWORKS = ("resnet20:32", "tv_resnet18:224", "tv_mobilenet_v2:224")
FAMILIES = sorted(p.stem for p in (ROOT / "conf" / "quant").glob("*.yaml"))
FILES = {
    "float": "model_float.onnx",
    "qdq": "model_qdq.onnx",
    "int8": "model_int8.onnx",
    "ort_qop": "model_ort_qop.onnx",
    "ort_qdq": "model_ort_qdq.onnx",
}
ORT_FORMATS = {"ort_qop": QuantFormat.QOperator, "ort_qdq": QuantFormat.QDQ}
CLIP = "aciq_mix"  # the ptq family's clips, as bench/ptq.py and conf/ptq.yaml


def load_family(name: str, deploy: str) -> Family:
    """The family conf/quant/<name>.yaml names, in its int8 forms where `deploy` is int8."""
    return Family.from_spec(OmegaConf.load(ROOT / "conf" / "quant" / f"{name}.yaml"), deploy)


def calibration_batches(size: int, seed: int = 0) -> list[torch.Tensor]:
    """Three batches of eight random images, the calibration of every quantized form."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(8, 3, size, size, generator=g) for _ in range(3)]


def networks(name: str, size: int, family: Family, batches, seed: int = 0):
    """The float network and its copy in `family` (W4A4, first and last at 8 bits), calibrated
    on `batches` (module docstring)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10 if size <= 64 else 1000)
    bits = {n: (4, 4) for n in default_searched(model)}
    quantized = to_fixed(model, {**bits, **dict.fromkeys(first_and_last(model), (8, 8))}, family)
    quantized.train()
    with torch.no_grad():  # the ranges and batch-norm statistics of a few batches
        for x in batches:
            quantized(x)
    if not all(q.is_calibrated() for q in stats.tracked(quantized).values()):
        stats.gather(quantized, [(x,) for x in batches], sum(len(x) for x in batches))
        stats.finish(quantized, method(CLIP))
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


class Images(CalibrationDataReader):
    """The calibration batches, as onnxruntime's calibration reads them."""

    def __init__(self, batches):
        self.inputs = iter([{"image": x.numpy()} for x in batches])

    def get_next(self):
        return next(self.inputs, None)


def quantize_ort(out: Path, batches) -> None:
    """onnxruntime's static quantization of model_float.onnx, in both formats (docstring)."""
    prepared = out / "model_float_prepared.onnx"
    quant_pre_process(str(out / FILES["float"]), str(prepared))
    for form, quant_format in ORT_FORMATS.items():
        quantize_static(
            str(prepared),
            str(out / FILES[form]),
            Images(batches),
            quant_format=quant_format,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def session(path: Path, threads: int, profile: bool = False):
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


def bench(spec: str, quant: str, deploy: str, threads: int, runs: int, check_images: int, out):
    """The lines of one network in the family `quant` deployed as `deploy`, its files written
    to `out`."""
    name, size = spec.split(":")
    size = int(size)
    batches = calibration_batches(size)
    float_net, model = networks(name, size, load_family(quant, deploy), batches)
    export(model, (3, size, size), out)
    export_float(float_net, size, out / FILES["float"])
    quantize_ort(out, batches)
    files = {
        form: out / file_name for form, file_name in FILES.items() if (out / file_name).exists()
    }
    # On the 8-bit grid, as a decoded image is: the forms read round(255 x) exactly there, as
    # the integer runtime does (for x between the grid's points float32 may round either way).
    codes = torch.randint(
        0, 256, (check_images, 3, size, size), generator=torch.Generator().manual_seed(1)
    )
    images = codes / 255
    checked = verify(model, out, [(images, torch.zeros(check_images, dtype=torch.int64))])
    sessions = {form: session(path, threads) for form, path in files.items()}
    b1, b64 = (latencies(sessions, n, size, r) for n, r in ((1, 3 * runs), (64, runs)))
    mb = {form: path.stat().st_size / 2**20 for form, path in files.items()}
    lines = [
        {
            "network": spec,
            "quant": quant,
            "deploy": deploy,
            "form": form,
            "ms_b1": round(b1[form], 2),
            "ms_b64": round(b64[form], 1),
            "mb": round(mb[form], 3),
        }
        for form in files
    ]
    predicted = {
        form: sess.run(None, {"image": images.numpy()})[0].argmax(1)
        for form, sess in sessions.items()
    }
    with torch.no_grad():
        predicted["fake_quant"] = model(images).argmax(1).numpy()
    summary = {
        "network": spec,
        "quant": quant,
        "deploy": deploy,
        "agreement": {
            k: checked[k] for k in ("prediction_agreement", "qdq_agreement", "int8_agreement")
        },
        "float_agreement": {
            form: float(np.mean(p == predicted["float"]))
            for form, p in predicted.items()
            if form != "float"
        },
        "images": checked["checked_images"],
        "float_over": {
            form: {
                "b1": round(b1["float"] / b1[form], 2),
                "b64": round(b64["float"] / b64[form], 2),
                "size": round(mb["float"] / mb[form], 2),
            }
            for form in files
            if form != "float"
        },
        "weight_bits_kb": round(fixed_weight_bits(model, []) / 8 / 1024, 1),
        **bundle_sizes(out / "integer"),
    }
    if "int8" in files:
        summary["profile"] = op_profile(files["int8"], size, threads)
    return [*lines, summary]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=list(NETWORKS), help="name:image_size")
    parser.add_argument("--quant", default="edmips", choices=FAMILIES, help="conf/quant/<name>")
    parser.add_argument(
        "--deploy",
        choices=DEPLOY,
        help="the family's quantizers or their int8 forms (default: retrain.py's)",
    )
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads")
    parser.add_argument("--runs", type=int, default=10, help="timed runs at batch 64 (3x at 1)")
    parser.add_argument("--check-images", type=int, default=16)
    parser.add_argument(
        "--out", type=Path, help="keep each network's files in OUT/<name>_<size> (a new folder)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    deploy = args.deploy or OmegaConf.load(ROOT / "conf" / "retrain.yaml").deploy
    for spec in args.model:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if args.out is not None:  # a new folder: no file of an earlier run is taken as its
                out = args.out / spec.replace(":", "_")
                out.mkdir(parents=True)
            lines = bench(spec, args.quant, deploy, args.threads, args.runs, args.check_images, out)
            for line in lines:
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
