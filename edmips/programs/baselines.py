"""The architectures a search must beat, built for a model: uniform, random and a seed's
fixed policy (edmips.nn.policy). retrain.py and ptq.py take them as `arch=`."""

from omegaconf import DictConfig

from edmips.core import budgets
from edmips.core.builders import build_cost
from edmips.nn import input_space
from edmips.nn.policy import POLICIES
from edmips.records import arch as arch_file
from edmips.search.budget import Budget, check_reachable, random_allocation
from edmips.search.joint import achieved, check_jointly_reachable, joint_random

BASELINES = ("uniform", "random", *POLICIES)


def baseline_arch(cfg: DictConfig, model, costs, data: str, quantizers=None):
    """What a search must beat at the same cost: one bit-width everywhere, a random allocation
    from the search space within 1% of `target_bits` in the cost's unit, or of a budget.<key>
    (fixed by `seed`), or a seed's fixed policy (edmips.nn.policy)."""
    model_name = model.name
    aquants = [model.get_submodule(c.name).aquant for c in costs]
    if cfg.arch in POLICIES:
        bits = POLICIES[cfg.arch](model)
        wbits, abits = [bits[c.name][0] for c in costs], [bits[c.name][1] for c in costs]
        space = {"wbits": sorted(set(wbits)), "abits": sorted(set(abits))}
        return arch_file.build(
            model_name, space, costs, wbits, abits, None, None, quantizers, data=data
        )
    if cfg.arch == "uniform":  # a signed input is read at its shared 8 bits (input_space)
        wbits = [cfg.wbits] * len(costs)
        abits = [input_space(aquant, (cfg.abits,))[0] for aquant in aquants]
        space = {"wbits": [cfg.wbits], "abits": [cfg.abits]}
        return arch_file.build(
            model_name, space, costs, wbits, abits, None, None, quantizers, data=data
        )
    wspace, aspace = tuple(cfg.space.wbits), tuple(cfg.space.abits)
    cost = build_cost(cfg)
    aspaces = [input_space(aquant, aspace, cfg.space.get("sbits")) for aquant in aquants]
    wspaces, extra = [wspace] * len(costs), {}
    if budgets.several(cfg):  # each an upper bound, met together (edmips/search/joint.py)
        labels, costs_, targets = zip(*budgets.targets(cfg, costs))
        joint = [Budget(c, costs, wspaces, aspaces, t) for c, t in zip(costs_, targets)]
        check_jointly_reachable(joint, list(labels))
        wbits, abits = joint_random(joint, cfg.seed)
        target = cfg.target_bits
        extra["budgets"] = achieved(joint, list(labels), wbits, abits)
    else:
        target = budgets.stated_target(cfg, cost, costs)  # target_bits or a budget: checks.py
        budget = Budget(cost, costs, wspaces, aspaces, target)
        with budgets.named(cfg):
            check_reachable(budget)
        wbits, abits = random_allocation(budget, cfg.seed)
    space = arch_file.space_of(cfg.space)
    return arch_file.build(
        model_name,
        space,
        costs,
        wbits,
        abits,
        None,
        None,
        quantizers,
        data=data,
        target_bits=target,
        budget=budgets.record(cfg),
        cost=cost.name,
        **extra,
    )
