"""retrain(cfg): train a network with fixed bit-widths, export it to integers and check it.

The architecture is a found.json (any model in the registry), `uniform` (every searchable
layer at `wbits`/`abits`) or `random` (a seeded random allocation within 1% of `target_bits`),
so searched networks and their baselines go through one recipe. The file is
loaded and matched against the model, and the untrained network lowered to integers once,
before anything trains: what the export refuses is refused then. At the end the network is
lowered to the integer graph (bundle and two ONNX models) and the test split is run through
the float64 fake-quantized reference, the integer runtime and `model_qdq.onnx`. A resumed
retrain rebuilds the architecture its checkpoint holds, whatever the arch file says now.
`arch=float` trains the float network instead (edmips.retrain.float_net): nothing to export,
its weights file and its test accuracy.
"""

import logging
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import pytorch_lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from edmips.core import device_check, rundir
from edmips.core.cli import PACKAGE
from edmips.cost.layers import LayerCost
from edmips.export import check_lowerable, export
from edmips.export.verify import verify
from edmips.models import list_models
from edmips.models.weights import network_state
from edmips.nn import (
    default_searched,
    quantizable_names,
    to_fixed,
    to_float,
    to_search,
)
from edmips.nn.convert import first_and_last, fixed_ends, quantizer_names
from edmips.nn.fold import fold_batch_norms
from edmips.nn.layers import INPUT_BITS
from edmips.nn.policy import POLICIES
from edmips.programs import checks
from edmips.programs.baselines import BASELINES, baseline_arch
from edmips.programs.builders import (
    build_datamodule,
    build_model,
    build_trainer,
    compile_mode,
    fast_path,
    measure,
    on_gpu,
)
from edmips.quant import registry
from edmips.quant.registry import get
from edmips.records import arch as arch_file
from edmips.records import metrics as metrics_file
from edmips.retrain import float_net
from edmips.retrain.module import RetrainModule

log = logging.getLogger(__name__)


def resolve_arch(cfg: DictConfig, parsed: checks.Parsed, datamodule, stored: dict | None = None):
    """The model with the architecture's bit-widths, and the architecture; fails early.
    `stored`: the architecture a resumed retrain's checkpoint holds, which the run goes on
    with whatever its arch file (or the code drawing a random one) says now."""
    init = cfg.get("init", "scratch")  # ptq.py has no init: its weights are the float network's
    if cfg.arch == float_net.KIND:
        model = build_model(cfg, datamodule)
        names = quantizable_names(model)
        costs = [c for c in measure(model, datamodule) if c.name in names]
        quantizers = quantizer_names(model, names, parsed.family)
        found = float_net.float_arch(model.name, costs, quantizers, datamodule.name)
        return to_float(model, parsed.family), found
    if cfg.arch in BASELINES:
        model = build_model(cfg, datamodule)
        if cfg.arch in POLICIES:  # every layer, the first conv and the classifier included
            names = quantizable_names(model)
        else:
            names = default_searched(model, cfg.space.skip_first, cfg.space.skip_last)
        costs = [c for c in measure(model, datamodule) if c.name in names]
        quantizers = quantizer_names(model, [c.name for c in costs], parsed.family)
        found = _stored(stored) or baseline_arch(
            cfg, parsed, model, costs, datamodule.name, quantizers
        )
    else:
        path = Path(to_absolute_path(str(cfg.arch)))
        found = _stored(stored) or arch_file.load(path, known_models=list_models())
        if stored is None:  # resumed: the run's own config, checked when it started
            _check_recorded_setup(cfg, found, datamodule, path)
        model = build_model(cfg, datamodule, name=found.model)
        first, last = first_and_last(model)
        in_file = {layer.name for layer in found.layers}
        names = default_searched(model, first not in in_file, last not in in_file)
        costs = [c for c in measure(model, datamodule) if c.name in names]
        image_input = {n for n in names if model.get_submodule(n).abits is None}
        check_matches(found, found.model, costs, str(path), image_input)
        if init == "search" and stored is None:  # resumed: the weights are the checkpoint's
            _load_search_weights(model, found, path)
    in_arch = [layer.name for layer in found.layers]
    bits = {**fixed_ends(model, in_arch), **found.bits()}
    source = "the checkpoint" if stored else f"arch={cfg.arch}"
    _to_fixed(model, bits, parsed.family, source)
    built = quantizer_names(model, in_arch)
    return model, arch_file.with_quantizers(found, built)


def check_matches(
    arch: arch_file.Arch,
    model_name: str,
    costs: list[LayerCost],
    source="arch",
    quantized_inputs=(),
) -> None:
    """The file must describe this model's searchable layers, in forward order, with the FLOPs
    measured on the model at its real input size. `quantized_inputs` names the layers whose
    input arrives quantized (the image): they, and only they, take INPUT_BITS activations."""
    if arch.model != model_name:
        raise arch_file.ArchError(f"{source}: made for model {arch.model!r}, not {model_name!r}")
    names = [c.name for c in costs]
    got = [layer.name for layer in arch.layers]
    if len(got) != len(names):
        raise arch_file.ArchError(
            f"{source}: {len(got)} layers, but {model_name} has {len(names)} searchable layers"
        )
    for cost, layer in zip(costs, arch.layers):
        if cost.name != layer.name:
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r} where {model_name} has {cost.name!r}"
            )
        if (cost.flops, cost.params) != (layer.flops, layer.params):
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r} has {layer.flops} FLOPs and {layer.params} "
                f"parameters, the model {cost.flops} and {cost.params} at input {cost.input_shape} "
                "(searched at another input size?)"
            )
        weight_bits = get(layer.wquant).supported_bits
        if layer.wbits not in weight_bits:
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r}: wbits={layer.wbits}, but the integer export "
                f"takes {list(weight_bits)} ({layer.wquant})"
            )
        image_input = layer.name in quantized_inputs
        signed = image_input and get(layer.aquant).signed
        if signed and layer.abits not in (INPUT_BITS, *arch.space.get("sbits", [])):
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r}: its input is a signed {INPUT_BITS}-bit tensor; "
                f"abits={layer.abits} is outside the signed space {arch.space.get('sbits')}"
            )
        if image_input and not signed and layer.abits != INPUT_BITS:
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r}: its input is the {INPUT_BITS}-bit image, "
                f"not abits={layer.abits}"
            )
        activation_bits = get(layer.aquant).supported_bits
        if not image_input and layer.abits not in activation_bits:
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r}: abits={layer.abits}, but the integer export "
                f"takes {list(activation_bits)} ({layer.aquant})"
            )
        if not image_input and layer.abits not in arch.space["abits"]:
            raise arch_file.ArchError(
                f"{source}: layer {layer.name!r}: abits={layer.abits} is outside the space "
                f"{arch.space['abits']}"
            )


def _to_fixed(model, bits: dict[str, tuple[int, int]], family, source: str) -> None:
    """to_fixed, layer by layer: bits the family's quantizers do not take (a found.json's
    1-bit weights under max-abs weights, say) are one line naming the arch and the layer."""
    for name, (wbits, abits) in bits.items():
        try:
            to_fixed(model, {name: (wbits, abits)}, family)
        except ValueError as e:
            raise ValueError(f"{source}: layer {name!r} (w{wbits} a{abits}): {e}") from None


def _check_recorded_setup(cfg: DictConfig, found: arch_file.Arch, datamodule, path) -> None:
    """An arch file's network is built on the data and model it records: other data than the
    file's is refused unless the command line chose it (data=..., or an experiment=), and
    either difference is one line in the log. The input size is the data's, which
    check_matches compares with the file's layers."""
    if found.data is not None and found.data != datamodule.name:
        if not _chosen("data"):
            groups = sorted(p.stem for p in (PACKAGE.parent / "conf" / "data").glob("*.yaml"))
            add = (
                f"data={found.data}"
                if found.data in groups
                else f"data=<one of {', '.join(groups)}>"
            )
            raise ValueError(
                f"arch={path} was searched on {found.data}, this run's data is the config's "
                f"default {datamodule.name}: add {add} (or data={datamodule.name} to use it)"
            )
        log.warning(
            "arch=%s was searched on %s; this run uses data=%s, as asked",
            path,
            found.data,
            datamodule.name,
        )
    if found.model != cfg.model.name:
        (log.warning if _chosen("model") else log.info)(
            "arch=%s is a %s network: built instead of model=%s", path, found.model, cfg.model.name
        )


def _chosen(group: str) -> bool:
    """Whether the command line chose the config group `group` (group=..., group.name=... or
    an experiment=, whose recipe chooses data and model)."""
    if not HydraConfig.initialized():
        return False
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return bool(keys & {group, f"{group}.name", "experiment"})


def _stored(stored: dict | None) -> arch_file.Arch | None:
    return None if stored is None else arch_file.from_dict(stored, source="the checkpoint")


def arch_kind(cfg: DictConfig) -> str:
    return cfg.arch if cfg.arch in (*BASELINES, float_net.KIND) else "searched"


def network_spec(cfg: DictConfig, family, found: arch_file.Arch, datamodule) -> dict:
    """Everything that rebuilds the retrained network, stored in its checkpoints."""
    return {
        "arch": found.to_dict(),
        "quant": asdict(family),
        "bn_fold": bool(cfg.get("bn_fold", False)),
        "num_classes": datamodule.num_classes,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "input_size": list(datamodule.input_size),
    }


def _load_search_weights(model, found: arch_file.Arch, path: Path) -> None:
    ckpt = path.parent / rundir.CHECKPOINT
    if not ckpt.exists():
        raise FileNotFoundError(f"init=search: no search checkpoint at {ckpt}")
    names = [layer.name for layer in found.layers]
    to_search(
        model,
        names,
        found.space["wbits"],
        found.space["abits"],
        shared=found.extra.get("shared_weights", True),
        sbits=found.space.get("sbits"),
    )
    state = network_state(rundir.load_checkpoint(ckpt)["state_dict"])
    rundir.check_weights(model.state_dict(), state, ckpt)
    model.load_state_dict(state)


def retrain(cfg: DictConfig) -> dict:
    """Train, export and check; `resume=<run dir or checkpoint>` continues a run in its
    directory with its configuration and its architecture."""
    start = time.perf_counter()
    run = rundir.start(cfg, "retrain")
    cfg = run.cfg
    parsed = checks.check_retrain(cfg)
    if cfg.arch not in (*BASELINES, float_net.KIND):  # absolute: resume= works from anywhere
        cfg.arch = str(to_absolute_path(str(cfg.arch)))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model, found = resolve_arch(cfg, parsed, datamodule, run.network and run.network["arch"])
    if run.network is None:
        _note_other_quantizers(cfg, found)
    if cfg.bn_fold:
        pairs = fold_batch_norms(model)
        log.info("bn_fold: %d batch norms folded into the conv before them", len(pairs))
    checks.check_data(cfg, datamodule)
    if cfg.arch != float_net.KIND:
        check_lowerable(model, datamodule.input_size)
    module = _module(cfg, parsed.family, model, found, datamodule)
    # on a GPU, what runs there
    paths = device_check.check_paths(module, datamodule, on_gpu(cfg), fast_path(cfg))
    trainer = build_trainer(cfg, "retrain")
    with run.accepted(module):
        validation = run.fit(trainer, module, datamodule)
        record = {**_record(cfg, parsed.family, found, datamodule, validation), **paths.record()}
        if trainer.is_global_zero:
            out = Path(cfg.output_dir)
            arch_file.save(found, out / "arch.json")
            if cfg.arch == float_net.KIND:
                record.update(_finish_float(model, out, datamodule))
            else:
                record.update(_export_and_verify(cfg, model, out, datamodule))
            record["wall_time_s"] = time.perf_counter() - start
            metrics = metrics_file.RetrainMetrics.from_record(record)
            run.finish(lambda: metrics_file.save(metrics, out / "metrics.json"))
    return metrics_file.RetrainMetrics.from_record(record).to_dict()


def _note_other_quantizers(cfg: DictConfig, built: arch_file.Arch) -> None:
    """One warning when the arch file's layers name other quantizers than this run's family
    builds (a search with quant=learned retrained without it, say; not their int8 forms,
    which deploy=int8 builds): the run trains what its config says, and arch.json records
    that."""
    if cfg.arch in (*BASELINES, float_net.KIND):
        return
    given = arch_file.load(cfg.arch, known_models=list_models())
    named = {(layer.wquant, layer.aquant) for layer in given.layers}
    made = {(layer.wquant, layer.aquant) for layer in built.layers}
    forms = {tuple(map(registry.int8_form, pair)) for pair in named}
    if named != made and not (cfg.get("deploy") == "int8" and forms == made):
        log.warning(
            "arch=%s names the quantizers %s; this run builds %s (the config's quant=)",
            cfg.arch,
            _pairs(named),
            _pairs(made),
        )


def _pairs(pairs: set[tuple[str, str]]) -> str:
    """Weight/activation quantizer names."""
    return ", ".join(f"{w}/{a}" for w, a in sorted(pairs))


def _module(cfg: DictConfig, family, model, found: arch_file.Arch, datamodule) -> RetrainModule:
    fast = fast_path(cfg)
    return RetrainModule(
        model.to(memory_format=torch.channels_last) if fast else model,
        datamodule.num_classes,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        channels_last=fast,
        compile=compile_mode(cfg.compile, cfg),
        network=network_spec(cfg, family, found, datamodule),
        bn_freeze_epoch=cfg.bn_freeze_epoch if cfg.bn_fold else None,
    )


def arch_record(cfg: DictConfig, family, found: arch_file.Arch, data: str) -> dict:
    """What metrics.json says of the network's architecture, for retrain.py and ptq.py alike."""
    return {
        "model": found.model,
        "data": data,
        "seed": cfg.seed,
        "arch": str(cfg.arch),  # "uniform", "random", "float" or the absolute path
        "uniform": {"wbits": cfg.wbits, "abits": cfg.abits} if cfg.arch == "uniform" else None,
        "target_bits": found.extra.get("target_bits"),
        "mu": found.mu,
        "equivalent_bits": found.equivalent_bits,
        "bitops": found.bitops,
        "weight_bits_total": found.weight_bits_total,
        "activation_bits_total": found.activation_bits_total,
        "micronet_score": found.micronet_score,
        **{k: found.extra.get(k) for k in ("latency_ms", "latency_table", "budget", "budgets")},
        "quant": asdict(family),
        "bn_fold": bool(cfg.get("bn_fold", False)),
    }


def _record(cfg: DictConfig, family, found: arch_file.Arch, datamodule, validation: dict) -> dict:
    """What metrics.json says about the trained network before it is tested."""
    return {
        **arch_record(cfg, family, found, datamodule.name),
        "kind": arch_kind(cfg),
        "val_acc": validation.get("val/acc"),
        "val_acc_top5": validation.get("val/acc5"),
    }


def _finish_float(model, out: Path, datamodule) -> dict:
    """The float network's weights file and test accuracy; it has no integer form."""
    weights = float_net.save_weights(model, out)
    datamodule.setup("test")
    tested = float_net.accuracy(model, datamodule.test_dataloader())
    log.info(
        "float network: test acc %.4f (top-5 %.4f); weights in %s (model.weights=%s); nothing "
        "is quantized, so no integer export",
        tested["test_acc"],
        tested["test_acc_top5"],
        weights.name,
        weights,
    )
    return {**tested, "integer_export": False}


def _export_and_verify(cfg: DictConfig, model, out: Path, datamodule) -> dict:
    """The integer bundle and ONNX forms, and their check on the test split."""
    export(model, datamodule.input_size, out)
    datamodule.setup("test")
    device = torch.device("cuda" if on_gpu(cfg) else "cpu")
    loader = datamodule.test_dataloader()
    checked = verify(model, out, loader, cfg.integer_check_images, device)
    qdq = checked.get("qdq_agreement")
    log.info(
        "test acc %.4f (top-5 %.4f) on %d images; integer check on %d: integer %.4f, "
        "agreement %.4f%s",
        checked["test_acc"],
        checked["test_acc_top5"],
        checked["test_images"],
        checked["checked_images"],
        checked["test_acc_integer"],
        checked["prediction_agreement"],
        "" if qdq is None else f", ONNX {qdq:.4f}",
    )
    return {**checked, "integer_export": True}
