"""The allocations ptq.py measures on the float network itself.

arch=sensitivity: the allocation that loses least within a budget, from each layer's measured
loss increase at each (w, a) of the space (edmips.ptq.sensitivity), every other layer at 8 bits.
The budgets' dynamic program (edmips.search.budgets) maximises minus the summed increases within
1% of `target_bits` in the cost's unit, or of a budget.<key>, or within several budgets at once:
the allocation a differentiable search must beat without training anything.

arch=search: the search's selectors learned alone on training images, the weights frozen
(edmips.search.post_training), and the most probable allocation within the budget."""

import copy
import logging
from dataclasses import asdict

import torch
from omegaconf import DictConfig

from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import default_searched, input_space, to_fixed, to_search
from edmips.nn.convert import quantizer_names, reads_signed
from edmips.programs.baselines import budget_record
from edmips.programs.builders import build_model, measure
from edmips.programs.checks import Parsed
from edmips.ptq import sensitivity
from edmips.ptq.stats import batches
from edmips.records import arch as arch_file
from edmips.search import post_training
from edmips.search.budgets import Budgets

log = logging.getLogger(__name__)

KIND = "sensitivity"
SEARCH = "search"
MEASURED = (KIND, SEARCH)  # the archs whose allocation ptq.py measures
SEARCH_KIND = "calibration_search"  # arch=search's allocation, as arch.json and reports name it


def model_at_8_bits(cfg: DictConfig, parsed: Parsed, datamodule):
    """The float network with every searchable layer at 8 bits, its layers' costs and the
    budgets the allocation is held to, checked here, before anything is computed. With a
    signed space, each layer that reads a signed tensor has an input quantizer of its own, at
    8 bits, for calibration to gather what it reads (the measurement reads the shared tensor
    as it is at 8 bits)."""
    model = build_model(cfg, datamodule)
    names = default_searched(model, cfg.space.skip_first, cfg.space.skip_last)
    costs = [c for c in measure(model, datamodule) if c.name in names]
    budgets = held_budgets(cfg, parsed, model, costs)
    bits = sensitivity.REFERENCE_BITS
    to_fixed(model, {c.name: (bits, bits) for c in costs}, parsed.family)
    sbits = cfg.space.get("sbits")
    if sbits and min(sbits) < bits:
        signed = [n for n in names if reads_signed(model.get_submodule(n).aquant)]
        to_fixed(model, {n: (bits, min(sbits)) for n in signed}, parsed.family)
        for n in signed:
            model.get_submodule(n).input_quant.bits = bits
    return model, costs, budgets


def activation_spaces(cfg: DictConfig, model, names) -> list[tuple[int, ...]]:
    """Each layer's activation candidates (edmips.nn.input_space): a signed input's are the
    signed space, or its shared 8 bits without one."""
    aspace, sbits = tuple(cfg.space.abits), cfg.space.get("sbits")
    return [input_space(model.get_submodule(n).aquant, aspace, sbits) for n in names]


def held_budgets(cfg: DictConfig, parsed: Parsed, model, costs) -> Budgets:
    """The budgets the allocation is held to, checked against the space."""
    wspaces = [tuple(cfg.space.wbits)] * len(costs)
    aspaces = activation_spaces(cfg, model, [c.name for c in costs])
    fixed = fixed_weight_bits(model, [c.name for c in costs])
    return Budgets.of(parsed.budgets, parsed.costs, costs, wspaces, aspaces, fixed)


def allocate(
    cfg, parsed, budgets, model, costs, images, reference, stats, clip, data: str
) -> arch_file.Arch:
    """Measure every layer's candidates on `images` (the float network's logits `reference`)
    as sensitivity.measure says and pick the allocation; `model` is left as it came (8 bits,
    clips finished)."""
    wspace, aspace = tuple(cfg.space.wbits), tuple(cfg.space.abits)
    names = [c.name for c in costs]
    aspaces = activation_spaces(cfg, model, names)
    refit = cfg.sensitivity.measure == sensitivity.REFIT
    tables, base = sensitivity.measure(
        model, names, wspace, aspaces, images, reference, stats, clip, refit
    )
    wbits, abits = budgets.best([-t for t in tables])
    worst = max(range(len(names)), key=lambda k: tables[k].max())
    log.info(
        "sensitivity: %d layers x %d candidates on %d images (KL at 8 bits %.3g); most "
        "sensitive %s (%+.3g at its lowest bits)",
        len(names),
        len(wspace) * len(aspace),
        len(images),
        base,
        names[worst],
        tables[worst].max(),
    )
    return _allocation(
        cfg,
        parsed,
        model,
        costs,
        budgets,
        wbits,
        abits,
        data,
        kind=KIND,
        sensitivity_loss=sensitivity.MEASURES[cfg.sensitivity.measure],
        # the quantizers the loss was measured under: those a fine-tune of the allocation
        # will train with make it worth having there (quant=edmips for retrain.py's default)
        sensitivity_quant=asdict(parsed.family),
        sensitivity_images=len(images),
        loss_at_8_bits=base,
        loss_increase={n: t.tolist() for n, t in zip(names, tables)},
    )


def allocate_by_search(cfg, parsed, budgets, model, costs, images, reference, stats, clip, data):
    """The selectors of a search network made from `model` learned on `images` (the float
    network's logits `reference`) within the budget, and the most probable allocation in it;
    `model` is left as it came (8 bits, clips finished)."""
    names = [c.name for c in costs]
    own = {id(m): n for n, m in model.named_modules()}
    inputs = [own.get(id(model.get_submodule(n).input_quant)) for n in names]
    network = to_search(copy.deepcopy(model), names, cfg.space.wbits, cfg.space.abits)
    layers = [network.get_submodule(n) for n in names]
    cache = sensitivity.ClipCache(stats, clip)  # each candidate's clip, as its bits calibrate it
    for name, layer in zip(inputs, layers):
        for q in layer.input_quants or ():
            cache.set_bits(name, q, q.bits)
    settings = cfg.search
    losses, final_price = post_training.learn_selectors(
        network, layers, budgets.price(), images, reference, settings.steps, settings.lr,
        settings.sharpness, settings.batch_size, cfg.seed,
    )  # fmt: skip
    wbits, abits = post_training.allocation(layers, budgets)
    log.info(
        "search: %d layers, %d steps on %d images; KL to float %.3g at the start, %.3g at the end",
        len(names),
        len(losses),
        len(images),
        losses[0],
        losses[-1],
    )
    return _allocation(
        cfg,
        parsed,
        model,
        costs,
        budgets,
        wbits,
        abits,
        data,
        probs_w=[m.probs_w().tolist() for m in layers],
        probs_a=[m.probs_a().tolist() for m in layers],
        kind=SEARCH_KIND,
        discretization="budget",
        search_steps=len(losses),
        search_images=len(images),
        loss_at_start=losses[0],
        loss_at_end=losses[-1],
        final_mu=final_price,
    )


def _allocation(
    cfg, parsed, model, costs, budgets, wbits, abits, data, probs_w=None, probs_a=None, **meta
):
    """The allocation's arch.json: its layers at their bits, with the quantizers `model` gives
    them, and the budgets it was made within."""
    names = [c.name for c in costs]
    return arch_file.build(
        model.name,
        arch_file.space_of(cfg.space),
        costs,
        wbits,
        abits,
        probs_w,
        probs_a,
        quantizer_names(model, names, parsed.family),
        data=data,
        fixed_weight_bits=fixed_weight_bits(model, names),
        **budget_record(parsed, budgets, wbits, abits),
        **meta,
    )


def logits(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return sensitivity.outputs(model, images, batch_size)


def drawn_images(loader, images: int) -> list[torch.Tensor]:
    """The calibration images as batches, drawn once: calibration and measurement see the
    same ones."""
    return list(batches(loader, images))
