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
