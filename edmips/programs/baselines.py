"""The architectures a search must beat, built for a model: uniform, random and a seed's
fixed policy (edmips.nn.policy). retrain.py and ptq.py take them as `arch=`."""

from omegaconf import DictConfig

from edmips.cost import budget_spec
from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import input_space
from edmips.nn.policy import POLICIES
from edmips.programs.checks import Parsed
from edmips.records import arch as arch_file
from edmips.search.budgets import Budgets

BASELINES = ("uniform", "random", *POLICIES)


def baseline_arch(cfg: DictConfig, parsed: Parsed, model, costs, data: str, quantizers=None):
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
    budgets = Budgets.of(parsed.budgets, parsed.costs, costs, wspaces, aspaces, fixed)
    wbits, abits = budgets.random(cfg.seed)
    record = budget_record(parsed, budgets, wbits, abits)
    return as_arch(arch_file.space_of(cfg.space), wbits, abits, **record)


def budget_record(parsed: Parsed, budgets: Budgets, wbits, abits) -> dict:
    """What found.json records of the budgets an allocation was made within: the keys as given,
    one budget's target (in its cost's unit) and cost; several: each one's target and spend."""
    return {"budget": budget_spec.recorded_keys(parsed.budgets), **budgets.record(wbits, abits)}
