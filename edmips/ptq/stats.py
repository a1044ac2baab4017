"""The statistics one calibration pass gathers, kept apart from the clips they give.

Every quantizer that tracks a range from data is calibrated from what it saw: a clipped one
(edmips.quant.clipped) from its ClipStatistics (the largest |x| and a sample), any other (the
residual streams' moving max) from its buffers. `gather` runs the images once; `finish` sets
the clips from what was gathered, at the quantizers' current bit-widths, as often as the bits
change; `save` / `load` keep it in a file (`calibration_stats.pt` in the run directory), keyed by
each quantizer's name in the model, so that another run reuses it without a pass over the
images (`calibration.stats=<file>`). A file whose names or shapes differ from the model's is
refused before anything is computed.

What a clipped quantizer's entry keeps is what its clips read back (`compact`): the largest |x|,
and a seeded draw of SAMPLE_KEPT values of its sample as float16 fractions of that largest |x|;
an unsigned quantizer's values at or below zero, which every clip method reads as zeros (the
ReLU's), only as their count. A calibration pass gathers a sample of up to 2^20 float32 values
per quantizer (edmips.quant.clipped), 4 MB each, 33.5 MB for a ResNet-8 of 315 KB; kept so, its
file is under twice the network's parameters. `gather` puts the compacted statistics back into
the model, so the run that writes a file computes its clips from exactly what a run reading it
gets: the same alphas, bit for bit.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.progress import track
from torch import Tensor, nn

from edmips.models.weights import load_torch_file
from edmips.quant import calibration
from edmips.quant.clipped import ClippedQuant, ClipStatistics
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import ActivationQuantizer, quantizers
from edmips.records.files import write_file_atomic

FILE = "calibration_stats.pt"
FORMAT = "edmips calibration statistics"
SAMPLE_KEPT = 2**15  # values kept of each clipped quantizer's sample: a 1% spread of its moments


@dataclass(frozen=True)
class CalibrationStats:
    model: str
    images: int  # the calibration images they come from
    clips: dict[str, dict]  # clipped quantizer -> {"signed", "max_abs", "sample", "zeros"}
    ranges: dict[str, dict[str, Tensor]]  # any other range-tracking quantizer -> its buffers


def tracked(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """The quantizers whose range comes from data, by name."""
    return {
        name: q
        for name, q in quantizers(model)
        if isinstance(q, ActivationQuantizer) and q.calibrates
    }


def batches(loader, images: int):
    """The loader's image batches, cut to `images` images in all."""
    seen = 0
    for x, *_ in loader:
        if seen >= images:
            return
        yield x[: images - seen]
        seen += min(len(x), images - seen)


@torch.no_grad()
def gather(model: nn.Module, loader, images: int) -> CalibrationStats:
    """`images` images of `loader` through the network in eval mode (batch norm frozen)."""
    model.eval()
    seen = 0
    with calibration(model):
        for x in track(batches(loader, images), description="calibrating", transient=True):
            model(x)
            seen += len(x)
    if seen < images:
        raise ValueError(f"calibration.images={images}: the training split has only {seen}")
    gathered = snapshot(model, seen)
    restore(model, gathered)  # the clips come from what the file keeps
    return gathered


def snapshot(model: nn.Module, images: int) -> CalibrationStats:
    """What every range-tracking quantizer of `model` has gathered."""
    clips, ranges = {}, {}
    for name, q in tracked(model).items():
        if isinstance(q, ClippedQuant):
            if q.statistics is None:
                raise ValueError(f"{name}: no data seen under calibration(model)")
            clips[name] = compact(q.statistics, q.signed)
        else:
            ranges[name] = {k: v.detach().clone() for k, v in q.state_dict().items()}
    return CalibrationStats(getattr(model, "name", type(model).__name__), images, clips, ranges)


def restore(model: nn.Module, stats: CalibrationStats) -> None:
    """Put the gathered statistics back into `model`'s quantizers (checked first)."""
    check(model, stats)
    for name, q in tracked(model).items():
        if name in stats.clips:
            q.statistics = statistics(stats.clips[name])
        else:
            q.load_state_dict(stats.ranges[name])


def of_quantizers(model: nn.Module, stats: CalibrationStats) -> CalibrationStats:
    """The statistics of the quantizers `model` tracks, of those gathered on a model with more
    (an allocation drops the input quantizers that its layers read signed tensors with at
    their shared 8 bits)."""
    names = tracked(model).keys()
    return replace(
        stats,
        clips={n: c for n, c in stats.clips.items() if n in names},
        ranges={n: r for n, r in stats.ranges.items() if n in names},
    )


def compact(s: ClipStatistics, signed: bool) -> dict:
    """A clipped quantizer's statistics as its file entry keeps them (module docstring)."""
    sample = s.sample()
    if sample.numel() > SAMPLE_KEPT:
        drawn = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))
        sample = sample[drawn[:SAMPLE_KEPT]]
    zeros = 0
    if not signed:
        positive = sample > 0
        zeros, sample = int((~positive).sum()), sample[positive]
    scale = s.max_abs if s.max_abs > 0 else 1.0
    fractions = (sample / scale).clamp(-1, 1).half()
    return {"signed": signed, "max_abs": s.max_abs, "sample": fractions, "zeros": zeros}


def statistics(entry: dict) -> ClipStatistics:
    """The ClipStatistics of a file entry; an entry of an older file holds its float32 sample."""
    sample = entry["sample"]
    if "zeros" in entry:
        scale = entry["max_abs"] if entry["max_abs"] > 0 else 1.0
        sample = torch.cat([sample.float() * scale, torch.zeros(entry["zeros"])])
    s = ClipStatistics()
    s.max_abs, s.parts, s.kept = entry["max_abs"], [sample], sample.numel()
    return s


def finish(model: nn.Module, clip) -> dict[str, float]:
    """Set every clip below full precision by the clip method; {quantizer: alpha}."""
    return {
        name: q.finish_calibration(clip)
        for name, q in tracked(model).items()
        if isinstance(q, ClippedQuant) and q.bits < FULL_PRECISION
    }


def check(model: nn.Module, stats: CalibrationStats, source: str = "calibration statistics"):
    """One line naming the first difference between the model's quantizers and the file's."""
    here = tracked(model)
    kinds = {n: "clipped" if isinstance(q, ClippedQuant) else "range" for n, q in here.items()}
    there = {**dict.fromkeys(stats.clips, "clipped"), **dict.fromkeys(stats.ranges, "range")}
    missing, extra = sorted(kinds.keys() - there.keys()), sorted(there.keys() - kinds.keys())
    if missing or extra:
        names = f"lacks {', '.join(missing[:3])}" if missing else f"has {', '.join(extra[:3])}"
        raise ValueError(
            f"{source}: gathered on {stats.model} ({len(there)} quantizers), not this "
            f"{getattr(model, 'name', 'model')} ({len(here)}): the file {names}"
        )
    for name, q in here.items():
        if kinds[name] != there[name]:
            raise ValueError(f"{source}: {name} is a {there[name]} quantizer in the file")
        if name in stats.clips and stats.clips[name]["signed"] != q.signed:
            raise ValueError(f"{source}: {name} is signed in one and unsigned in the other")
        if name in stats.ranges:
            ours = {k: tuple(v.shape) for k, v in q.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in stats.ranges[name].items()}
            if ours != theirs:
                raise ValueError(f"{source}: {name} holds {theirs}, the model's {ours}")


def save(stats: CalibrationStats, path: str | Path) -> Path:
    state = {"format": FORMAT, **stats.__dict__}
    return write_file_atomic(path, lambda tmp: torch.save(state, tmp))


def load(path: str | Path, source: str | None = None) -> CalibrationStats:
    source = source or str(path)

    def fail(reason: str):
        raise ValueError(f"{source}: not a calibration statistics file ({reason})")

    try:
        state = load_torch_file(Path(path), fail)
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"{source}: no such file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{source}: not a calibration statistics file (written by ptq.py)")
    return CalibrationStats(state["model"], state["images"], state["clips"], state["ranges"])
