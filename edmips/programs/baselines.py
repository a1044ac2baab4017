"""The architectures a search must beat, built for a model: uniform, random and a seed's
fixed policy (edmips.nn.policy). retrain.py and ptq.py take them as `arch=`."""

from omegaconf import DictConfig

from edmips.core import budgets
from edmips.cost import latency_table
from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import input_space
from edmips.nn.policy import POLICIES
from edmips.records import arch as arch_file
from edmips.search.joint import achieved, budgets_for, random_within

BASELINES = ("uniform", "random", *POLICIES)


def baseline_arch(cfg: DictConfig, model, costs, data: str, quantizers=None):
    """What a search must beat at the same cost: one bit-width everywhere, a random allocation
    from the search space within 1% of `target_bits` in the cost's unit, or of a budget.<key>
    (fixed by `seed`), or a seed's fixed policy (edmips.nn.policy)."""
    model_name = model.name
    aquants = [model.get_submodule(c.name).aquant for c in costs]
    # the weights outside `costs` (the fixed-bit first conv and classifier)
    fixed = fixed_weight_bits(model, [c.name for c in costs])

    def as_arch(space, wbits, abits, **meta) -> arch_file.Arch:
        return arch_file.build(
            model_name, space, costs, wbits, abits, None, None, quantizers,
            data=data, fixed_weight_bits=fixed, **meta,
        )  # fmt: skip

    if cfg.arch in POLICIES:
        bits = POLICIES[cfg.arch](model)
        wbits, abits = [bits[c.name][0] for c in costs], [bits[c.name][1] for c in costs]
        space = {"wbits": sorted(set(wbits)), "abits": sorted(set(abits))}
        return as_arch(space, wbits, abits)
    if cfg.arch == "uniform":  # a signed input is read at its shared 8 bits (input_space)
        wbits = [cfg.wbits] * len(costs)
        abits = [input_space(aquant, (cfg.abits,))[0] for aquant in aquants]
        space = {"wbits": [cfg.wbits], "abits": [cfg.abits]}
        return as_arch(space, wbits, abits)
    aspace = tuple(cfg.space.abits)
    aspaces = [input_space(aquant, aspace, cfg.space.get("sbits")) for aquant in aquants]
    wspaces = [tuple(cfg.space.wbits)] * len(costs)
    # target_bits or budget keys (checks.py): one within 1%, several each an upper bound
    labels, held = budgets_for(cfg, costs, wspaces, aspaces, fixed)
    wbits, abits = random_within(held, cfg.seed)
    record = budget_record(cfg, held, labels, wbits, abits)
    return as_arch(arch_file.space_of(cfg.space), wbits, abits, **record)


def budget_record(cfg: DictConfig, held, labels, wbits, abits) -> dict:
    """What found.json records of the budgets an allocation was made within: one budget's
    target (in its cost's unit) and cost; several: each one's target and spend (`budgets`)."""
    record = {"budget": budgets.record(cfg), "cost": held[0].cost.name}
    record |= latency_table.recorded([b.cost for b in held], held[0].layers, wbits, abits)
    if len(held) == 1:
        return record | {"target_bits": held[0].target}
    spent = achieved(held, labels, wbits, abits)
    return record | {"target_bits": cfg.target_bits, "budgets": spent}
