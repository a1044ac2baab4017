"""Training-step cost of EdMIPS's search, against plain QAT and a naive composite layer.

    python bench/step.py                                   # CPU: resnet20, batch 64, 32x32
    python bench/step.py --device cuda --model resnet18 --batch-size 128 --image-size 224 \
        --num-classes 1000                                 # the GPU target (also resnet50, b64)

One run, one random batch, identical initial weights (seeds reset per configuration). Each
configuration times `--steps` full training steps (forward, loss, backward, optimizer step(s))
after `--warmup` untimed ones and prints one JSON line:

  fp             plain float network of the same shape (edmips.nn.to_float: every conv/linear
                 and quantizer at 32 bits)
  uniform_w2a2   QAT with fixed W2A2 on every searched layer (`to_fixed`): the retrain's step
                 (cross-entropy, conf/retrain.yaml's optimizer), as is fp's
  search_single  the edmips search with one candidate each, W{2} A{2}
  search_full    the edmips search over W{1,2,3,4} A{2,3,4}: SearchModule.update, the step of
                 SearchModule.training_step (loss = CE + mu * expected bits, the weights' and
                 the selectors' optimizers of conf/search.yaml both stepped, single pass)
  naive_single,  the same search with bench/naive.py's layer in place of MixedConv2d: written
  naive_full     like the published EdMIPS code (the weight std read on the host per layer, one
                 quantized weight and one HWGQ output per candidate kept by autograd)

On CUDA, fp, uniform_w2a2 and search_full are also timed under torch.compile (`--compile-mode`,
lines named `<config>_compiled`; `--no-also-compiled` skips them, `--compile` compiles every
configuration instead). Optimizer steps are fused on CUDA, as in training.

"ms" is the median milliseconds per step. "peak_mib" is the allocator peak over the timed steps
on CUDA ("memory": "allocator-peak"); on CPU, which has no resettable allocator peak, it is the
bytes of tensors saved for backward during one eager step (unique storages, parameters
excluded) plus parameter and gradient bytes ("memory": "saved-for-backward"; reported as
"saved_mib" on CUDA too).

The last line holds the ratios. search_over_uniform: what the search costs per step relative to
plain W2A2 QAT (the paper claims ~1.45x; the published code measures 2.2x on ResNet-18, H100).
search_over_naive: below 1 means edmips's fused composite quantizers beat the naive layer.
best_search_over_best_fp / best_search_over_best_uniform: the search step against the float and
the W2A2 step, each at its faster setting (eager or compiled); best_search_ms: that search step.
memory_full_over_single: near 1 means memory does not grow with the number of candidates (the
naive layer's own ratio, naive_memory_full_over_single, shows the growth it avoids).
"""

import argparse
import gc
import json
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT))  # the repo root, for `edmips`
sys.path.insert(0, str(ROOT / "bench"))  # naive.py
from naive import NaiveMixedConv2d, to_naive  # noqa: E402, F401  (NaiveMixedConv2d: the tests')

from edmips.cost import layers as cost_layers  # noqa: E402
from edmips.models import create_model  # noqa: E402
from edmips.nn.convert import default_searched, to_fixed, to_float, to_search  # noqa: E402
from edmips.retrain.module import RetrainModule  # noqa: E402
from edmips.search.module import SearchModule  # noqa: E402

CONFIGS = ("fp", "uniform_w2a2", "search_single", "search_full", "naive_single", "naive_full")
COMPILED = ("fp", "uniform_w2a2", "search_full")  # also timed compiled by default on CUDA
SPACES = {"single": ((2,), (2,)), "full": ((1, 2, 3, 4), (2, 3, 4))}
FP_NOTE = (
    "fp: registry network made float by edmips.nn.to_float (every conv/linear and quantizer at "
    "32 bits: a plain float pre-activation ResNet of the same shape)"
)
MIB = 2**20


# -- one configuration --------------------------------------------------------------------------
def build(name, args, device):
    """The configuration's network on `device`, in training mode, and its layer costs."""
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=args.num_classes)
    names = default_searched(model)
    if name == "fp":
        to_float(model)
    elif name == "uniform_w2a2":
        to_fixed(model, {n: (2, 2) for n in names})
    else:
        to_search(model, names, *SPACES[name.split("_")[1]])
        if name.startswith("naive"):
            to_naive(model)
    model.to(device).train()
    costs = cost_layers.measure(model, (3, args.image_size, args.image_size))
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, costs


def make_step(model, costs, args, device, compile_mode=None):
    """One training step `step(x, y)` as the programs take it, with the optimizers of their
    configuration (fused on CUDA): a searched network's is SearchModule.update (the loss, the
    weights' and the selectors' optimizer both stepped, single pass) with conf/search.yaml's
    optimizers and mu (or --mu); any other network's is the retrain's (cross-entropy and
    conf/retrain.yaml's optimizer). `step(x, y, eager=True)` runs the network uncompiled."""
    searched = bool(cost_layers.searched(model, costs))
    cfg = OmegaConf.load(CONF / ("search.yaml" if searched else "retrain.yaml"))
    if searched:
        mu = cfg.mu if args.mu is None else args.mu
        optimizers = (instantiate(cfg.search.optimizer), instantiate(cfg.search.arch_optimizer))
        module = partial(SearchModule, model, costs, args.num_classes, mu, *optimizers)
    else:
        module = partial(RetrainModule, model, args.num_classes, instantiate(cfg.optimizer))
    modules = {
        eager: module(channels_last=args.channels_last, compile=None if eager else compile_mode)
        for eager in (False, True)
    }
    optimizers = modules[False].configure_optimizers()  # the search's two, the retrain's one
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    def step(x, y, eager=False):
        with autocast:  # as Lightning's bf16-mixed wraps the whole training step
            if searched:
                modules[eager].update(x, y, *optimizers, True, True, torch.Tensor.backward)
                return
            loss = F.cross_entropy(modules[eager](x), y)
            optimizers.zero_grad(set_to_none=True)
            loss.backward()
            optimizers.step()

    return step


def saved_for_backward_bytes(step, params):
    """Bytes of the tensors autograd saves during one step (unique storages, not parameters)."""
    seen = {p.untyped_storage().data_ptr() for p in params}
    total = 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total


def run_config(name, args, device, x, y, compile_mode=None):
    model, costs = build(name, args, device)
    step = partial(make_step(model, costs, args, device, compile_mode), x, y)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    saved = saved_for_backward_bytes(lambda: step(eager=True), params) + 2 * param_bytes
    line = {
        "name": f"{name}_compiled" if compile_mode else name,
        "compile": compile_mode or False,
        "ms": round(statistics.median(times), 3),
        "peak_mib": round((peak if cuda else saved) / MIB, 2),
        "memory": "allocator-peak" if cuda else "saved-for-backward",
        "saved_mib": round(saved / MIB, 2),
        "ms_min": round(min(times), 3),
        "searched_layers": len(cost_layers.searched(model, costs)),
    }
    if name == "fp":
        line["note"] = FP_NOTE
    return line


def ratios(lines):
    by = {line["name"]: line for line in lines}

    def ratio(a, b, key="ms"):
        return round(by[a][key] / by[b][key], 3) if a in by and b in by else None

    def best(name):  # the faster of eager and compiled, as the settings a user would pick
        times = [by[n]["ms"] for n in (name, f"{name}_compiled") if n in by]
        return min(times) if times else None

    def best_ratio(a, b):
        return round(best(a) / best(b), 3) if best(a) and best(b) else None

    return {
        "name": "ratios",
        "best_search_over_best_fp": best_ratio("search_full", "fp"),
        "best_search_over_best_uniform": best_ratio("search_full", "uniform_w2a2"),
        "best_search_ms": best("search_full"),
        "search_over_uniform": ratio("search_full", "uniform_w2a2"),
        "search_over_naive": ratio("search_full", "naive_full"),
        "memory_full_over_single": ratio("search_full", "search_single", "peak_mib"),
        "naive_memory_full_over_single": ratio("naive_full", "naive_single", "peak_mib"),
        "search_over_fp": ratio("search_full", "fp"),
        "uniform_over_fp": ratio("uniform_w2a2", "fp"),
        "naive_over_uniform": ratio("naive_full", "uniform_w2a2"),
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, help="timed steps (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps (default: 2 on CPU, 5 on CUDA)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="default: on for cuda")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, help="default: on for cuda"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every configuration")
    p.add_argument(
        "--also-compiled",
        action=argparse.BooleanOptionalAction,
        help=f"also time {', '.join(COMPILED)} compiled (default: on for cuda)",
    )
    p.add_argument(
        "--compile-mode", default="default", help="torch.compile mode, e.g. reduce-overhead"
    )
    p.add_argument(
        "--config",
        nargs="+",
        choices=CONFIGS,
        default=list(CONFIGS),
        help="run only these configurations",
    )
    p.add_argument(
        "--mu", type=float, help="the search's complexity weight (default: conf/search.yaml's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="also write the JSON lines to this file")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    for key, on_cuda, on_cpu in (
        ("steps", 20, 5),
        ("warmup", 5, 2),
        ("bf16", True, False),
        ("channels_last", True, False),
        ("also_compiled", True, False),
    ):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
    x, y = x.to(device), y.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shape = {
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "device": str(device),
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    lines = []
    runs = [(c, args.compile_mode if args.compile else None) for c in args.config]
    if args.also_compiled and not args.compile:
        runs += [(c, args.compile_mode) for c in COMPILED if c in args.config]
    for name, mode in sorted(runs, key=lambda r: (r[1] is not None, CONFIGS.index(r[0]))):
        lines.append({**run_config(name, args, device, x, y, mode), **shape})
        print(json.dumps(lines[-1]), flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines.append(ratios(lines))
    print(json.dumps(lines[-1]), flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


if __name__ == "__main__":
    main()
