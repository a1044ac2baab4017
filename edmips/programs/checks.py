"""The configuration values a run depends on, checked before anything is built or trained, and
parsed once into what the layers below take (Parsed): nothing under edmips/programs reads a
config but the run directory, which keeps it for checkpoints and resume.

The config stays open (recipes may add keys); these checks cover the values the code reads,
so a wrong type or range is one line naming the key, never a traceback mid-run.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from edmips.cost import budget_spec
from edmips.cost import model as cost_models
from edmips.cost.budget_spec import BudgetSpec
from edmips.models import list_models
from edmips.nn.layers import INPUT_BITS
from edmips.nn.policy import POLICIES
from edmips.ptq import bias_correction, sensitivity
from edmips.ptq.clipping import method as clip_method
from edmips.ptq.rounding import RECONSTRUCTIONS, ROUNDINGS, Rounding, adaround_settings
from edmips.quant import registry
from edmips.quant.clipped import ClippedQuant
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.registry import get
from edmips.records.files import check_folder
from edmips.search.discretize import MODES


class ConfigError(ValueError):
    """A configuration value of the wrong type or outside its range."""


@dataclass(frozen=True)
class Parsed:
    """What the checks parsed, for a program to use rather than read the config again: the
    quantizer family, the budgets (target_bits / target_bitops first, then budget.<key>s) and
    every cost they count, configured once from the cost group (a latency table: its file)."""

    family: registry.Family
    budgets: tuple[BudgetSpec, ...]
    costs: Mapping[str, cost_models.CostModel]
    cost_name: str  # the cost the run counts: the primary budget's, else the cost group's
    rounding: Rounding | None = None  # ptq.py's

    @property
    def cost(self) -> cost_models.CostModel:
        return self.costs[self.cost_name]


def check_search(cfg: DictConfig) -> Parsed:
    budgets, costs = _check_common(cfg)
    _number(cfg, "mu", minimum=0)
    _number(cfg, "target_bits", minimum=0, optional=True)
    _number(cfg, "target_bitops", minimum=0, optional=True)
    _number(cfg, "search.sharpness", minimum=1)
    _number(cfg, "search.warmup_epochs", minimum=0, integer=True)
    if cfg.search.warmup_epochs >= cfg.trainer.max_epochs:
        raise ConfigError(
            f"search.warmup_epochs={cfg.search.warmup_epochs} leaves the selectors no epoch to "
            f"train in (trainer.max_epochs={cfg.trainer.max_epochs})"
        )
    _number(cfg, "search.trials", minimum=1, integer=True)
    if cfg.search.discretize not in MODES:
        raise ConfigError(
            f"unknown discretization {cfg.search.discretize!r}: choose from {', '.join(MODES)}"
        )
    for key in ("search.shared_weights", "search.alternating"):
        _flag(cfg, key)
    family = _family(cfg)
    for kind, supported in (("wbits", family.weight_bits), ("abits", family.activation_bits)):
        _bit_list(cfg, f"space.{kind}", list(supported))
    _signed_space(cfg, family)
    return _parsed(cfg, family, budgets, costs)


def _parsed(cfg: DictConfig, family, budgets, costs, rounding=None) -> Parsed:
    counted = budget_spec.counted_cost(budgets, cfg.cost.name)
    return Parsed(family, budgets, costs, counted, rounding)


def _signed_space(cfg: DictConfig, family) -> None:
    """space.sbits: null, or bits of the family's signed quantizer up to the 8 bits of the
    tensor a signed input requantizes."""
    if OmegaConf.select(cfg, "space.sbits") is not None:
        supported = [b for b in get(family.signed).supported_bits if b <= INPUT_BITS]
        _bit_list(cfg, "space.sbits", supported)


INITS = ("scratch", "search", "float")  # where a retrain's weights start
FLOAT = "float"  # arch=float: the float network, every layer and quantizer at 32 bits
SENSITIVITY = "sensitivity"  # ptq.py: the allocation from each layer's measured loss increase
SEARCH = "search"  # ptq.py: the search's selectors learned alone, the weights frozen
MAX_SEED = 2**32 - 1  # numpy's generators take seeds 0 .. 2^32 - 1
# conf/ptq.yaml's settings, accepted wherever they do not apply (its refinements under a family
# without the quantizers they refine, sensitivity.images beside fewer calibration images): a
# value set otherwise there would be recorded but never applied
PTQ_DEFAULTS = {
    "ptq.activation_clip": "aciq_mix",
    "ptq.bias_correction": "mean",
    "ptq.reconstruction": "block",
    "sensitivity.images": 64,
    "sensitivity.measure": "kl",
}


def check_retrain(cfg: DictConfig) -> Parsed:
    budgets, costs = _check_common(cfg)
    family = _family(cfg)
    _check_arch(cfg, budgets, family)
    _check_init(cfg)
    _number(cfg, "integer_check_images", minimum=1, integer=True, optional=True)
    _flag(cfg, "bn_fold")
    _number(cfg, "bn_freeze_epoch", minimum=0, integer=True)
    _no_unused_budget(cfg, ("random",))
    return _parsed(cfg, family, budgets, costs)


def check_ptq(cfg: DictConfig) -> Parsed:
    """Post-training quantization: a float network's weights, an arch (a budget for those that
    take one), the refinements and the rounding."""
    _check_model(cfg)
    _check_output_dir(cfg)
    _check_data(cfg)
    weights = OmegaConf.select(cfg, "model.weights")
    if weights in (None, ""):
        raise ConfigError("model.weights is required: model.weights=<a float network's state dict>")
    _number(cfg, "calibration.images", minimum=1, integer=True)
    _flag(cfg, "bn_fold")
    _number(cfg, "seed", minimum=0, maximum=MAX_SEED, integer=True)
    family = _family(cfg)
    budgets, costs = (), {}
    if cfg.arch in (SENSITIVITY, SEARCH):
        budgets, costs = _budgets(cfg)
        if not budgets:
            raise ConfigError(
                f"arch={cfg.arch} needs a budget: add target_bits=B (or budget.<cost>=<value>)"
            )
        _number(cfg, "target_bits", minimum=0, optional=True)
        if cfg.arch == SENSITIVITY:
            _sensitivity_images(cfg)
            if cfg.sensitivity.measure not in sensitivity.MEASURES:
                raise ConfigError(
                    f"sensitivity.measure={cfg.sensitivity.measure}: choose from "
                    f"{', '.join(sensitivity.MEASURES)}"
                )
        else:
            _number(cfg, "search.steps", minimum=1, integer=True)
            _number(cfg, "search.images", minimum=1, integer=True)
            _number(cfg, "search.batch_size", minimum=1, integer=True)
            _number(cfg, "search.lr", minimum=0)
            _number(cfg, "search.sharpness", minimum=1)
            if OmegaConf.select(cfg, "space.sbits") is not None:
                raise ConfigError(
                    f"space.sbits: arch={cfg.arch} learns signed inputs only at their shared 8 "
                    "bits; drop space.sbits (arch=sensitivity, a search or arch=random "
                    "allocates them)"
                )
    else:
        if cfg.arch == "random":
            budgets, costs = _budgets(cfg)
        _check_arch(cfg, budgets, family)
    _no_unused_budget(cfg, ("random", SENSITIVITY, SEARCH))
    if cfg.arch == FLOAT:
        raise ConfigError("arch=float: post-training quantization needs bits to quantize to")
    if cfg.arch in ("random", SENSITIVITY, SEARCH):
        for kind, supported in (("wbits", family.weight_bits), ("abits", family.activation_bits)):
            _bit_list(cfg, f"space.{kind}", list(supported))
        _signed_space(cfg, family)
    measure = cfg.sensitivity.measure
    if cfg.arch != SENSITIVITY and measure != PTQ_DEFAULTS["sensitivity.measure"]:
        raise ConfigError(f"sensitivity.measure={measure}: only arch=sensitivity measures; drop it")
    _number(cfg, "integer_check_images", minimum=1, integer=True, optional=True)
    _refinements_applied(cfg, family)
    clip_method(cfg.ptq.activation_clip)  # an unknown clip is refused before anything is built
    bias_correction.check(cfg.ptq.bias_correction)
    return _parsed(cfg, family, budgets, costs, _rounding(cfg, family))


def _sensitivity_images(cfg: DictConfig) -> None:
    """arch=sensitivity measures each layer on the first sensitivity.images of the calibration
    images (unless calibration.stats gives the statistics: then it draws its own); the default
    number stands for all of them where there are fewer."""
    _number(cfg, "sensitivity.images", minimum=1, integer=True)
    if OmegaConf.select(cfg, "calibration.stats") is not None:
        return
    measured, calibration = cfg.sensitivity.images, cfg.calibration.images
    if measured > calibration and measured != PTQ_DEFAULTS["sensitivity.images"]:
        raise ConfigError(
            f"sensitivity.images={measured} is more than calibration.images={calibration}, the "
            "images it is measured on: lower it or raise calibration.images"
        )


def _rounding(cfg: DictConfig, family: registry.Family) -> Rounding:
    """ptq.rounding and its settings (edmips.ptq.rounding), before anything is built."""
    rounding, reconstruction = cfg.ptq.rounding, cfg.ptq.reconstruction
    if rounding not in ROUNDINGS:
        raise ValueError(f"ptq.rounding={rounding}: choose from {', '.join(ROUNDINGS)}")
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(
            f"ptq.reconstruction={reconstruction}: choose from {', '.join(RECONSTRUCTIONS)}"
        )
    if rounding == "nearest":
        if reconstruction != PTQ_DEFAULTS["ptq.reconstruction"]:
            raise ValueError(
                f"ptq.reconstruction={reconstruction}: only a learned rounding reconstructs; "
                "add ptq.rounding=adaround"
            )
        return Rounding(rounding, reconstruction, cfg.ptq.bias_correction, None)
    weight = family.weight
    if not issubclass(get(weight), MaxAbsWeight):
        raise ValueError(
            f"ptq.rounding=adaround: quant's weight quantizer ({weight}) is not max-abs, the grid "
            "AdaRound learns on (quant=ptq's is): drop it"
        )
    correction = cfg.ptq.bias_correction
    if correction not in ("none", PTQ_DEFAULTS["ptq.bias_correction"]):
        raise ValueError(
            f"ptq.bias_correction={correction}: ptq.rounding=adaround stores the learned weights, "
            "so there is nothing left to correct: drop it"
        )
    for key in ("iterations", "images", "batch_size"):
        value = cfg.ptq.adaround[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ptq.adaround.{key}={value}: a whole number, at least 1")
    value = cfg.ptq.adaround.regularization
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"ptq.adaround.regularization={value}: a number, at least 0")
    value = cfg.ptq.adaround.drop
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"ptq.adaround.drop={value}: a probability, at least 0 and below 1")
    settings = adaround_settings(cfg.ptq.adaround)
    return Rounding(rounding, reconstruction, correction, settings)


def _no_unused_budget(cfg: DictConfig, takers: tuple[str, ...]) -> None:
    """target_bits and budget.<key> are read by the archs `takers` only: elsewhere a budget
    would be accepted and ignored."""
    if cfg.arch in takers:
        return
    given = [("target_bits", OmegaConf.select(cfg, "target_bits"))]
    given += [(f"budget.{k}", v) for k, v in (OmegaConf.select(cfg, "budget") or {}).items()]
    for key, value in given:
        if value is not None:
            archs = " or ".join(f"arch={arch}" for arch in takers)
            raise ConfigError(
                f"{key}={value}: arch={cfg.arch} takes no budget (a budget is for {archs}): drop it"
            )


def _refinements_applied(cfg: DictConfig, family: registry.Family) -> None:
    """ptq.activation_clip sets the clipped quantizers' clips and ptq.bias_correction corrects
    max-abs weights: under a family without them, a setting other than conf/ptq.yaml's (or
    `none`) would be recorded but never applied."""
    clipped = [n for n in (family.activation, family.signed) if issubclass(get(n), ClippedQuant)]
    clip = cfg.ptq.activation_clip
    if not clipped and clip != PTQ_DEFAULTS["ptq.activation_clip"]:
        raise ConfigError(
            f"ptq.activation_clip={clip}: quant's activation quantizers ({family.activation}, "
            f"{family.signed}) have no clip to calibrate (quant=ptq's have): drop it"
        )
    correction = cfg.ptq.bias_correction
    corrected = issubclass(get(family.weight), MaxAbsWeight)
    if not corrected and correction not in ("none", PTQ_DEFAULTS["ptq.bias_correction"]):
        raise ConfigError(
            f"ptq.bias_correction={correction}: quant's weight quantizer ({family.weight}) is "
            "not max-abs, the one bias correction adjusts (quant=ptq's is): drop it"
        )


def _check_arch(cfg: DictConfig, budgets: tuple[BudgetSpec, ...], family: registry.Family) -> None:
    """arch: a found.json, `uniform` at bits the family takes, or `random` with a budget."""
    if OmegaConf.is_missing(cfg, "arch") or cfg.arch in (None, ""):
        raise ConfigError(
            "arch is required: arch=<path to a found.json>, arch=uniform, arch=random or arch=float"
        )
    if cfg.arch == "uniform":
        _bits(cfg, "wbits", list(family.weight_bits))
        _bits(cfg, "abits", list(family.activation_bits))
    elif cfg.arch == FLOAT or cfg.arch in POLICIES:
        pass  # nothing to choose: every layer at 32 bits, or at the policy's bits
    elif cfg.arch == "random":
        if not budgets:
            raise ConfigError(
                "arch=random needs a budget: add target_bits=B (or budget.<cost>=<value>)"
            )
        _number(cfg, "target_bits", minimum=0, optional=True)  # alone, or beside a budget key
        _signed_space(cfg, family)
    else:
        path = Path(to_absolute_path(str(cfg.arch)))
        if path.is_dir():
            raise ConfigError(f"arch={cfg.arch}: a directory; name its found.json")


def _check_init(cfg: DictConfig) -> None:
    """init=search needs a search's arch file; init=float the float weights it starts from."""
    if cfg.init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}; got {cfg.init!r}")
    if cfg.init == "search" and cfg.arch in ("uniform", "random", FLOAT, *POLICIES):
        raise ConfigError(f"init=search needs an arch file from a search, not arch={cfg.arch}")
    if cfg.init == "float" and OmegaConf.select(cfg, "model.weights") in (None, ""):
        raise ConfigError(
            "init=float starts from float weights: add model.weights=<file> (a float run's "
            "weights.pt, from retrain.py arch=float)"
        )


def _check_output_dir(cfg: DictConfig) -> None:
    """output_dir (Hydra's run dir unless set): a folder, or one that can be created."""
    try:
        check_folder(cfg.output_dir)
    except ValueError as e:
        raise ConfigError(f"output_dir: {e}") from None


def _check_model(cfg: DictConfig) -> None:
    """model.name: set (conf/model/torchvision.yaml leaves it to the command line) and known."""
    if OmegaConf.is_missing(cfg.model, "name") or cfg.model.get("name") in (None, ""):
        raise ConfigError(
            "model.name is required: model=torchvision model.name=tv_<a torchvision classifier> "
            "(e.g. tv_resnet34), or model=<a config of conf/model/>"
        )
    if cfg.model.name not in list_models():
        raise ConfigError(
            f"model.name={cfg.model.name!r}: unknown model; choose from {', '.join(list_models())}"
        )


def _check_common(cfg: DictConfig) -> tuple[tuple[BudgetSpec, ...], dict]:
    """The checks of search.py and retrain.py; the budgets and their costs, parsed."""
    _check_model(cfg)
    _check_output_dir(cfg)
    _check_data(cfg)
    budgets, costs = _budgets(cfg)
    _number(cfg, "seed", minimum=0, maximum=MAX_SEED, integer=True)
    _number(cfg, "trainer.max_epochs", minimum=1, integer=True)
    for key in ("space.skip_first", "space.skip_last", "fast"):
        _flag(cfg, key)
    for key in ("optimizer", "search.optimizer", "search.arch_optimizer"):
        _check_optimizer(cfg, key)
    _check_schedule(cfg)
    return budgets, costs


def _check_data(cfg: DictConfig) -> None:
    """The data group's sizes and switches (those of conf/data/*.yaml a data set has)."""
    _number(cfg, "data.batch_size", minimum=1, integer=True)
    _number(cfg, "data.eval_batch_size", minimum=1, integer=True, optional=True)
    _number(cfg, "data.val_size", minimum=0, integer=True)
    for key, minimum in (
        ("num_train", 1),
        ("num_test", 1),
        ("image_size", 1),
        ("resize_size", 1),
        ("num_workers", 0),
        ("num_classes", 2),
        ("noise", 0),
    ):
        _number(cfg, f"data.{key}", minimum=minimum, integer=key != "noise", optional=True)
    for key in ("augment", "on_device", "download", "pin_memory"):
        if OmegaConf.select(cfg, f"data.{key}") is not None:
            _flag(cfg, f"data.{key}")


def _check_optimizer(cfg: DictConfig, key: str) -> None:
    """An optimizer's rate, momentum and weight decay, where the config sets them (torch would
    refuse a negative one in a traceback, and a NaN rate trains nothing)."""
    for name in ("lr", "momentum", "weight_decay"):
        _number(cfg, f"{key}.{name}", minimum=0, optional=True)


def _check_schedule(cfg: DictConfig) -> None:
    """The scheduler's and the trainer's counts (conf/scheduler/, conf/trainer/)."""
    for key, minimum in (
        ("scheduler.T_max", 1),
        ("scheduler.step_size", 1),
        ("trainer.log_every_n_steps", 1),
    ):
        _number(cfg, key, minimum=minimum, integer=True, optional=True)
    if isinstance(OmegaConf.select(cfg, "trainer.devices"), int):  # or auto, or a list
        _number(cfg, "trainer.devices", minimum=1, integer=True)
    _number(cfg, "scheduler.gamma", minimum=0, optional=True)


def _budgets(cfg: DictConfig) -> tuple[tuple[BudgetSpec, ...], dict]:
    """The budgets (edmips.cost.budget_spec: valid amounts, none counting the cost target_bits
    / target_bitops does) and every cost they count, configured from the cost group's settings
    (latency_table: its file, read here once)."""
    cost = OmegaConf.select(cfg, "cost.name")
    if cost not in cost_models.names():
        raise ConfigError(
            f"cost={cost}: unknown cost; choose from {', '.join(cost_models.names())}"
        )
    try:
        budgets = budget_spec.parse(
            OmegaConf.select(cfg, "budget"),
            OmegaConf.select(cfg, "target_bits"),
            OmegaConf.select(cfg, "target_bitops"),
            cost,
        )
        names = dict.fromkeys([budget_spec.counted_cost(budgets, cost), *(b.cost for b in budgets)])
        return budgets, {name: cost_models.get(name).configure(cfg.cost) for name in names}
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _flag(cfg, key) -> None:
    if not isinstance(OmegaConf.select(cfg, key), bool):
        raise ConfigError(f"{key} must be true or false, got {OmegaConf.select(cfg, key)!r}")


def family(cfg) -> registry.Family:
    """The family a run's config names (`quant: {activation, weight, signed}`), in its int8
    forms where `deploy` is int8; a config that names none (a run recorded without the group)
    is built with edmips's."""
    quant = cfg.get("quant")
    if quant is None:
        return registry.EDMIPS
    return registry.Family.from_spec(quant, cfg.get("deploy", "float"))


def _family(cfg) -> registry.Family:
    """The quantizers `quant` names, each of its kind, in their int8 forms where it says so."""
    try:
        return family(cfg)
    except (ValueError, AttributeError, KeyError) as e:
        raise ConfigError(f"quant: {e}") from None


def _number(cfg, key, minimum=None, integer=False, optional=False, maximum=None) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    is_number = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not is_number:
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be <= {maximum}, got {value}")


def _bits(cfg, key, supported) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value not in supported:
        raise ConfigError(
            f"{key}: unsupported bit-width {value!r}, choose from {supported}"
            + (" (32 is full precision: the float network is arch=float)" if value == 32 else "")
        )


def _bit_list(cfg, key, supported) -> None:
    values = OmegaConf.select(cfg, key)
    values = list(values) if OmegaConf.is_list(values) else values
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{key} must be a non-empty list of bit-widths, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value not in supported:
            raise ConfigError(
                f"{key}: unsupported bit-width {value!r}, choose from {supported}"
                + (" (32, full precision, cannot be exported to integers)" if value == 32 else "")
            )
    if len(set(values)) != len(values):
        raise ConfigError(f"{key} lists a bit-width twice: {values}")


def check_data(cfg: DictConfig, datamodule) -> None:
    """What the data must give a run before its first step: a training batch (the last,
    incomplete one is dropped), and test images for the test pass and the integer check."""
    datamodule.setup("fit")
    if len(datamodule.train_dataloader()) == 0:
        raise ConfigError(
            f"data.batch_size={OmegaConf.select(cfg, 'data.batch_size')} is more than the "
            "training split holds: not one training batch"
        )
    datamodule.setup("test")
    if len(datamodule.test_dataloader()) == 0:
        raise ConfigError(
            "data: the test split is empty; the test pass and the integer check need images"
        )
