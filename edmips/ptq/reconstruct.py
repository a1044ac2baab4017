"""Block reconstruction, `ptq.reconstruction=block`: BRECQ (Li et al. 2021, "BRECQ: Pushing the
Limit of Post-Training Quantization by Block Reconstruction") with QDrop (Wei et al. 2022,
"QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training Quantization").

The network, traced by torch.fx, is cut where one tensor alone carries everything onward: every
residual block lies between two such points, and elsewhere each layer does. A block is one of
these parts that holds quantized layers, with the parts after it that hold none (a layer's
batch norm, activation and the quantizer in front of the next layer), so a chain of layers is
reconstructed layer by layer, through its activation, and a residual block as a whole.

Block after block, in the order the network runs them, the rounding of every weight of the
block (edmips.ptq.adaround's LearnedRounding) and the clip of every activation quantizer used
only inside it (the `clipped` family's alpha, learned as LSQ learns a step: the rounding's
straight-through gradient) are learned together by Adam to make the block's output, on the
calibration images, approach the float network's output of that block: the squared error summed
over channels, averaged over positions and images, plus AdaRound's annealed regularizer over
every rounding. The block's input is what the network quantized so far computes. QDrop: while
learning, each value of the block's input is the float network's instead with probability
`drop`, and so is each value that a quantizer whose clip is learned outputs (its float value in
place of its code), so the rounding learns for the flat neighbourhood the real input falls in.

A block whose learned output error on the calibration images is not below nearest rounding's
keeps nearest rounding and its calibrated clips. What is stored is what any max-abs network
holds: integer codes on the calibrated weight grid and a clip per activation quantizer, so the
export and its integer check are unchanged.
"""

import logging
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from edmips.nn.fold import LayerTracer
from edmips.nn.layers import QUANT_LAYERS
from edmips.ptq.adaround import (
    LEARNING_RATE,
    LearnedRounding,
    Settings,
    drawn,
    learnable,
    mean_error,
    output_error,
    regularized,
)
from edmips.quant.clipped import ClippedQuant
from edmips.quant.primitives import FULL_PRECISION

log = logging.getLogger(__name__)

CLIP_RATE = 1e-3  # Adam's rate on a clip, as a fraction of the calibrated clip
LOWEST_CLIP = 0.1  # a learned clip stays above this fraction of the calibrated one


@dataclass(frozen=True)
class BlockResult:
    """A block's output error on every image: nearest rounding at the calibrated clips, and
    what was learned."""

    layers: tuple[str, ...]
    clips: tuple[str, ...]  # the activation quantizers whose clip was learned
    nearest_error: float
    learned_error: float
    changed: int
    weights: int


@dataclass(frozen=True)
class Block:
    """Nodes of the traced network: the one tensor arriving, the block's nodes, its output."""

    arrives: fx.Node
    nodes: tuple[fx.Node, ...]
    output: fx.Node


def graph_module(model: nn.Module, example: Tensor) -> fx.GraphModule:
    """The network traced (itself, if it is traced already), every node's output described
    (`tensor_meta`) by running `example` through it. The traced module holds the network's own
    layers and quantizers."""
    gm = model
    if not isinstance(model, fx.GraphModule):
        gm = fx.GraphModule(model, LayerTracer().trace(model))
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    return gm


def _cuts(nodes: list[fx.Node]) -> list[fx.Node]:
    """The nodes after which their own tensor alone is used by what follows, in run order."""
    position = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)
    last_use = {n: max((position.get(u, end) for u in n.users), default=position[n]) for n in nodes}
    cuts, live = [], set()
    for i, node in enumerate(nodes):
        live = {n for n in live | {node} if last_use[n] > i}
        if live == {node} and isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            cuts.append(node)
    return cuts


def blocks(gm: fx.GraphModule, layers: dict[str, nn.Module]) -> list[Block]:
    """The network's blocks (see the module's docstring), each holding at least one of `layers`;
    what comes before the first layer belongs to the first block."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    cuts = _cuts(nodes)
    if not cuts or cuts[0].op != "placeholder" or cuts[-1] is not nodes[-1]:
        raise ValueError("ptq.reconstruction=block: the network does not take and give one tensor")
    position = {n: i for i, n in enumerate(nodes)}
    found: list[Block] = []
    held = False  # whether the block being gathered holds a layer yet
    for start, cut in zip(cuts, cuts[1:]):
        part = tuple(nodes[position[start] + 1 : position[cut] + 1])
        holds = any(n.op == "call_module" and n.target in layers for n in part)
        if not found or (holds and held):
            found.append(Block(start, part, cut))
            held = holds
        else:  # the block gathered so far goes on to this cut
            last = found[-1]
            found[-1] = Block(last.arrives, last.nodes + part, cut)
            held = held or holds
    return [b for b in found if any(n.op == "call_module" and n.target in layers for n in b.nodes)]


def block_module(gm: fx.GraphModule, block: Block) -> fx.GraphModule:
    """The block as a module of its own: the tensor arriving in, the block's output out; it
    calls the network's own layers and quantizers."""
    graph = fx.Graph()
    env = {block.arrives: graph.placeholder("x")}

    def arg(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":
            env[node] = graph.node_copy(node)
        return env[node]

    for node in block.nodes:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[block.output])
    return fx.GraphModule(gm, graph)


def _by_name(gm: fx.GraphModule, block: Block) -> Block:
    """The same block in another tracing of the same network (the float copy)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return Block(
        nodes[block.arrives.name],
        tuple(nodes[n.name] for n in block.nodes),
        nodes[block.output.name],
    )


@torch.no_grad()
def _run(module: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([module(xb) for xb in x.split(batch_size)])


def _own_clips(gm: fx.GraphModule, block: Block) -> dict[str, ClippedQuant]:
    """The clipped activation quantizers that only this block uses: its quantized layers' input
    quantizers and the quantizers it calls (a quantizer shared with another block, such as a
    residual stream's, keeps its clip: the block before it was learned with it)."""
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    inside = Counter(n.target for n in block.nodes if n.op == "call_module")
    clips = {}
    for target in inside:
        module = modules[target]
        if isinstance(module, QUANT_LAYERS) and isinstance(module.input_quant, ClippedQuant):
            clips[f"{target}.input_quant"] = module.input_quant
        if isinstance(module, ClippedQuant) and calls[target] == inside[target]:
            clips[target] = module
    return {name: q for name, q in clips.items() if q.bits < FULL_PRECISION}


@contextmanager
def _weights(roundings: dict[str, LearnedRounding], which: str):
    """Each layer's forward takes its weights from its rounding: `soft` or `nearest`."""
    for rounding in roundings.values():
        if which == "soft":
            rounding.layer.quant_weight = rounding.soft
        else:
            rounding.layer.quant_weight = lambda r=rounding: r.nearest * r.scale
    try:
        yield
    finally:
        for rounding in roundings.values():
            del rounding.layer.quant_weight


def _uniform(shape, generator: torch.Generator, device: torch.device) -> Tensor:
    """QDrop's draws: from `generator` on the CPU; on a GPU from the device's own generator
    (seeded with the run), not drawn on the host and copied every step."""
    if device.type == "cpu":
        return torch.rand(shape, generator=generator)
    return torch.rand(shape, device=device)


@contextmanager
def _dropped(clips: dict[str, ClippedQuant], drop: float, generator: torch.Generator):
    """QDrop: each value a quantizer outputs is its float value with probability `drop`."""

    def hook(q, args, out):
        keep = _uniform(out.shape, generator, out.device) >= drop
        return torch.where(keep, out, q.float_forward(args[0]))

    handles = [q.register_forward_hook(hook) for q in clips.values()] if drop > 0 else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reconstruct_block(
    module: fx.GraphModule,
    roundings: dict[str, LearnedRounding],
    clips: dict[str, ClippedQuant],
    inputs: Tensor,
    float_inputs: Tensor,
    targets: Tensor,
    settings: Settings,
    generator: torch.Generator,
    name: str = "block",
) -> BlockResult:
    """Learn the block's roundings and clips (see the module's docstring) and store them."""
    with _weights(roundings, "nearest"):
        nearest_error = mean_error(module, inputs, targets, settings.batch_size)
    calibrated = {n: q.alpha.detach().clone() for n, q in clips.items()}
    groups = [{"params": [r.v for r in roundings.values()], "lr": LEARNING_RATE}]
    groups += [{"params": [q.alpha], "lr": CLIP_RATE * float(q.alpha)} for q in clips.values()]
    optimizer = torch.optim.Adam(groups)
    for q in clips.values():
        q.alpha.requires_grad_(True)
    try:
        with ExitStack() as stack, torch.enable_grad():
            stack.enter_context(_weights(roundings, "soft"))
            stack.enter_context(_dropped(clips, settings.drop, generator))
            for step in track(
                range(settings.iterations), description=f"reconstruct {name}", transient=True
            ):
                pick = drawn(len(inputs), settings, generator)
                x = inputs[pick]
                if settings.drop > 0:
                    take = _uniform(x.shape, generator, x.device) < settings.drop
                    x = torch.where(take, float_inputs[pick], x)
                error = output_error(module(x), targets[pick])
                loss = regularized(error, roundings.values(), step, settings)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for n, q in clips.items():
                        q.alpha.clamp_(min=LOWEST_CLIP * float(calibrated[n]))
    finally:
        for q in clips.values():
            q.alpha.requires_grad_(False)
    weights = {n: r.layer.weight.detach().clone() for n, r in roundings.items()}
    changed = sum(r.changed() for r in roundings.values())
    for rounding in roundings.values():
        rounding.store()
    learned_error = mean_error(module, inputs, targets, settings.batch_size)
    if not learned_error < nearest_error:  # nothing gained: as calibrated, rounded to nearest
        with torch.no_grad():
            for n, r in roundings.items():
                r.layer.weight.copy_(weights[n])
            for n, q in clips.items():
                q.alpha.copy_(calibrated[n])
        changed, learned_error = 0, nearest_error
    return BlockResult(
        tuple(roundings),
        tuple(clips),
        nearest_error,
        learned_error,
        changed,
        sum(int(r.nearest.numel()) for r in roundings.values()),
    )


def reconstruct_network(
    model: nn.Module, float_net: nn.Module, images: Tensor, settings: Settings, seed: int = 0
) -> dict[str, BlockResult]:
    """Every block of `model` reconstructed in turn against `float_net` (the same network at
    full precision) on `images`; {the block's first layer: result}."""
    model.eval()
    float_net.eval()
    layers = learnable(model)
    gm = graph_module(model, images[:1])
    float_gm = graph_module(float_net, images[:1])
    if [n.name for n in gm.graph.nodes] != [n.name for n in float_gm.graph.nodes]:
        raise RuntimeError("ptq.reconstruction=block: the float copy traces to another graph")
    generator = torch.Generator().manual_seed(seed)
    x, float_x = images, images
    results = {}
    for block in blocks(gm, layers):
        module = block_module(gm, block)
        float_module = block_module(float_gm, _by_name(float_gm, block))
        targets = _run(float_module, float_x, settings.batch_size)
        names = [n.target for n in block.nodes if n.op == "call_module" and n.target in layers]
        roundings = {n: LearnedRounding(layers[n]) for n in dict.fromkeys(names)}
        result = reconstruct_block(
            module,
            roundings,
            _own_clips(gm, block),
            x,
            float_x,
            targets,
            settings,
            generator,
            names[0],
        )
        results[names[0]] = result
        log.debug("reconstruct %s: %s", names[0], result)
        x, float_x = _run(module, x, settings.batch_size), targets
    return results
