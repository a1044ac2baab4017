"""Which torchvision classifiers edmips exports exactly: every classification model of
torchvision up to --max-params million parameters, each at the smallest input it takes.

    python bench/models.py                                  # every model, a table at the end
    python bench/models.py --write-readme                   # and the table into README.md
    python bench/models.py --only mobilenet_v3_small squeezenet1_0

Each model runs in a process of its own (--timeout seconds at most). It is built as
`tv_<name>` (edmips.models.create_model, 10 classes, random weights), made uniform W4A4 (the
first conv and the classifier at 8 bits, as every tv_ model is built; the quantizers in front
of tables and products at their fixed 8), its batch norms given a trained network's scale and
their statistics and the signed ranges calibrated on three random batches, and exported. The
integer runtime and model_qdq.onnx then run 8 random images: the result is "exact" where the
runtime's logits are the float64 fake-quantized network's (to 1e-9 of their largest) and
model_qdq.onnx's are the runtime's; "refused: <message>" where edmips refuses the model in one
line (an ExportError, or a ValueError raised by edmips); anything else is "bug: <exception>",
"mismatch: ..." (an export that computes something else) or "timeout".

The input: the model's one size where it has one (a ViT's image_size), else the first of
SIZES the float network runs at (32 px for most; Inception v3 needs 75).

One JSON line per model (`name`, `params_m`, `image_size`, `result`, `agreement`: how often the
runtime's and model_qdq.onnx's classes are the network's, `seconds`), then a Markdown table;
--write-readme puts the table between README.md's models-table markers.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
from edmips.core.cli import raised_here  # noqa: E402
from edmips.export import ExportError, export  # noqa: E402
from edmips.export.onnx.qdq import qdq_runtime  # noqa: E402
from edmips.export.verify import integer_pair  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.models.tv import check_image_size, float_model  # noqa: E402
from edmips.nn import QUANT_LAYERS, default_searched, to_fixed  # noqa: E402

SIZES = (32, 64, 75, 128, 224)  # the inputs tried, smallest first
BEGIN, END = "<!-- models table: bench/models.py -->", "<!-- end models table -->"


def parameters_m(name: str, limit_m: float) -> float:
    """Millions of parameters of the 10-class network, built on the meta device (no memory,
    nothing initialized). RegNet computes its widths with tensors, which the meta device cannot
    give back: it is built on the CPU, unless torchvision's own count (of its 1000-class
    network, the head's weights at most a few million more) is over twice the limit."""
    try:
        with torch.device("meta"):
            body = float_model(name, num_classes=10).body
    except NotImplementedError:
        count = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
        if count > 2e6 * limit_m:
            return count / 1e6
        body = float_model(name, num_classes=10).body
    return sum(p.numel() for p in body.parameters()) / 1e6


def smallest_size(name: str) -> int:
    """The model's one input size where it has one, else the first of SIZES its float network
    runs at."""
    body = float_model(name, num_classes=10).body.eval()
    if getattr(body, "image_size", None) is not None:
        return body.image_size
    for size in SIZES:
        try:
            with torch.no_grad():
                body(torch.rand(1, 3, size, size))
            return size
        except RuntimeError:
            continue
    raise ValueError(f"{name} runs at none of {SIZES}")


def trained_like(model: nn.Module, size: int) -> nn.Module:
    """Batch norms at a trained network's scale (activations across HWGQ's steps), biases off
    zero (torchvision starts them at zero, which any grid holds), the batch norms' statistics
    those of the last of three random batches (MobileNetV3's momentum of 0.01 would leave them
    at their start), the signed quantizers' ranges those of the batches."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 1.0)
        elif isinstance(m, QUANT_LAYERS) and m.bias is not None:  # torchvision starts at 0
            m.bias.data.uniform_(-0.1, 0.1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size))
    return model.eval()


def exported_check(model: nn.Module, size: int, out: Path) -> tuple[str, dict]:
    """Export the model into `out` and compare the integer runtime and model_qdq.onnx with the
    float64 fake-quantized network on 8 random images: the result and the agreements."""
    export(model, (3, size, size), out)
    images = torch.randint(0, 256, (8, 3, size, size), generator=torch.Generator().manual_seed(1))
    images = images.float() / 255
    reference, integer = integer_pair(model, out / "integer")
    with torch.no_grad():
        expected, got = reference(images), integer(images)
    qdq = qdq_runtime(out / "model_qdq.onnx")(images)
    classes = expected.argmax(1)
    agreement = {
        "integer": float((got.argmax(1) == classes).float().mean()),
        "qdq": float((qdq.argmax(1) == classes).float().mean()),
    }
    error = float((got - expected).abs().max() / expected.abs().max())
    if float(expected.std()) < 1e-3:
        return f"mismatch: constant logits (std {float(expected.std()):.1e})", agreement
    if error > 1e-9:
        return f"mismatch: integer logits off by {error:.1e} of the largest", agreement
    if not torch.equal(qdq, got):
        return "mismatch: model_qdq.onnx's logits differ from the runtime's", agreement
    return "exact", agreement


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def is_ours(e: BaseException) -> bool:
    """An ExportError, or a ValueError raised in edmips's code: its one-line refusal."""
    return isinstance(e, ExportError) or (isinstance(e, ValueError) and raised_here(e))


def where(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def check(name: str, params_m: float) -> dict:
    """Build, quantize, calibrate, export and compare one model (module docstring)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    size, agreement = None, None
    try:
        size = smallest_size(name)
        model = create_model(f"tv_{name}", num_classes=10)
        check_image_size(model, (3, size, size))
        to_fixed(model, {n: (4, 4) for n in default_searched(model)})
        trained_like(model, size)
        with tempfile.TemporaryDirectory() as out:
            result, agreement = exported_check(model, size, Path(out))
    except Exception as e:
        if is_ours(e):
            result = f"refused: {one_line(e)}"
        else:
            result = f"bug: {type(e).__name__}: {one_line(e)} ({where(e)})"
    seconds = round(time.perf_counter() - start, 1)
    return dict(
        name=name,
        params_m=round(params_m, 2),
        image_size=size,
        result=result,
        agreement=agreement,
        seconds=seconds,
    )


def run_isolated(name: str, params_m: float, timeout: float, threads: int) -> dict:
    """`check` in a process of its own, at most `timeout` seconds."""
    command = [sys.executable, __file__, "--one", name, str(params_m), "--threads", str(threads)]
    start = time.perf_counter()

    def failed(result: str) -> dict:
        seconds = round(time.perf_counter() - start, 1)
        return dict(name=name, params_m=round(params_m, 2), image_size=None, result=result,
                    agreement=None, seconds=seconds)  # fmt: skip

    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return failed(f"timeout after {timeout:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return failed(f"bug: the process exited with {done.returncode}: {last}")


def table(rows: list[dict]) -> str:
    lines = [
        "| model | parameters (M) | input | result | agreement (runtime, qdq) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['image_size']} px" if r["image_size"] else ""
        a = r["agreement"]
        agreement = f"{a['integer']:.2f}, {a['qdq']:.2f}" if a else ""
        result = r["result"].replace("|", "\\|")
        lines.append(
            f"| {r['name']} | {r['params_m']:.2f} | {size} | {result} | {agreement} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    kinds = [r["result"].split(":")[0].split(" ")[0] for r in rows]
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def write_readme(text: str, readme: Path = ROOT / "README.md") -> None:
    """Replace what lies between README.md's models-table markers with `text`."""
    old = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(old):
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to write the table into")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", old))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-params", type=float, default=30.0, help="millions (default 30)")
    parser.add_argument("--only", nargs="+", help="these torchvision names only")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "PARAMS_M"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.one:  # the child process: one model's line
        print(json.dumps(check(args.one[0], float(args.one[1]))), flush=True)
        return []
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        params_m = parameters_m(name, args.max_params)
        if params_m > args.max_params:
            continue
        rows.append(run_isolated(name, params_m, args.timeout, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    text = f"{table(rows)}\n\n{len(rows)} models: {summary(rows)}."
    print(text)
    if args.write_readme:
        write_readme(text)
    return rows


if __name__ == "__main__":
    main()
