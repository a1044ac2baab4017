"""The integer network: a list of nodes over named integer tensors, saved as a bundle.

A bundle is a folder with `manifest.json` (format, model, input, the nodes with their
attributes, the output) and `arrays.npz` (integer weights, thresholds, biases). Weights are
stored at their bit-width (edmips.export.packing; a node's `packed` entry says how), so the
weights take the bits the architecture says. Ops:

    input      uint8 image codes minus a per-channel integer zero point
    conv       integer convolution (+ bias) -> accumulator (attrs: stride, padding, groups,
               dilation, acc_bits); `float_bias`, where the layer's bias is off the
               accumulator's grid: the float64 shift the thresholds after it absorb
    threshold  level = #{k : sign_c * x >= T_ck} + out_bias  (per channel)
    windowmax  sign_c * max of sign_c * x over each output position's input positions
               (`windows` [outputs, k], index H*W = none; attrs: out_hw): any max pooling
    windowsum  the sum over the same windows: any average pooling, less its division
    add        a + b (a residual add on one shared grid)
    table      level = table[c, x - in_lo] (`table` [channels or 1, in range's size]; attrs:
               in_lo): any function of codes, read as the next quantizer's levels
    mul        a * b, broadcast (a squeeze-excitation's gate times its features)
    concat     the inputs joined along the channels
    gather_channels  the input's channels `index` (a channel shuffle, chunk or slice)
    relu       max(x, 0) (a ReLU on an accumulator that a pool or the logits read)
    flatten    N x C x H x W -> N x CHW
    sumpool    sum over the spatial positions
    linear     x @ W.T + bias (integer logits)

Every node records `range` = [lo, hi], the integers its output can hold, and, for
information, `scale`: the float value of one integer unit in the fake-quantized network.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edmips.export.packing import pack, unpack
from edmips.records.files import write_dir_atomic

FORMAT, VERSION = "edmips-integer", 3  # 2: windowed pools, concat, flatten, conv bias
READABLE = (2, 3)  # 3: packed weights
PACKED = ("weight",)  # the arrays stored at their bit-width


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    model: str
    input_shape: list[int]
    nodes: list[Node] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def add(self, op: str, name: str, inputs: list[str], arrays=None, **attrs) -> str:
        self.nodes.append(Node(op, name, inputs, attrs, arrays or {}))
        return name

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def save_bundle(graph: Graph, path: str | Path) -> Path:
    """Write the bundle folder atomically (built beside it, then renamed into place)."""
    arrays, nodes = {}, []
    for n in graph.nodes:
        packed = {}
        for k, v in n.arrays.items():
            if k in PACKED:
                v, packed[k] = pack(v)
            arrays[f"{n.name}/{k}"] = v
        spec = {"op": n.op, "name": n.name, "inputs": n.inputs, **n.attrs}
        nodes.append({**spec, "arrays": sorted(n.arrays), **({"packed": packed} if packed else {})})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": graph.model,
        "input_shape": graph.input_shape,
        "output": graph.output,
        "nodes": nodes,
    }

    def write(tmp: Path) -> None:
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        np.savez_compressed(tmp / "arrays.npz", **arrays)

    return write_dir_atomic(path, write)


def load_bundle(path: str | Path) -> Graph:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        arrays = np.load(path / "arrays.npz")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not an integer bundle ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE:
        raise ValueError(
            f"{path}: not an {FORMAT} v{VERSION} bundle "
            "(export the checkpoint again: python -m edmips export <run dir>)"
        )
    graph = Graph(manifest["model"], manifest["input_shape"])
    for spec in manifest["nodes"]:
        spec = dict(spec)
        op, name, inputs = spec.pop("op"), spec.pop("name"), spec.pop("inputs")
        keys, packed = spec.pop("arrays"), spec.pop("packed", {})
        stored = {k: arrays[f"{name}/{k}"] for k in keys}
        stored.update({k: unpack(stored[k], info) for k, info in packed.items()})
        graph.add(op, name, inputs, stored, **spec)
    return graph
