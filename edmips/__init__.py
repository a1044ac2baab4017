"""edmips: mixed-precision networks, searched (EdMIPS), retrained and exported to integers.

The packages, lowest first; each imports only from those above it:

    quant     quantizers: the arithmetic (primitives), the autograd functions, the kernels
    nn        quantized and composite layers; any traced model made quantizable
    cost      what a network costs: per-layer FLOPs, parameters, activations; the totals
    records   the files a run writes: architecture, metrics, history (atomically)
    models    the model registry: edmips's ResNets, every torchvision classifier
    data      Lightning DataModules: synthetic, CIFAR-10, ImageNet
    core      run plumbing: builders from the config, checks, the classifier, callbacks, run dir
    search    the differentiable search, its budget and discretization
    retrain   training with fixed bit-widths
    ptq       post-training quantization: ACIQ's clips, calibration from a few images
    export    the lowering to the integer graph, its runtime, its ONNX forms
    report    figures and the report over many runs
"""

import importlib
import pkgutil
from functools import cache


@cache
def import_submodules(package: str, skip: frozenset = frozenset()) -> None:
    """Import every module of `package`, once: what a registry needs before its first lookup,
    since its members (quantizers, cost models, ONNX forms) register themselves when imported."""
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


class Registry:
    """Members of one kind (quantizers, cost models, models, ONNX forms) by name, each
    registered once. Where the members register themselves as their modules are imported,
    `package` names those modules: the first lookup imports them all."""

    def __init__(self, kind: str, package: str | None = None, skip: frozenset = frozenset()):
        self.kind, self.package, self.skip = kind, package, skip
        self._members: dict = {}

    def add(self, name: str, member):
        if name in self._members:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._members[name] = member
        return member

    def remove(self, name: str) -> None:
        self._members.pop(name)

    def members(self) -> dict:
        if self.package is not None:
            import_submodules(self.package, self.skip)
        return self._members

    def names(self) -> list[str]:
        return sorted(self.members())

    def get(self, name: str):
        members = self.members()
        if name not in members:
            raise ValueError(f"unknown {self.kind} {name!r}: choose from {', '.join(self.names())}")
        return members[name]
