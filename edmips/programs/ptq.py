"""ptq(cfg): quantize a float network without training, export it to integers and check it.

The float weights (`model.weights`) go into the network at the architecture's bit-widths
(`arch=uniform wbits=4 abits=4`, a found.json or `arch=random target_bits=B`, resolved as
retrain.py resolves them) with the post-training family (`quant=ptq`: clipped activations,
per-channel max-abs weights); the first conv and the classifier stay at 8 bits. A few training
images calibrate every activation clip (`ptq.activation_clip`), then the network is lowered to
the integer graph (bundle and two ONNX models) and the test split is run through the float64
fake-quantized reference, the integer runtime and `model_qdq.onnx`; the float network's test
accuracy is measured in the same run.
"""

import logging
import time
from pathlib import Path

import pytorch_lightning as L
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from edmips.core import rundir
from edmips.export import export
from edmips.export.verify import verify
from edmips.nn import to_fixed
from edmips.nn.convert import fixed_ends
from edmips.nn.fold import absorb_batch_norms, absorb_into_bias
from edmips.programs import checks, sensitivity
from edmips.programs.builders import build_datamodule
from edmips.programs.retrain import arch_kind, arch_record, resolve_arch
from edmips.ptq import (
    accuracy,
    bias_correction,
    bit_allocation,
    float_copy,
    method,
    rounding,
    stats,
)
from edmips.records import arch as arch_file
from edmips.records import metrics as metrics_file

log = logging.getLogger(__name__)


def ptq(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    parsed = checks.check_ptq(cfg)
    run = rundir.start(cfg, "ptq")
    cfg = run.cfg
    with run.stoppable():  # a SIGTERM from here on: status 143 and a line
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        model, found, costs, budgets = _quantizable(cfg, parsed, datamodule)
        given = _given_stats(cfg, model)
        datamodule.setup("fit")
        datamodule.setup("test")
        float_net = float_copy(model)
        float_acc = accuracy(float_net, datamodule.test_dataloader())
        calibrated = time.perf_counter()
        clip = method(cfg.ptq.activation_clip)
        if cfg.arch in sensitivity.MEASURED:
            gathered, found = _measured(
                cfg, parsed, model, costs, budgets, float_net, datamodule, given, clip
            )
        else:
            gathered = _gathered(cfg, model, datamodule, given)
        stats.finish(model, clip)
        # int8sim's batch norms become the convs' weights and biases, as its lowering makes
        # them: the refinements below then correct the weights that are exported
        absorb_into_bias(model)
        absorb_into_bias(float_net)  # the learned rounding's targets: the same convs in float
        bit_allocation.allocate_weights(model, cfg.ptq.bit_allocation)
        loader = datamodule.train_dataloader()
        rounded = rounding.apply(parsed.rounding, model, float_net, loader, cfg.seed)
        bias_correction.correct(model, parsed.rounding.correction)
        out = Path(cfg.output_dir)
        run.accept()  # the lock, .hydra/ and the log: the first write
        stats.save(gathered, out / stats.FILE)
        export(model, datamodule.input_size, out)
        exported = time.perf_counter()
        record = {
            **_record(cfg, parsed, found, datamodule.name),
            **rounded,
            "calibration_images": gathered.images,
            "float_acc": float_acc,
            **verify(model, out, datamodule.test_dataloader(), cfg.integer_check_images),
            "wall_time_s": time.perf_counter() - start,
        }
        arch_file.save(found, out / "arch.json")
        metrics = metrics_file.RetrainMetrics.from_record(record)
        run.finish(lambda: metrics_file.save(metrics, out / "metrics.json"))
        log.info(
            "%s (%s): float %.4f, quantized %.4f on %d images; integer check on %d: integer %.4f, "
            "agreement %.4f%s; calibration and export %.1f s",
            record["allocation"],
            cfg.ptq.activation_clip,
            float_acc,
            metrics.test_acc,
            metrics.test_images,
            metrics.checked_images,
            metrics.test_acc_integer,
            metrics.prediction_agreement,
            "" if metrics.qdq_agreement is None else f", ONNX {metrics.qdq_agreement:.4f}",
            exported - calibrated,
        )
    return metrics.to_dict()


def _quantizable(cfg: DictConfig, parsed: checks.Parsed, datamodule):
    """The model at the arch's bits (at 8 bits for arch=sensitivity or search, whose allocation
    is measured later), its architecture (None until then), the searchable layers' costs and
    the budgets their allocation is held to; the first conv and the classifier at 8 bits unless
    the arch sets them; checked for the weight refinements before any image is read."""
    found = costs = budgets = None
    if cfg.arch in sensitivity.MEASURED:
        model, costs, budgets = sensitivity.model_at_8_bits(cfg, parsed, datamodule)
        to_fixed(model, fixed_ends(model, {c.name for c in costs}), parsed.family)
    else:
        model, found = resolve_arch(cfg, parsed, datamodule)
    if cfg.bn_fold:
        absorb_batch_norms(model)
    bit_allocation.check(model, cfg.ptq.bit_allocation)
    return model, found, costs, budgets


def _record(cfg: DictConfig, parsed: checks.Parsed, found, data: str) -> dict:
    """What metrics.json says of the quantized network before it is tested."""
    return {
        **arch_record(cfg, parsed.family, found, data),
        "kind": "ptq",
        "allocation": found.extra.get("kind") or arch_kind(cfg),
        "activation_clip": cfg.ptq.activation_clip,
        "bias_correction": parsed.rounding.correction,
        "bit_allocation": cfg.ptq.bit_allocation,
    }


def _given_stats(cfg: DictConfig, model) -> stats.CalibrationStats | None:
    """calibration.stats=<file>: an earlier run's statistics, checked against this model."""
    path = cfg.calibration.get("stats")
    if path is None:
        return None
    source = f"calibration.stats={path}"
    given = stats.load(to_absolute_path(str(path)), source)
    stats.check(model, given, source)
    return given


def _gathered(cfg: DictConfig, model, datamodule, given) -> stats.CalibrationStats:
    """The calibration images' statistics in `model`'s quantizers: gathered, or given."""
    if given is None:
        return stats.gather(model, datamodule.train_dataloader(), cfg.calibration.images)
    stats.restore(model, given)
    return given


def _measured(cfg, parsed, model, costs, budgets, float_net, datamodule, given, clip):
    """The statistics (gathered with every layer at 8 bits on the first calibration.images, or
    given) and the allocation measured from them on the first sensitivity.images (arch=sensitivity)
    or search.images (arch=search, more than the calibration's where it asks for more); `model`
    ends at the allocation's bits, its statistics restored; within `budgets` over the
    searchable layers' `costs`."""
    measured = cfg.sensitivity.images if cfg.arch == sensitivity.KIND else cfg.search.images
    needed = measured if given else max(measured, cfg.calibration.images)
    drawn = sensitivity.drawn_images(datamodule.train_dataloader(), needed)
    gathered = given or stats.gather(model, [(x,) for x in drawn], cfg.calibration.images)
    stats.restore(model, gathered)
    stats.finish(model, clip)
    images = torch.cat(drawn)[:measured]
    reference = sensitivity.logits(float_net, images, len(drawn[0]))
    allocate = (
        sensitivity.allocate if cfg.arch == sensitivity.KIND else sensitivity.allocate_by_search
    )
    found = allocate(
        cfg, parsed, budgets, model, costs, images, reference, gathered, clip, datamodule.name
    )
    to_fixed(model, found.bits(), parsed.family)
    gathered = stats.of_quantizers(model, gathered)
    stats.restore(model, gathered)
    return gathered, found
