"""search(cfg): build, run and record one search. search.py is a thin Hydra wrapper over it."""

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as L
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from edmips.core import budgets, checks, device_check, rundir
from edmips.core.builders import (
    build_cost,
    build_datamodule,
    build_model,
    build_trainer,
    compile_mode,
    fast_path,
    measure,
)
from edmips.cost import latency_table
from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import default_searched, to_search
from edmips.quant import registry
from edmips.records import arch as arch_file
from edmips.records import history as history_file
from edmips.report import write_search_figures
from edmips.search.budget import Budget, check_reachable
from edmips.search.discretize import MODES
from edmips.search.joint import JointPrice, budgets_for
from edmips.search.module import SearchModule

log = logging.getLogger(__name__)


def build_search(cfg: DictConfig):
    if cfg.search.discretize not in MODES:
        raise ValueError(
            f"unknown discretization {cfg.search.discretize!r}: choose from {', '.join(MODES)}"
        )
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    space = cfg.space
    names = default_searched(model, space.skip_first, space.skip_last)
    family = registry.family(cfg)
    to_search(
        model, names, space.wbits, space.abits, cfg.search.shared_weights, family, space.sbits
    )
    costs = measure(model, datamodule)
    fast = fast_path(cfg)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    cost = build_cost(cfg)
    searched_costs = [c for c in costs if c.name in names]
    fixed = fixed_weight_bits(model, names)
    target = budget_target(cfg, model, searched_costs, cost, fixed)
    joint = joint_budgets(cfg, model, searched_costs, fixed)
    module = SearchModule(
        model,
        costs,
        datamodule.num_classes,
        cfg.mu,
        optimizer=hydra.utils.instantiate(cfg.search.optimizer),
        arch_optimizer=hydra.utils.instantiate(cfg.search.arch_optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        alternating=cfg.search.alternating,
        target_bits=target,
        warmup_epochs=cfg.search.warmup_epochs,
        sharpness=cfg.search.sharpness,
        channels_last=fast,
        compile=compile_mode(cfg.search.compile, cfg),
        cost=cost,
        budgets=joint,
    )
    return datamodule, module


def budget_target(cfg: DictConfig, model, costs, cost=None, fixed=0) -> float | None:
    """The target of budget mode in the cost's stated unit (from target_bits, target_bitops or
    a budget.<key>: edmips.core.budgets; `fixed`: the weight bits outside `costs`), checked
    against the search network's candidates.
    Every searched layer's table is read here, budget or not: a measured table that lacks an
    entry the search could choose is refused before training, naming it."""
    if cfg.mu < 0:
        raise ValueError(f"mu must be >= 0, got {cfg.mu}")
    if cfg.target_bits is not None and cfg.target_bitops is not None:
        raise ValueError("set target_bits or target_bitops, not both")
    cost = cost or build_cost(cfg)
    wspaces, aspaces = _candidates(model, costs)
    tables = [cost.table(c, w, a) for c, w, a in zip(costs, wspaces, aspaces)]
    if budgets.several(cfg):
        return None  # joint_budgets
    target = budgets.stated_target(cfg, cost, costs, fixed)
    if target is None:
        return None
    with budgets.named(cfg):
        check_reachable(Budget(cost, costs, wspaces, aspaces, target), tables)
    return target


def _candidates(model, costs) -> tuple[list, list]:
    """The search network's weight and activation candidates of each layer in `costs`."""
    layers = [model.get_submodule(c.name) for c in costs]
    return [m.wbits for m in layers], [m.abits_space() for m in layers]


def joint_budgets(cfg: DictConfig, model, costs, fixed=0) -> list | None:
    """Several budgets at once, (key=value, cost model, target in its unit) each, checked
    jointly against the search network's candidates before training; None unless several."""
    if not budgets.several(cfg):
        return None
    labels, held = budgets_for(cfg, costs, *_candidates(model, costs), fixed)
    return [(label, b.cost, b.target) for label, b in zip(labels, held)]


def current_arch(module: SearchModule, cfg: DictConfig, mode="argmax", **meta) -> arch_file.Arch:
    """The architecture the selectors point at now, discretized by `mode`."""
    wbits, abits = module.choose(mode, cfg.search.trials, cfg.seed)
    joint = isinstance(module.budget, JointPrice)
    pw, pa = module.probs()
    searched_costs = [c for c, _ in module.layers]
    return arch_file.build(
        cfg.model.name,
        arch_file.space_of(cfg.space),
        searched_costs,
        wbits,
        abits,
        [p.tolist() for p in pw],
        [p.tolist() for p in pa],
        [(m.wquant, m.aquant) for _, m in module.layers],
        mu=cfg.mu,
        fixed_weight_bits=fixed_weight_bits(module.model, [c.name for c in searched_costs]),
        final_mu=float(module.mu),
        data=module.trainer.datamodule.name,
        discretization=mode,
        expected_bits=float(module.expected_bits().detach()),
        target_bits=cfg.target_bits if joint else getattr(module.budget, "target", None),
        target_bitops=cfg.target_bitops,
        budget=budgets.record(cfg),
        cost=module.cost.name,
        **latency_table.recorded(_held_costs(module), searched_costs, wbits, abits),
        shared_weights=cfg.search.shared_weights,
        world_size=module.trainer.world_size,
        **(module.budget.record(wbits, abits) if joint else {}),
        **meta,
    )


def _held_costs(module: SearchModule) -> list:
    """The costs the search was held to: its cost, and each of several budgets'."""
    held = module.budget.budget if isinstance(module.budget, JointPrice) else []
    return [module.cost, *(b.cost for b in held)]


class ArchSnapshot(Callback):
    """Writes the winner-take-all architecture as `last.json` after every epoch."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def on_train_epoch_end(self, trainer: L.Trainer, module: SearchModule) -> None:
        if trainer.is_global_zero:
            val_acc = trainer.callback_metrics.get("val/acc")
            arch_file.save(
                current_arch(
                    module,
                    self.cfg,
                    epoch=trainer.current_epoch + 1,  # epochs trained, as in history.json
                    val_acc=None if val_acc is None else float(val_acc),
                ),
                Path(self.cfg.output_dir) / "last.json",
            )


def search(cfg: DictConfig) -> dict:
    """Run one search; returns its metrics and writes found.json into cfg.output_dir.
    `resume=<run dir or checkpoint>` continues a run, in its directory, with its configuration."""
    start = time.perf_counter()
    run = rundir.start(cfg, "search")
    cfg = run.cfg
    checks.check_search(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build_search(cfg)
    checks.check_data(cfg, datamodule)
    paths = device_check.check_paths(cfg, module, datamodule)  # on a GPU, what runs there
    trainer = build_trainer(cfg, callbacks=[ArchSnapshot(cfg)])
    with run.accepted(module):
        validation = run.fit(trainer, module, datamodule)
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        metrics = {
            "val_acc": validation.get("val/acc"),
            "test_acc": test["test/acc"],
            "test_acc_top5": test["test/acc5"],
        }
        metrics["wall_time_s"] = time.perf_counter() - start
        mode = "budget" if module.budget is not None else cfg.search.discretize
        found = current_arch(module, cfg, mode, **metrics, **paths.record())
        if trainer.is_global_zero:
            out = Path(cfg.output_dir)
            history_file.save(module.history, out / "history.json")
            write_search_figures(out, found, module.history)
            path = run.finish(lambda: arch_file.save(found, out / "found.json"))
            log.info(
                "%s: %.3f equivalent bits, val acc %.4f",
                path,
                found.equivalent_bits,
                metrics["val_acc"] or float("nan"),
            )
    return {
        **metrics,
        "equivalent_bits": found.equivalent_bits,
        "bitops": found.bitops,
        "arch": found,
        "module": module,
    }
