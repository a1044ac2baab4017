"""search(cfg): build, run and record one search. search.py is a thin Hydra wrapper over it."""

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as L
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from edmips.core import device_check, rundir
from edmips.cost import budget_spec, latency_table
from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import default_searched, to_search
from edmips.programs import checks
from edmips.programs.builders import (
    build_datamodule,
    build_model,
    build_trainer,
    compile_mode,
    fast_path,
    measure,
    on_gpu,
)
from edmips.records import arch as arch_file
from edmips.records import history as history_file
from edmips.report import write_search_figures
from edmips.search.budgets import Budgets
from edmips.search.module import SearchModule

log = logging.getLogger(__name__)


def build_search(cfg: DictConfig, parsed: checks.Parsed):
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    space = cfg.space
    names = default_searched(model, space.skip_first, space.skip_last)
    to_search(
        model, names, space.wbits, space.abits, cfg.search.shared_weights, parsed.family,
        space.sbits,
    )  # fmt: skip
    costs = measure(model, datamodule)
    fast = fast_path(cfg)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    searched_costs = [c for c in costs if c.name in names]
    module = SearchModule(
        model,
        costs,
        datamodule.num_classes,
        cfg.mu,
        optimizer=hydra.utils.instantiate(cfg.search.optimizer),
        arch_optimizer=hydra.utils.instantiate(cfg.search.arch_optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        alternating=cfg.search.alternating,
        warmup_epochs=cfg.search.warmup_epochs,
        sharpness=cfg.search.sharpness,
        channels_last=fast,
        compile=compile_mode(cfg.search.compile, cfg),
        cost=parsed.cost,
        budgets=held_budgets(parsed, model, searched_costs),
    )
    return datamodule, module


def held_budgets(parsed: checks.Parsed, model, costs) -> Budgets | None:
    """The budgets the search is held to over its layers `costs` and their candidates, checked
    before training; None without one (mu mode).
    Every searched layer's table is read here, budget or not: a measured table that lacks an
    entry the search could choose is refused before training, naming it."""
    layers = [model.get_submodule(c.name) for c in costs]
    wspaces, aspaces = [m.wbits for m in layers], [m.abits_space() for m in layers]
    tables = [parsed.cost.table(c, w, a) for c, w, a in zip(costs, wspaces, aspaces)]
    if not parsed.budgets:
        return None
    fixed = fixed_weight_bits(model, [c.name for c in costs])
    return Budgets.of(parsed.budgets, parsed.costs, costs, wspaces, aspaces, fixed, tables)


def current_arch(
    module: SearchModule, cfg: DictConfig, parsed: checks.Parsed, mode="argmax", **meta
) -> arch_file.Arch:
    """The architecture the selectors point at now, discretized by `mode`."""
    wbits, abits = module.choose(mode, cfg.search.trials, cfg.seed)
    pw, pa = module.probs()
    searched_costs = [c for c, _ in module.layers]
    if module.budgets is None:
        held = {"cost": module.cost.name, "target_bits": None}
        held |= latency_table.recorded([module.cost], searched_costs, wbits, abits)
    else:
        held = module.budgets.record(wbits, abits) | module.price.recorded()
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
        expected_bits=float(module.expected_cost().detach()),
        target_bitops=cfg.target_bitops,
        budget=budget_spec.recorded_keys(parsed.budgets),
        **held,
        shared_weights=cfg.search.shared_weights,
        world_size=module.trainer.world_size,
        **meta,
    )


class ArchSnapshot(Callback):
    """Writes the winner-take-all architecture as `last.json` after every epoch."""

    def __init__(self, cfg: DictConfig, parsed: checks.Parsed):
        self.cfg, self.parsed = cfg, parsed

    def on_train_epoch_end(self, trainer: L.Trainer, module: SearchModule) -> None:
        if trainer.is_global_zero:
            val_acc = trainer.callback_metrics.get("val/acc")
            arch_file.save(
                current_arch(
                    module,
                    self.cfg,
                    self.parsed,
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
    parsed = checks.check_search(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build_search(cfg, parsed)
    checks.check_data(cfg, datamodule)
    # on a GPU, what runs there
    paths = device_check.check_paths(module, datamodule, on_gpu(cfg), fast_path(cfg))
    trainer = build_trainer(cfg, "search", callbacks=[ArchSnapshot(cfg, parsed)])
    with run.accepted(module):
        validation = run.fit(trainer, module, datamodule)
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        metrics = {
            "val_acc": validation.get("val/acc"),
            "test_acc": test["test/acc"],
            "test_acc_top5": test["test/acc5"],
        }
        metrics["wall_time_s"] = time.perf_counter() - start
        mode = "budget" if module.budgets is not None else cfg.search.discretize
        found = current_arch(module, cfg, parsed, mode, **metrics, **paths.record())
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
