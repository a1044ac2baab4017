"""One training epoch of CIFAR-10 (data on the device): float ResNet-20, the search, the retrain.

    python bench/epoch.py --data ../shared/data/cifar10-jpeg.npz --device cuda
    python bench/epoch.py --data synthetic --limit-steps 3           # a quick check, any machine

Each configuration is built as in bench/step.py, from the same seed: `fp` (the float network of
the same shape), `search` (search_full: the search over W{1,2,3,4} A{2,3,4}, both optimizers
stepped) and `retrain` (uniform_w2a2: QAT at fixed bit-widths, the retrain's step). The data
set sits on the device and is batched there by edmips's TensorLoader (random crop and flip), so
the epoch measures the training steps alone. `--warmup` untimed steps (compilation, cuDNN
autotuning) precede the timed epoch. One JSON line per configuration ("epoch_s": seconds for
the epoch, "ms_per_step"), then the ratios search_over_fp and retrain_over_fp.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/step.py
import step as step_bench  # noqa: E402

from edmips.data import CIFAR10DataModule, SyntheticDataModule  # noqa: E402

CONFIGS = {"fp": "fp", "search": "search_full", "retrain": "uniform_w2a2"}


def load_data(args, device):
    if args.data == "synthetic":
        data = SyntheticDataModule(args.batch_size, val_size=0, num_train=args.batch_size * 8)
    else:
        data = CIFAR10DataModule(args.data, args.batch_size, val_size=0)
    data.setup()
    images, labels = data.splits["train"]
    data.splits["train"] = (images.to(device), labels.to(device))
    return data


def time_epoch(name, args, device, data):
    model, costs = step_bench.build(CONFIGS[name], args, device)
    step = step_bench.make_step(model, costs, args, device, args.compile_mode)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batches():
        for x, y in data.train_dataloader():
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    for i, (x, y) in enumerate(batches()):
        if i >= args.warmup:
            break
        step(x, y)
    sync()
    steps, start = 0, time.perf_counter()
    for x, y in batches():
        if args.limit_steps and steps >= args.limit_steps:
            break
        step(x, y)
        steps += 1
    sync()
    seconds = time.perf_counter() - start
    return {
        "name": name,
        "config": CONFIGS[name],
        "epoch_s": round(seconds, 3),
        "steps": steps,
        "ms_per_step": round(seconds / max(steps, 1) * 1e3, 3),
        "compile": args.compile_mode or False,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/cifar10", help="CIFAR-10 .npz or folder, or synthetic")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before the epoch")
    p.add_argument("--limit-steps", type=int, help="time only this many steps of the epoch")
    p.add_argument(
        "--compile-mode", help="torch.compile mode (default: 'default' on cuda, none on cpu)"
    )
    p.add_argument("--no-compile", action="store_true", help="eager, also on cuda")
    p.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON lines to this file")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if args.no_compile:
        args.compile_mode = None
    elif args.compile_mode is None and cuda:
        args.compile_mode = "default"
    # what step.build and step.make_step read
    args.bf16 = args.channels_last = cuda
    args.num_classes, args.image_size, args.mu = 10, 32, None  # mu: conf/search.yaml's
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    data = load_data(args, device)
    lines = []
    for name in (c for c in CONFIGS if c in args.config):
        lines.append(time_epoch(name, args, device, data))
        print(json.dumps(lines[-1]), flush=True)
    by = {line["name"]: line["epoch_s"] for line in lines}
    ratios = {"name": "ratios"}
    for name in ("search", "retrain"):
        if name in by and "fp" in by:
            ratios[f"{name}_over_fp"] = round(by[name] / by["fp"], 3)
    lines.append(ratios)
    print(json.dumps(ratios), flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


if __name__ == "__main__":
    main()
