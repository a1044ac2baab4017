"""Post-training quantization's phases on the CPU: calibration, lowering, export and the check.

    python bench/ptq.py --threads 2                 # resnet20 (32 px) and tv_resnet18 (224 px)
    python bench/ptq.py --model resnet_tiny:16 --calibration-images 4 --test-images 4

Each network gets random float weights (seeded) and random images (it measures time, not
accuracy), is quantized at W4A4 with the post-training family (clipped activations, max-abs
weights; first conv and classifier at 8 bits, as ptq.py), and prints one JSON line per phase:

  calibrate  the calibration images through the network, then ACIQ-mix clips (edmips.ptq.stats)
  adaround   with --rounding adaround: every block's rounding and clips learned on the
             calibration images against the float network (edmips.ptq.reconstruct,
             conf/ptq.yaml's settings); with --reconstruction layer, every layer's rounding
             (edmips.ptq.adaround)
  lower      the integer graph (edmips.export.lower)
  export     the bundle and both ONNX files written (edmips.export.export, lowering included)
  verify     the test images through the reference, the integer runtime and the QDQ ONNX model
             (edmips.export.verify.verify)

"s" is wall seconds, "per_image_ms" the same per image for the phases that run images.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
from edmips.export import export, lower  # noqa: E402
from edmips.export.verify import verify  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.nn import default_searched, to_fixed  # noqa: E402
from edmips.nn.convert import first_and_last  # noqa: E402
from edmips.ptq import float_copy, method, rounding, stats  # noqa: E402
from edmips.quant.registry import Family  # noqa: E402

PTQ = Family("clipped", "maxabs", "clipped_signed")  # conf/quant/ptq.yaml
NETWORKS = ("resnet20:32", "tv_resnet18:224")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", default=list(NETWORKS), help="name:image_size")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--test-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounding", choices=rounding.ROUNDINGS, default="nearest")
    p.add_argument("--reconstruction", choices=rounding.RECONSTRUCTIONS, default="block")
    p.add_argument("--out", type=Path, help="also write the lines to this file")
    return p.parse_args(argv)


def quantized(name: str, bits: int, num_classes: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, mean=MEAN, std=STD)
    searched = default_searched(model, True, True)
    to_fixed(model, {n: (bits, bits) for n in searched}, PTQ)
    to_fixed(model, {n: (8, 8) for n in first_and_last(model) if n not in searched}, PTQ)
    return model


def images(count: int, size: int, batch_size: int, num_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 3, size, size, generator=g)
    y = torch.randint(num_classes, (count,), generator=g)
    return list(zip(x.split(batch_size), y.split(batch_size)))


def timed(phase: str, run, network: str, size: int, args, images_run: int | None = None):
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    line = {"network": network, "image_size": size, "phase": phase, "s": round(seconds, 3)}
    if images_run:
        line |= {"images": images_run, "per_image_ms": round(1000 * seconds / images_run, 3)}
    return line | {"threads": args.threads}, result


def calibrate(model, batches, clip) -> dict[str, float]:
    stats.gather(model, batches, sum(len(x) for x, _ in batches))
    return stats.finish(model, clip)


def learn_rounding(model, batches, reconstruction: str) -> dict:
    """AdaRound at conf/ptq.yaml's settings, against the float network, on the calibration
    images, layer by layer or block by block."""
    settings = rounding.adaround_settings(OmegaConf.load(ROOT / "conf" / "ptq.yaml").ptq.adaround)
    images = torch.cat([x for x, _ in batches])
    return rounding.LEARNERS[reconstruction](model, float_copy(model), images, settings)


def bench(spec: str, args) -> list[dict]:
    name, size = spec.split(":")
    size = int(size)
    model = quantized(name, args.bits, args.num_classes)
    calib = images(args.calibration_images, size, args.batch_size, args.num_classes, 0)
    test = images(args.test_images, size, args.batch_size, args.num_classes, 1)
    clip = method("aciq_mix")
    lines = []
    with tempfile.TemporaryDirectory() as out:
        steps = [
            ("calibrate", lambda: calibrate(model, calib, clip), args.calibration_images),
            ("lower", lambda: lower(model, (3, size, size)), None),
            ("export", lambda: export(model, (3, size, size), out), None),
            ("verify", lambda: verify(model, out, test), args.test_images),
        ]
        if args.rounding == "adaround":
            steps.insert(
                1,
                (
                    "adaround",
                    lambda: learn_rounding(model, calib, args.reconstruction),
                    args.calibration_images,
                ),
            )
        for phase, run, count in steps:
            line, result = timed(phase, run, name, size, args, count)
            if phase == "verify":
                line["prediction_agreement"] = result["prediction_agreement"]
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [line for spec in args.model for line in bench(spec, args)]
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


if __name__ == "__main__":
    main()
