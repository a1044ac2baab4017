"""Searched vs uniform vs random at one budget: every network retrained with the same recipe and
tested on the full CIFAR-10 test set, then the report (mean and std over seeds per kind).

    python bench/search_quality.py OUT [--bits 2] [--protocol cpu|gpu] [search overrides...]
    python bench/search_quality.py OUT --start float [--bits 2 2.5] [--wbits 1 2 3 4]
                                   [--float-weights W]

`cpu` (default) is a reduced protocol that fits in under an hour on a 2-core CPU: ResNet-8,
searches of 8 epochs x 60 batches, retrains of 10 epochs x 80 batches (batch 128), two searched
seeds, two uniform seeds, three random allocations. `gpu` is the shipped recipe
(experiment=cifar10_resnet20, full epochs), the same networks.

`--start float` asks the question of a user who has a trained float network: one float
ResNet-20 (`--float-weights`, or trained here), then at each budget over W{--wbits} A{2,3,4}
the allocations searched from its weights, `ptq.py arch=sensitivity` (measured in the
post-training family, and in the fine-tune's, `quant=edmips`, there also with
`sensitivity.measure=refit`), `ptq.py arch=search` (the selectors learned on training images
alone), every uniform pair within 5% of the budget and a random one within 1%, each fine-tuned
from the float weights with one recipe (`init=float`), `--seeds` seeds per kind; then the table
per budget and kind (mean, standard deviation, the lowest agreement of the integer check) and
each seed's paired differences. Max-abs weights take no 1 bit: with `--wbits 1 ...` only the
allocations measured in the fine-tune's family are made.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROTOCOLS = {
    "cpu": {
        "common": ["model=resnet8", "trainer=cpu"],
        "search": ["trainer.max_epochs=8", "+trainer.limit_train_batches=60"],
        "retrain": ["trainer.max_epochs=10", "+trainer.limit_train_batches=80"],
    },
    "gpu": {"common": [], "search": [], "retrain": []},
}
SEARCH_SEEDS, UNIFORM_SEEDS, RANDOM_SEEDS = (0, 1), (0, 1), (0, 1, 2)
SPACE = (2, 3, 4)  # the from-float protocol's default candidates, weights and activations
EDMIPS_FAMILY = "quant=edmips"  # the fine-tune's family, which takes 1-bit weights
# The allocations ptq.py measures on the float network: sensitivity in its own family (the
# default) and in the family the fine-tune trains (retrain.py's default, edmips), there also
# after each layer's weights re-fit (sensitivity.measure=refit), and the selectors learned
# alone, the weights frozen.
PTQ_ALLOCATIONS = {
    "sensitivity": ["arch=sensitivity"],
    "sensitivity_edmips": ["arch=sensitivity", EDMIPS_FAMILY],
    "sensitivity_refit": ["arch=sensitivity", EDMIPS_FAMILY, "sensitivity.measure=refit"],
    "calibration_search": ["arch=search"],
}
FROM_FLOAT = {
    "cpu": {
        "common": ["model=resnet20", "trainer=cpu"],
        "float": ["trainer.max_epochs=6"],
        "search": [
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=100",
            "search.warmup_epochs=1",
            "search.optimizer.lr=0.01",
        ],
        "finetune": [
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=100",
            "optimizer.lr=0.01",
        ],
    },
    "gpu": {
        "common": [],
        "float": [],
        "search": ["search.warmup_epochs=1", "search.optimizer.lr=0.01"],
        "finetune": ["trainer.max_epochs=10", "optimizer.lr=0.01"],
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--bits", type=float, nargs="+", default=[2])
    parser.add_argument("--start", choices=("scratch", "float"), default="scratch")
    parser.add_argument("--float-weights", type=Path, help="--start float: the float network")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--start float")
    parser.add_argument(
        "--wbits", type=int, nargs="+", default=list(SPACE), help="--start float: weight bits"
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cpu")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument(
        "--searched-only", action="store_true", help="skip the baselines (another run has them)"
    )
    parser.add_argument("overrides", nargs="*", help="extra search.py overrides")
    return parser.parse_intermixed_args()


def jobs(args: argparse.Namespace, out: Path) -> tuple[dict, dict]:
    """The searches, then the retrains: {name: (run dir, argv)}."""
    if len(args.bits) != 1 or not args.bits[0].is_integer():
        raise SystemExit(
            "error: --bits: one whole number from scratch (its uniform network is W<bits>A<bits>;"
            " several budgets, or a fraction, with --start float)"
        )
    bits = int(args.bits[0])
    p = PROTOCOLS[args.protocol]
    common = ["experiment=cifar10_resnet20", f"data.path={args.data}", *p["common"]]
    common += ["trainer.enable_progress_bar=false"]
    searches = {
        f"search-{s}": (
            out / "search" / str(s),
            ["search.py", *common, *p["search"], f"target_bits={bits}", f"seed={s}"]
            + args.overrides,
        )
        for s in SEARCH_SEEDS
    }
    kinds = (
        ("searched", SEARCH_SEEDS, lambda s: [f"arch={out}/search/{s}/found.json"]),
        (
            "uniform",
            UNIFORM_SEEDS,
            lambda s: ["arch=uniform", f"wbits={bits}", f"abits={bits}"],
        ),
        ("random", RANDOM_SEEDS, lambda s: ["arch=random", f"target_bits={bits}"]),
    )
    retrains = {
        f"retrain-{kind}-{s}": (
            out / "retrain" / f"{kind}-{s}",
            ["retrain.py", *common, *p["retrain"], *arch(s), f"seed={s}"],
        )
        for kind, seeds, arch in (kinds[:1] if args.searched_only else kinds)
        for s in seeds
    }
    return searches, retrains


def uniform_pairs(bits: float, wbits) -> list[tuple[int, int]]:
    """Every (w, a) of the space whose equivalent bits, sqrt(w * a), are within 5% of `bits`."""
    return [
        (w, a)
        for w, a in itertools.product(wbits, SPACE)
        if abs((w * a) ** 0.5 - bits) <= 0.05 * bits
    ]


def ptq_allocations(wbits) -> dict[str, list[str]]:
    """ptq.py's allocations that the space admits: max-abs weights (quant=ptq) take no 1-bit
    weights, so a space with them keeps only those measured in the fine-tune's family."""
    if min(wbits) >= 2:
        return PTQ_ALLOCATIONS
    return {kind: arch for kind, arch in PTQ_ALLOCATIONS.items() if EDMIPS_FAMILY in arch}


def float_jobs(args: argparse.Namespace, out: Path, weights: Path) -> tuple[dict, dict]:
    """From the float network: the allocations (searches and ptq.py's), then the fine-tunes."""
    p = FROM_FLOAT[args.protocol]
    space = [
        f"space.wbits=[{','.join(map(str, args.wbits))}]",
        f"space.abits=[{','.join(map(str, SPACE))}]",
    ]
    data = ["data=cifar10", f"data.path={args.data}"]
    common = ["experiment=cifar10_resnet20", *data, *p["common"], *space]
    common += ["trainer.enable_progress_bar=false"]
    ptq = ["ptq.py", "model=resnet20", *data, *space, f"model.weights={weights}"]
    ptq += ["integer_check_images=100"]  # only its allocation is used
    allocations, finetunes = {}, {}
    for bits, s in itertools.product(args.bits, args.seeds):
        b = f"{bits:g}"
        budget = [f"target_bits={b}", f"seed={s}"]
        allocations[f"search-{b}-{s}"] = (
            out / "search" / b / str(s),
            ["search.py", *common, *p["search"], f"model.weights={weights}", *budget]
            + args.overrides,
        )
        for kind, arch in ptq_allocations(args.wbits).items():
            allocations[f"ptq-{kind}-{b}-{s}"] = (
                out / "ptq" / f"{kind}-{b}-{s}",
                [*ptq, *arch, *budget],
            )
        kinds = {
            "searched": [f"arch={out}/search/{b}/{s}/found.json"],
            **{
                kind: [f"arch={out}/ptq/{kind}-{b}-{s}/arch.json"]
                for kind in ptq_allocations(args.wbits)
            },
            "random": ["arch=random", f"target_bits={b}"],
        }
        for w, a in uniform_pairs(bits, args.wbits):
            kinds[f"uniform_W{w}A{a}"] = ["arch=uniform", f"wbits={w}", f"abits={a}"]
        for kind, arch in kinds.items():
            finetunes[f"finetune-{kind}-{b}-{s}"] = (
                out / "finetune" / b / f"{kind}-{s}",
                ["retrain.py", *common, *p["finetune"], "init=float", f"model.weights={weights}"]
                + [*arch, f"seed={s}"],
            )
    return allocations, finetunes


def float_network(args: argparse.Namespace, out: Path, run) -> Path:
    """The given float network, or one trained by the protocol's float recipe."""
    if args.float_weights is not None:
        return args.float_weights.resolve()
    p = FROM_FLOAT[args.protocol]
    argv = ["retrain.py", "experiment=cifar10_resnet20", "data=cifar10", f"data.path={args.data}"]
    argv += [*p["common"], *p["float"], "arch=float", "trainer.enable_progress_bar=false"]
    run("float", out / "float", argv)
    return out / "float" / "weights.pt"


def float_table(out: Path) -> str:
    """Per budget and kind: equivalent bits, each seed's top-1 (all test images), mean, standard
    deviation and the lowest agreement; then each seed's paired differences."""
    runs = {}  # (bits, kind) -> {seed: metrics}
    for path in sorted((out / "finetune").glob("*/*/metrics.json")):
        kind, seed = path.parent.name.rsplit("-", 1)
        runs.setdefault((path.parent.parent.name, kind), {})[int(seed)] = json.loads(
            path.read_text()
        )
    lines = ["| budget | allocation | equivalent bits | top-1 per seed | mean | std | agreement |"]
    lines.append("|---|---|---|---|---|---|---|")
    for (bits, kind), by_seed in sorted(runs.items()):
        acc = [100 * m["test_acc"] for _, m in sorted(by_seed.items())]
        eq = sorted({round(m["equivalent_bits"], 2) for m in by_seed.values()})
        agree = min(
            min(m["prediction_agreement"], m.get("qdq_agreement") or 1) for m in by_seed.values()
        )
        std = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        lines.append(
            f"| {bits} | {kind} | {' / '.join(map(str, eq))} | {', '.join(f'{a:.2f}' for a in acc)}"
            f" | {statistics.mean(acc):.2f} | {std:.2f} | {agree:.4f} |"
        )
    lines += [
        "",
        "| budget | paired difference | seeds | per seed | mean |",
        "|---|---|---|---|---|",
    ]
    for bits in sorted({b for b, _ in runs}):
        acc = {
            k: {s: 100 * m["test_acc"] for s, m in v.items()}
            for (b, k), v in runs.items()
            if b == bits
        }
        uniform = [k for k in acc if k.startswith("uniform")]
        if uniform:  # the best uniform pair under each seed that all of them ran at
            seeds = set.intersection(*(set(acc[k]) for k in uniform))
            acc["best uniform"] = {s: max(acc[k][s] for k in uniform) for s in seeds}
        pairs = [("searched", "sensitivity"), ("searched", "random"), ("sensitivity", "random")]
        pairs += [("sensitivity_edmips", "random"), ("sensitivity_refit", "random")]
        pairs += [("searched", "sensitivity_edmips"), ("searched", "sensitivity_refit")]
        pairs += [("calibration_search", "sensitivity")]
        pairs += [("searched", "calibration_search"), ("searched", "best uniform")]
        rows = []
        for a, b in pairs:
            seeds = sorted(set(acc.get(a, ())) & set(acc.get(b, ())))  # each pair where both ran
            if seeds:
                rows.append((f"{a} - {b}", seeds, [acc[a][s] - acc[b][s] for s in seeds]))
        for name, seeds, diffs in rows:
            per_seed = ", ".join(f"{d:+.2f}" for d in diffs)
            mean = statistics.mean(diffs)
            lines.append(
                f"| {bits} | {name} | {', '.join(map(str, seeds))} | {per_seed} | {mean:+.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    out = args.out.resolve()
    if args.start == "scratch":
        first, then = jobs(args, out)  # --bits checked before anything is written
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

    def run(name: str, run_dir: Path, argv: list[str]) -> None:
        if run_dir.exists():  # a protocol run again goes on where it stopped
            print(f"{name}: {run_dir} exists, skipped", flush=True)
            return
        with open(out / "logs" / f"{name}.log", "w") as log:
            argv = [sys.executable, *argv, f"hydra.run.dir={run_dir}"]
            code = subprocess.call(argv, stdout=log, stderr=log, env=env)
        print(f"{name}: exit {code}", flush=True)

    if args.start == "float":
        weights = float_network(args, out, run)
        first, then = float_jobs(args, out, weights)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda kv: run(kv[0], *kv[1]), first.items()))
        list(pool.map(lambda kv: run(kv[0], *kv[1]), then.items()))
    if args.start == "float":
        table = float_table(out)
        (out / "table.md").write_text(table + "\n")
        print(table)
        print(f"table in {out / 'table.md'}")
        return 0
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "edmips",
            "report",
            str(out / "retrain"),
            "--out",
            str(out / "report"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
