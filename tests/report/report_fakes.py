"""Fake search and retrain run dirs, written in the formats search.py and retrain.py use."""

import json
from pathlib import Path

from edmips.cost.layers import LayerCost
from edmips.records import arch

FLOPS = [2_000_000, 2_000_000, 1_000_000, 1_000_000, 500_000]
COSTS = [
    LayerCost(f"layer{i // 2 + 1}.{i % 2}.conv{i % 2 + 1}", "conv", f, f // 100, 100, ())
    for i, f in enumerate(FLOPS)
]
COSTS.append(LayerCost("layer3.0.downsample", "conv", 60_000, 600, 100, ()))
SPACE = {"wbits": [1, 2, 3, 4], "abits": [2, 3, 4]}


def history(epochs: int, n_layers: int = len(COSTS)) -> list[dict]:
    """Selectors moving away from uniform, each layer towards its own winner; mu rising."""
    out = []
    for e in range(epochs):
        t = e / max(1, epochs - 1)
        probs_w = [_towards(4, layer % 4, t) for layer in range(n_layers)]
        probs_a = [_towards(3, (layer + 1) % 3, t) for layer in range(n_layers)]
        out.append(
            {
                "epoch": e,
                "mu": 0.01 + 0.002 * e,
                "expected_bits": 3.0 - t,
                "discrete_bits": 3.2 - 1.1 * t,
                "val_acc": 0.3 + 0.05 * e,
                "probs_w": probs_w,
                "probs_a": probs_a,
            }
        )
    return out


def _towards(n: int, winner: int, t: float) -> list[float]:
    """n probabilities at t=0 uniform, at t=1 mostly on `winner`, the others apart."""
    raw = [1.0 + t * (6.0 if k == winner else k - n / 2) for k in range(n)]
    raw = [max(r, 0.05) for r in raw]
    return [r / sum(raw) for r in raw]


def search_arch(wbits, abits, **meta) -> arch.Arch:
    n = len(COSTS)
    space = {k: sorted({*SPACE[k], *bits}) for k, bits in (("wbits", wbits), ("abits", abits))}
    return arch.build(
        "resnet8",
        space,
        COSTS,
        wbits,
        abits,
        [[0.25] * 4] * n,
        [[1 / 3] * 3] * n,
        data="synthetic",
        **meta,
    )


def make_search_run(run_dir: Path, wbits, abits, epochs=5, **meta) -> arch.Arch:
    a = search_arch(wbits, abits, **meta)
    arch.save(a, run_dir / "found.json")
    arch.save(a, run_dir / "last.json")  # the per-epoch snapshot: not a run of its own
    if epochs is not None:
        (run_dir / "history.json").write_text(json.dumps(history(epochs)))
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("model:\n  name: resnet8\n")
    return a


def make_retrain_run(run_dir: Path, wbits, abits, uniform=None, arch_meta=None, **metrics) -> dict:
    """A retrain run dir: its arch.json (with `arch_meta`: what the arch file recorded of the
    allocation that made it, its kind and cost) and metrics.json (`metrics` over the defaults)."""
    arch_meta = arch_meta or {}
    if uniform:
        a = arch.uniform("resnet8", COSTS, uniform[0], uniform[1], data="synthetic", **arch_meta)
    else:
        a = search_arch(wbits, abits, **arch_meta)
    arch.save(a, run_dir / "arch.json")
    m = {
        "model": "resnet8",
        "data": "synthetic",
        "arch": "uniform" if uniform else "multirun/search/0/found.json",
        "uniform": {"wbits": uniform[0], "abits": uniform[1]} if uniform else None,
        "target_bits": None,
        "mu": None,
        "equivalent_bits": a.equivalent_bits,
        "bitops": a.bitops,
        "weight_bits_total": a.weight_bits_total,
        "activation_bits_total": a.activation_bits_total,
        "micronet_score": a.micronet_score,
        "val_acc": 0.5,
        "test_acc": 0.5,
        "test_acc_integer": 0.49,
        "prediction_agreement": 0.99,
        "wall_time_s": 12.5,
        **metrics,
    }
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return m
