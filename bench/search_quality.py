"""Searched vs uniform vs random at one budget: every network retrained with the same recipe and
tested on the full CIFAR-10 test set, then the report (mean and std over seeds per kind).

    python bench/search_quality.py OUT [--bits 2] [--protocol cpu|gpu] [search overrides...]

`cpu` (default) is a reduced protocol that fits in under an hour on a 2-core CPU: ResNet-8,
searches of 8 epochs x 60 batches, retrains of 10 epochs x 80 batches (batch 128), two searched
seeds, two uniform seeds, three random allocations. `gpu` is the shipped recipe
(experiment=cifar10_resnet20, full epochs), the same networks.
"""

import argparse
import os
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--bits", type=int, default=2)
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
    p = PROTOCOLS[args.protocol]
    common = ["experiment=cifar10_resnet20", f"data.path={args.data}", *p["common"]]
    common += ["trainer.enable_progress_bar=false"]
    searches = {
        f"search-{s}": (
            out / "search" / str(s),
            ["search.py", *common, *p["search"], f"target_bits={args.bits}", f"seed={s}"]
            + args.overrides,
        )
        for s in SEARCH_SEEDS
    }
    kinds = (
        ("searched", SEARCH_SEEDS, lambda s: [f"arch={out}/search/{s}/found.json"]),
        (
            "uniform",
            UNIFORM_SEEDS,
            lambda s: ["arch=uniform", f"wbits={args.bits}", f"abits={args.bits}"],
        ),
        ("random", RANDOM_SEEDS, lambda s: ["arch=random", f"target_bits={args.bits}"]),
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


def main() -> int:
    args = parse_args()
    out = args.out.resolve()
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

    searches, retrains = jobs(args, out)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda kv: run(kv[0], *kv[1]), searches.items()))
        list(pool.map(lambda kv: run(kv[0], *kv[1]), retrains.items()))
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
