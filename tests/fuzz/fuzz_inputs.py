"""Fuzz round over the programs' inputs (issue 32): not a pytest module, run it by hand.

    python tests/fuzz/fuzz_inputs.py [--jobs 2] [--only SUBSTRING] [--fixtures DIR]

Each case is a command line, the files it prepares in a fresh temporary directory and what it
should do: `ok` (valid input: status 0 and its result written) or `refuse` (bad input: status
1 or an argparse usage error, one line `error: ...`, nothing written, nothing changed). Every
outcome is classified:

    ok         as expected
    traceback  a Python traceback was printed
    lost       a file that existed before changed or vanished
    silent     bad input accepted with status 0
    litter     refused, but it left files behind
    poor       refused without a one-line `error: ...` (or valid input refused)
    timeout    the command ran past its timeout

The fixtures (a short search, a float and a uniform retrain, made once with the README's
"make it short" settings) are cached in --fixtures.
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SHORT = "data.num_train=192 data.val_size=64 data.num_test=64 data.batch_size=64"
SEARCH = f"{PY} {ROOT}/search.py {SHORT} trainer.max_epochs=2 search.warmup_epochs=1"
RETRAIN = f"{PY} {ROOT}/retrain.py {SHORT} trainer.max_epochs=1"
PTQ = f"{PY} {ROOT}/ptq.py {SHORT} calibration.images=64"
PTQ_W = f"{PTQ} model.weights=fix/float/weights.pt"
TOOL = f"{PY} -m edmips"
FIXTURES = {  # name: the command that makes it (run in the fixtures folder)
    "search": f"{SEARCH} hydra.run.dir=search",
    "float": f"{RETRAIN} arch=float hydra.run.dir=float",
    "retrain": f"{RETRAIN} arch=uniform hydra.run.dir=retrain",
}


@dataclass
class Case:
    name: str
    command: str
    expect: str = "refuse"  # or "ok"
    files: dict = field(default_factory=dict)  # path: text, bytes or a function of the fixtures
    results: tuple = ()  # expect=ok: paths that must exist afterwards
    fixtures: bool = False  # a copy of the fixtures as fix/ (its files count as the user's)


# ---- files the cases prepare ---------------------------------------------------------------


def fixture_json(path, change):
    """The fixture file at `path` (under fix/) as JSON, changed by `change(data)`."""

    def make(fix: Path) -> str:
        data = json.loads((fix / path).read_text())
        change(data)
        return json.dumps(data)

    return make


def set_key(key, value):
    return lambda data: data.__setitem__(key, value)


def set_layer(key, value, index=0):
    return lambda data: data["layers"][index].__setitem__(key, value)


def set_history(key, value, epoch=-1, layer=0):
    def change(data):
        if isinstance(data[epoch][key], list):
            data[epoch][key][layer] = value
        else:
            data[epoch][key] = value

    return change


def latency_rows(fix: Path) -> list[dict]:
    layers = json.loads((fix / "search/found.json").read_text())["layers"]
    return [
        {"layer": layer["name"], "wbits": w, "abits": a, "latency_ms": 0.01 * w * a}
        for layer in layers
        for w in (1, 2, 3, 4)
        for a in (2, 3, 4)
    ]


def latency_csv(change=None):
    def make(fix: Path) -> str:
        rows = latency_rows(fix)
        if change:
            change(rows)
        lines = ["layer,wbits,abits,latency_ms"]
        lines += [f"{r['layer']},{r['wbits']},{r['abits']},{r['latency_ms']}" for r in rows]
        return "\n".join(lines) + "\n"

    return make


def latency_json(change=None):
    def make(fix: Path) -> str:
        rows = latency_rows(fix)
        if change:
            change(rows)
        return json.dumps(rows)

    return make


def first_row(key, value):
    return lambda rows: rows[0].__setitem__(key, value)


def weights(change):
    """The float fixture's weights.pt, changed by `change(state)`."""

    def make(fix: Path) -> bytes:
        import io

        import torch

        state = torch.load(fix / "float/weights.pt", weights_only=True)
        changed = change(state)  # a function may replace the state (by a list, say)
        state = changed if isinstance(changed, list) else state
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    return make


def first_tensor(change):
    def edit(state):
        name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
        state[name] = change(state[name])

    return edit


def metrics_run(change):
    """A retrain run dir (its metrics.json changed by `change`) for the report."""
    return {
        "runs/a/metrics.json": fixture_json("retrain/metrics.json", change),
        "runs/a/arch.json": lambda fix: (fix / "retrain/arch.json").read_text(),
    }


GARBAGE = bytes(range(256)) * 4


# ---- the cases -----------------------------------------------------------------------------


def config_cases() -> list[Case]:
    """Every numeric (and a few other) keys of conf/*.yaml, out of range or of a wrong type."""
    search = [
        "data.batch_size=0",
        "data.batch_size=-1",
        "data.batch_size=abc",
        "data.batch_size=1e9",
        "data.num_train=-5",
        "data.num_train=0",
        "data.num_test=0",
        "data.num_test=-3",
        "data.val_size=-1",
        "data.val_size=192",
        "data.noise=nan",
        "data.noise=-1",
        "data.noise=inf",
        "data.noise=abc",
        "data.image_size=0",
        "data.image_size=abc",
        "data.image_size=-32",
        "data.eval_batch_size=0",
        "data.eval_batch_size=-2",
        "data.augment=maybe",
        "data.on_device=2",
        "search.optimizer.lr=-0.1",
        "search.optimizer.lr=nan",
        "search.optimizer.lr=abc",
        "search.optimizer.momentum=-1",
        "search.optimizer.weight_decay=-1",
        "search.arch_optimizer.lr=inf",
        "search.arch_optimizer.momentum=nan",
        "mu=-1",
        "mu=nan",
        "mu=1e400",
        "mu=true",
        "target_bits=0",
        "target_bits=-2",
        "target_bits=nan",
        "target_bitops=abc",
        "target_bitops=-5",
        "search.trials=abc",
        "search.trials=-1",
        "search.sharpness=inf",
        "search.sharpness=nan",
        "search.warmup_epochs=-1",
        "search.warmup_epochs=0.5",
        "search.discretize=banana",
        "search.compile=banana",
        "search.shared_weights=maybe",
        "search.alternating=3",
        "trainer.max_epochs=2.5",
        "trainer.max_epochs=inf",
        "trainer.log_every_n_steps=0",
        "trainer.log_every_n_steps=-1",
        "trainer.devices=0",
        "scheduler=step scheduler.step_size=0",
        "scheduler=step scheduler.gamma=-1",
        "scheduler=step scheduler.gamma=nan",
        "scheduler.T_max=0",
        "budget.weight_size=-5KiB",
        "budget.weight_size=5furlongs",
        "budget.weight_size=0",
        "budget.weight_size=nanKiB",
        "budget.activation_memory=nan",
        "budget.bitops=-1e6",
        "budget.latency_ms=4",
        "fast=maybe",
        "seed=abc",
        "seed=1e3",
    ]
    retrain = [
        "arch=uniform optimizer.lr=-1",
        "arch=uniform optimizer.lr=nan",
        "arch=uniform optimizer.momentum=-0.5",
        "arch=uniform optimizer.weight_decay=inf",
        "arch=uniform bn_freeze_epoch=-1",
        "arch=uniform bn_freeze_epoch=abc",
        "arch=uniform integer_check_images=-3",
        "arch=uniform integer_check_images=nan",
        "arch=uniform compile=banana",
        "arch=uniform init=banana",
        "arch=uniform bn_fold=2",
        "arch=banana",
        "arch=random target_bits=nan",
        "arch=random target_bits=-1",
        "arch=random budget.weight_size=1B",
    ]
    ptq = [
        "arch=uniform calibration.images=0",
        "arch=uniform calibration.images=-64",
        "arch=uniform calibration.images=abc",
        "arch=sensitivity target_bits=3 sensitivity.images=0",
        "arch=sensitivity target_bits=nan",
        "arch=sensitivity target_bits=-3",
        "arch=uniform ptq.activation_clip=banana",
        "arch=uniform ptq.bias_correction=banana",
        "arch=uniform ptq.bit_allocation=banana",
        "arch=uniform ptq.bit_allocation=both",
        "arch=uniform wbits=9",
        "arch=uniform abits=0",
        "arch=uniform integer_check_images=0",
        "arch=uniform data.batch_size=0",
        "arch=uniform data.noise=nan",
        "arch=uniform calibration.stats=missing.pt",
        "arch=uniform seed=-5",
    ]
    cases = [Case(f"search {o}", f"{SEARCH} {o}") for o in search]
    cases += [Case(f"retrain {o}", f"{RETRAIN} {o}") for o in retrain]
    cases += [Case(f"ptq {o}", f"{PTQ_W} {o}", fixtures=True) for o in ptq]
    return cases


def file_cases() -> list[Case]:
    """Files read from outside: arch files, weights, latency tables, histories, metrics."""
    found = "fix/search/found.json"
    cases = [
        Case("retrain arch=missing.json", f"{RETRAIN} arch=missing.json"),
        Case("retrain arch=empty file", f"{RETRAIN} arch=a.json", files={"a.json": ""}),
        Case("retrain arch=binary garbage", f"{RETRAIN} arch=a.json", files={"a.json": GARBAGE}),
        Case("retrain arch=JSON list", f"{RETRAIN} arch=a.json", files={"a.json": "[1, 2]"}),
        Case("retrain arch=a folder", f"{RETRAIN} arch=fix/search", fixtures=True),
    ]
    arch_edits = {
        "wbits 9": set_layer("wbits", 9),
        "wbits '2'": set_layer("wbits", "2"),
        "abits -1": set_layer("abits", -1),
        "abits 2.5": set_layer("abits", 2.5),
        "layer name unknown": set_layer("name", "no.such.layer"),
        "no layers": set_key("layers", []),
        "layers missing": lambda d: d.pop("layers"),
        "a layer twice": lambda d: d["layers"].append(d["layers"][0]),
        "model unknown": set_key("model", "resnet_huge"),
        "model missing": lambda d: d.pop("model"),
        "schema 99": set_key("schema", 99),
        "data banana": set_key("data", "banana"),
        "equivalent_bits NaN": set_key("equivalent_bits", math.nan),
    }
    for what, change in arch_edits.items():
        cases.append(
            Case(
                f"retrain arch: {what}",
                f"{RETRAIN} arch=a.json",
                files={"a.json": fixture_json("search/found.json", change)},
                fixtures=True,
            )
        )
    weight_edits = {
        "extra key": lambda s: s.__setitem__("extra.weight", s[next(iter(s))]),
        "missing key": lambda s: s.pop(next(iter(s))),
        "wrong shape": first_tensor(lambda t: t[:1]),
        "inf": first_tensor(lambda t: t.fill_(math.inf)),
        "int64": first_tensor(lambda t: t.long()),
        "all zero conv": first_tensor(lambda t: t.zero_()),
        "a list": lambda s: list(s.values()),
    }
    for what, change in weight_edits.items():
        expect = "ok" if what in ("all zero conv",) else "refuse"
        cases.append(
            Case(
                f"ptq weights: {what}",
                f"{PTQ} arch=uniform model.weights=w.pt",
                expect=expect,
                files={"w.pt": weights(change)},
                fixtures=True,
                results=("out/metrics.json",),
            )
        )
    cases += [
        Case("ptq weights: missing", f"{PTQ} arch=uniform model.weights=missing.pt"),
        Case("ptq weights: empty", f"{PTQ} arch=uniform model.weights=w.pt", files={"w.pt": ""}),
        Case(
            "ptq weights: garbage",
            f"{PTQ} arch=uniform model.weights=w.pt",
            files={"w.pt": GARBAGE},
        ),
        Case("ptq weights: a folder", f"{PTQ} arch=uniform model.weights=fix", fixtures=True),
        Case(
            "ptq weights: JSON text",
            f"{PTQ} arch=uniform model.weights=w.pt",
            files={"w.pt": '{"a": 1}'},
        ),
        Case(
            "ptq calibration.stats garbage",
            f"{PTQ_W} arch=uniform calibration.stats=s.pt",
            files={"s.pt": GARBAGE},
            fixtures=True,
        ),
        Case(
            "ptq calibration.stats a weights file",
            f"{PTQ_W} arch=uniform calibration.stats=fix/float/weights.pt",
            fixtures=True,
        ),
        Case(
            "ptq arch=found.json of a search",
            f"{PTQ_W} arch={found}",
            fixtures=True,
            expect="ok",
            results=("out/metrics.json",),
        ),
    ]
    latency = f"{SEARCH} cost=latency_table budget.latency_ms=1 cost.path=t"
    table_cases = {
        "t.csv empty": "",
        "t.csv garbage": GARBAGE,
        "t.csv header only": "layer,wbits,abits,latency_ms\n",
        "t.csv no header": lambda fix: latency_csv()(fix).split("\n", 1)[1],
        "t.csv negative": latency_csv(first_row("latency_ms", -1)),
        "t.csv nan": latency_csv(first_row("latency_ms", "nan")),
        "t.csv inf": latency_csv(first_row("latency_ms", "inf")),
        "t.csv wbits abc": latency_csv(first_row("wbits", "abc")),
        "t.csv wbits 2.5": latency_csv(first_row("wbits", 2.5)),
        "t.csv a row twice": latency_csv(lambda rows: rows.append(dict(rows[0], latency_ms=9))),
        "t.csv all zero": latency_csv(lambda rows: [r.__setitem__("latency_ms", 0) for r in rows]),
        "t.json not a list": '{"layer": "x"}',
        "t.json a key missing": latency_json(lambda rows: rows[0].pop("abits")),
        "t.json latency a string": latency_json(first_row("latency_ms", "fast")),
        "t.json latency null": latency_json(first_row("latency_ms", None)),
        "t.json latency 1e400": lambda fix: latency_json()(fix).replace("0.02", "1e400", 1),
        "t.json wbits true": latency_json(first_row("wbits", True)),
    }
    for what, content in table_cases.items():
        name = what.split()[0]
        command = latency.replace("cost.path=t", f"cost.path={name}")
        cases.append(Case(f"latency {what}", command, files={name: content}, fixtures=True))
    cases.append(Case("latency table a folder", latency.replace("=t", "=fix"), fixtures=True))
    return cases


def tool_cases() -> list[Case]:
    """rediscretize, export and report: their inputs and --out."""
    red = f"{TOOL} rediscretize"
    run = "fix/search"

    def history(change):
        return {
            "h/history.json": fixture_json("search/history.json", change),
            "h/found.json": lambda fix: (fix / "search/found.json").read_text(),
        }

    cases = [
        Case(
            "rediscretize ok",
            f"{red} {run} --epoch 1 --out e.json",
            "ok",
            fixtures=True,
            results=("e.json",),
        ),
        Case("rediscretize missing run", f"{red} nowhere --epoch 1 --out e.json"),
        Case(
            "rediscretize a file as run",
            f"{red} {run}/found.json --epoch 1 --out e.json",
            fixtures=True,
        ),
        Case("rediscretize --epoch -1", f"{red} {run} --epoch -1 --out e.json", fixtures=True),
        Case("rediscretize --epoch 999", f"{red} {run} --epoch 999 --out e.json", fixtures=True),
        Case("rediscretize --epoch abc", f"{red} {run} --epoch abc --out e.json", fixtures=True),
        Case(
            "rediscretize --target-bits nan",
            f"{red} {run} --epoch 1 --discretize budget --target-bits nan --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize --target-bits -1",
            f"{red} {run} --epoch 1 --discretize budget --target-bits -1 --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize --target-bits inf",
            f"{red} {run} --epoch 1 --discretize budget --target-bits inf --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize budget without a target",
            f"{red} {run} --epoch 1 --discretize budget --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize --trials 0",
            f"{red} {run} --epoch 1 --discretize multinomial --trials 0 --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize --seed -1",
            f"{red} {run} --epoch 1 --discretize categorical --seed -1 --out e.json",
            fixtures=True,
        ),
        Case(
            "rediscretize --out an existing file",
            f"{red} {run} --epoch 1 --out e.json",
            files={"e.json": "mine"},
            fixtures=True,
        ),
        Case(
            "rediscretize --out through a file",
            f"{red} {run} --epoch 1 --out f/e.json",
            files={"f": "x"},
            fixtures=True,
        ),
        Case(
            "rediscretize --out a folder",
            f"{red} {run} --epoch 1 --out d",
            files={"d/mine": "x"},
            fixtures=True,
        ),
        Case(
            "rediscretize --out its own found.json",
            f"{red} {run} --epoch 1 --out {run}/found.json",
            fixtures=True,
        ),
        Case(
            "rediscretize history empty",
            f"{red} h --epoch 1 --out e.json",
            files={
                "h/history.json": "",
                "h/found.json": lambda f: (f / "search/found.json").read_text(),
            },
            fixtures=True,
        ),
        Case(
            "rediscretize history garbage",
            f"{red} h --epoch 1 --out e.json",
            files={
                "h/history.json": GARBAGE,
                "h/found.json": lambda f: (f / "search/found.json").read_text(),
            },
            fixtures=True,
        ),
        Case(
            "rediscretize history a dict",
            f"{red} h --epoch 1 --out e.json",
            files={
                "h/history.json": "{}",
                "h/found.json": lambda f: (f / "search/found.json").read_text(),
            },
            fixtures=True,
        ),
        Case(
            "rediscretize found.json missing",
            f"{red} h --epoch 1 --out e.json",
            files={"h/history.json": lambda f: (f / "search/history.json").read_text()},
            fixtures=True,
        ),
    ]
    history_edits = {
        "probs negative": set_history("probs_w", [1.5, -0.5, 0, 0]),
        "probs NaN": set_history("probs_w", [math.nan, 0.5, 0.25, 0.25]),
        "probs too short": set_history("probs_w", [1.0]),
        "probs strings": set_history("probs_w", ["a", "b", "c", "d"]),
        "a layer missing": lambda d: d[-1]["probs_w"].pop(),
        "epoch a string": set_history("epoch", "one"),
        "epochs out of order": lambda d: d[-1].__setitem__("epoch", 0),
    }
    for what, change in history_edits.items():
        cases.append(
            Case(
                f"rediscretize history {what}",
                f"{red} h --epoch 1 --out e.json",
                files=history(change),
                fixtures=True,
            )
        )

    exp = f"{TOOL} export"
    cases += [
        Case(
            "export ok",
            f"{exp} fix/retrain --out o",
            "ok",
            fixtures=True,
            results=("o/model.onnx",),
        ),
        Case("export missing run", f"{exp} nowhere --out o"),
        Case("export a search run", f"{exp} fix/search --out o", fixtures=True),
        Case("export a float run", f"{exp} fix/float --out o", fixtures=True),
        Case("export a garbage checkpoint", f"{exp} c.ckpt --out o", files={"c.ckpt": GARBAGE}),
        Case("export an empty checkpoint", f"{exp} c.ckpt --out o", files={"c.ckpt": ""}),
        Case(
            "export --out an existing file",
            f"{exp} fix/retrain --out o",
            files={"o": "mine"},
            fixtures=True,
        ),
        Case(
            "export --out through a file",
            f"{exp} fix/retrain --out f/o",
            files={"f": "x"},
            fixtures=True,
        ),
        Case(
            "export --out a folder of mine",
            f"{exp} fix/retrain --out o",
            files={"o/notes.txt": "mine"},
            fixtures=True,
        ),
        Case("export --out the run itself", f"{exp} fix/retrain --out fix/retrain", fixtures=True),
        Case(
            "export without --out twice",
            f"{exp} fix/retrain",
            fixtures=True,
            files={"fix/retrain/export/model.onnx": "mine"},
        ),
        Case(
            "export run with arch.json garbage",
            f"{exp} r --out o",
            files={
                "r/arch.json": GARBAGE,
                "r/checkpoints/last.ckpt": lambda f: (
                    f / "retrain/checkpoints/last.ckpt"
                ).read_bytes(),
            },
            fixtures=True,
        ),
    ]

    rep = f"{TOOL} report"
    report_edits = {
        "test_acc NaN": set_key("test_acc", math.nan),
        "test_acc 150": set_key("test_acc", 150),
        "test_acc a string": set_key("test_acc", "high"),
        "equivalent_bits -2": set_key("equivalent_bits", -2),
        "bitops inf": set_key("bitops", math.inf),
        "kind missing": lambda d: d.pop("kind"),
        "seed a string": set_key("seed", "one"),
        "seed -1": set_key("seed", -1),
        "weight_bits_total 0": set_key("weight_bits_total", 0),
        "prediction_agreement 2": set_key("prediction_agreement", 2.0),
        "uniform wbits 'x'": lambda d: d["uniform"].__setitem__("wbits", "x"),
    }
    cases += [
        Case("report ok", f"{rep} fix --out rep", "ok", fixtures=True, results=("rep/report.csv",)),
        Case("report missing folder", f"{rep} nowhere --out rep"),
        Case("report a folder without runs", f"{rep} empty --out rep", files={"empty/x.txt": "x"}),
        Case("report --out a file", f"{rep} fix --out rep", files={"rep": "mine"}, fixtures=True),
        Case(
            "report --out a folder of mine",
            f"{rep} fix --out rep",
            files={"rep/notes.txt": "mine"},
            fixtures=True,
        ),
        Case(
            "report --out through a file", f"{rep} fix --out f/rep", files={"f": "x"}, fixtures=True
        ),
        Case("report --x banana", f"{rep} fix --out rep --x banana", fixtures=True),
        Case(
            "report metrics garbage",
            f"{rep} runs --out rep",
            files={"runs/a/metrics.json": GARBAGE},
        ),
        Case("report metrics empty", f"{rep} runs --out rep", files={"runs/a/metrics.json": ""}),
        Case("report metrics a list", f"{rep} runs --out rep", files={"runs/a/metrics.json": "[]"}),
        Case(
            "report metrics.json a folder",
            f"{rep} runs --out rep",
            files={"runs/a/metrics.json/x": "x"},
        ),
    ]
    for what, change in report_edits.items():
        cases.append(
            Case(
                f"report metrics {what}",
                f"{rep} runs --out rep",
                files=metrics_run(change),
                fixtures=True,
            )
        )
    return cases


def run_dir_cases() -> list[Case]:
    """Run dirs reused, sweeps, resume into the wrong kind of run, paths through files."""
    return [
        Case("search ok", f"{SEARCH} hydra.run.dir=out", "ok", results=("out/found.json",)),
        Case(
            "retrain found.json ok",
            f"{RETRAIN} arch=fix/search/found.json hydra.run.dir=out",
            "ok",
            fixtures=True,
            results=("out/metrics.json",),
        ),
        Case(
            "ptq ok",
            f"{PTQ_W} arch=uniform hydra.run.dir=out",
            "ok",
            fixtures=True,
            results=("out/metrics.json",),
        ),
        Case("search into a finished search", f"{SEARCH} hydra.run.dir=fix/search", fixtures=True),
        Case(
            "retrain into a finished search",
            f"{RETRAIN} arch=uniform hydra.run.dir=fix/search",
            fixtures=True,
        ),
        Case(
            "ptq into a finished retrain",
            f"{PTQ_W} arch=uniform hydra.run.dir=fix/retrain",
            fixtures=True,
        ),
        Case(
            "search into a folder of mine",
            f"{SEARCH} hydra.run.dir=d",
            files={"d/notes.txt": "mine"},
            expect="ok",
            results=("d/found.json",),
        ),
        Case("search resume=a retrain run", f"{SEARCH} resume=fix/retrain", fixtures=True),
        Case(
            "retrain resume=a search run",
            f"{RETRAIN} arch=uniform resume=fix/search",
            fixtures=True,
        ),
        Case("retrain resume=missing", f"{RETRAIN} arch=uniform resume=nowhere"),
        Case(
            "retrain resume=a garbage file",
            f"{RETRAIN} arch=uniform resume=c.ckpt",
            files={"c.ckpt": GARBAGE},
        ),
        Case(
            "retrain resume=a finished float run",
            f"{RETRAIN} arch=uniform resume=fix/float",
            fixtures=True,
        ),
        Case(
            "search hydra.run.dir through a file", f"{SEARCH} hydra.run.dir=f/run", files={"f": "x"}
        ),
        Case(
            "retrain hydra.run.dir=a file",
            f"{RETRAIN} arch=uniform hydra.run.dir=f",
            files={"f": "mine"},
        ),
        Case(
            "ptq -m into another sweep",
            f"{PTQ_W} -m arch=uniform hydra.sweep.dir=sw",
            files={"sw/multirun.yaml": "mine", "sw/0/metrics.json": "{}"},
            fixtures=True,
        ),
        Case(
            "search -m sweep.dir a file",
            f"{SEARCH} -m mu=0.01 hydra.sweep.dir=f",
            files={"f": "mine"},
        ),
        Case("retrain logger=banana", f"{RETRAIN} arch=uniform logger=banana"),
        Case("retrain unknown key", f"{RETRAIN} arch=uniform wbit=3"),
        Case("retrain +unknown key", f"{RETRAIN} arch=uniform +wbit=3"),
        Case("search +search.bogus", f"{SEARCH} +search.bogus=1"),
    ]


GROUPS = {"config": config_cases, "files": file_cases, "tools": tool_cases, "runs": run_dir_cases}
CASES = [case for group in GROUPS.values() for case in group()]


# ---- running and classifying ---------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def prepare(case: Case, work: Path, fixtures: Path) -> None:
    if case.fixtures:
        shutil.copytree(fixtures, work / "fix", ignore=shutil.ignore_patterns("*.log"))
    for path, content in case.files.items():
        if callable(content):
            content = content(fixtures)
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def one_line_error(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error: " in line]
    return len(errors) == 1 and lines[-1] == errors[0]


def classify(case: Case, rc: int, out: str, err: str, before: dict, after: dict) -> str:
    if "Traceback (most recent call last)" in out + err:
        return "traceback"
    if any(after.get(path) != digest for path, digest in before.items()):
        return "lost"
    if case.expect == "ok":
        return "ok" if rc == 0 and all(p in after for p in case.results) else "poor"
    if rc == 0:
        return "silent"
    if rc not in (1, 2) or not one_line_error(err):
        return "poor"
    return "litter" if set(after) - set(before) else "ok"


def run(case: Case, fixtures: Path, timeout: float) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        prepare(case, work, fixtures)
        before = snapshot(work)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env.pop("HYDRA_FULL_ERROR", None)
        argv = shlex.split(case.command)
        hydra = "edmips" not in argv and "-m" not in argv  # a Hydra program's single run
        if hydra and "hydra.run.dir" not in case.command:
            argv.append("hydra.run.dir=out")
        try:
            done = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return "timeout", ""
        after = snapshot(work)
        verdict = classify(case, done.returncode, done.stdout, done.stderr, before, after)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"(status {done.returncode}, no stderr)"
        if verdict == "litter":
            detail += f"  [left: {', '.join(sorted(set(after) - set(before))[:3])}]"
        if verdict == "lost":
            changed = [p for p, d in before.items() if after.get(p) != d]
            detail += f"  [changed: {', '.join(changed[:3])}]"
        return verdict, detail


def make_fixtures(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, command in FIXTURES.items():
        if not (folder / name).is_dir():
            print(f"making fixture {name} ...", flush=True)
            subprocess.run(shlex.split(command), cwd=folder, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    parser.add_argument("--group", choices=GROUPS, help="run one group of cases")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "fuzz-fix")
    args = parser.parse_args()
    make_fixtures(args.fixtures)
    cases = GROUPS[args.group]() if args.group else CASES
    cases = [c for c in cases if args.only in c.name]
    width = max(len(c.name) for c in cases)
    outcomes = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for case, outcome in zip(
            cases, pool.map(lambda c: run(c, args.fixtures, args.timeout), cases)
        ):
            verdict, detail = outcome
            print(f"{verdict:9}  {case.name:{width}}  {detail[:150]}", flush=True)
            outcomes.append(outcome)
    counts = Counter(verdict for verdict, _ in outcomes)
    print(f"\n{len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if set(counts) == {"ok"} else 1


if __name__ == "__main__":
    sys.exit(main())
