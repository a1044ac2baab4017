"""Batch norm folded into the conv in front of it, as deployment kernels want it.

Training (`fold_batch_norms`, torch.ao.nn.intrinsic.qat's _ConvBnNd): each conv whose output
goes only into a batch norm quantizes `W * s`, `s = gamma / sqrt(running_var + eps)`, and
divides its output by s again, so the batch norm after it still normalizes with the batch's
statistics while training; once `freeze_batch_norms` has run (retrain.py's `bn_freeze_epoch`)
it uses the running ones, so that training computes what inference will.

Post-training (`absorb_batch_norms`): the weights become `W * s` for good and the batch norm is
left with a unit scale, as ACIQ absorbs batch norm before it quantizes anything.

A weight quantizer with a scale per output channel (every edmips family's, but the
classifier's) quantizes `W * s` on the same grid as W, up to float rounding: there the fold
changes which weights are stored, not what the network computes. It matters for a scale per
tensor, and for what reads the weights' own spread (per-channel bit allocation).
"""

import torch
from torch import fx, nn

from edmips.nn.layers import MIXED_LAYERS, QUANT_LAYERS, QuantConv2d, batch_norm_scale
from edmips.quant.protocol import ActivationQuantizer, Quantizer, quantizers


class LayerTracer(fx.Tracer):
    """torch.fx, with the quantized layers and the quantizers kept whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*QUANT_LAYERS, *MIXED_LAYERS, Quantizer)) or super().is_leaf_module(
            m, qualname
        )


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) names where a fixed-bit conv's only reader is a batch norm."""
    graph = model.graph if isinstance(model, fx.GraphModule) else LayerTracer().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], QuantConv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        if isinstance(modules[users[0].target], nn.BatchNorm2d):
            pairs.append((node.target, users[0].target))
    return pairs


def fold_batch_norms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every (conv, batch norm) pair for training (in place), but where the conv has a
    bias (rare in front of a batch norm, and off the fold's grid); the pairs folded."""
    pairs = [(c, b) for c, b in conv_bn_pairs(model) if model.get_submodule(c).bias is None]
    for conv, bn in pairs:
        model.get_submodule(conv).fold(model.get_submodule(bn))
    return pairs


def folded_batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m.folded_bn for m in model.modules() if isinstance(m, QuantConv2d) and m.folded_bn]


def freeze_batch_norms(model: nn.Module) -> None:
    """The folded batch norms normalize with their running statistics from now on, and keep
    them (eval mode, set again at each call: a training epoch's start resets modes)."""
    for bn in folded_batch_norms(model):
        bn.eval()


@torch.no_grad()
def absorb_batch_norms(model: nn.Module) -> list[tuple[str, str]]:
    """Multiply every pair's conv weights by s for good (in place): the batch norm keeps its
    shift, its mean scaled by s, and its scale becomes 1. In eval mode the network computes
    what it did. The pairs."""
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        s = batch_norm_scale(bn)
        conv.weight.mul_(s.view(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.mul_(s)
        bn.running_mean.mul_(s)
        if bn.affine:  # a scale of 1: gamma = sqrt(running_var + eps)
            bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
        else:  # no scale to give back: the variance is made what cancels eps
            bn.running_var.fill_(1 - bn.eps)
    return pairs


@torch.no_grad()
def absorb_into_bias(model: nn.Module) -> list[tuple[str, str]]:
    """In a network holding a quantizer that `absorbs_batch_norm` (int8sim's; no other is
    changed), every (conv, batch norm) pair: the conv's weights become `W * s` and its bias
    `beta - running_mean * s`, on its accumulator's grid, and the batch norm an nn.Identity (in
    place, for eval mode: the copy that is lowered). A conv rounds the bias onto that grid itself
    (`quant_bias`): on its input quantizer's, or, where its input arrives quantized, on the grid
    of the quantizer in front of it (made the one it `arrives_through`). A fold for training
    is undone first: its weights quantize `W * s` already. The pairs absorbed."""
    if not any(getattr(m, "absorbs_batch_norm", False) for _, m in quantizers(model)):
        return []
    graph = model.graph if isinstance(model, fx.GraphModule) else LayerTracer().trace(model)
    inputs = {n.target: n.args[0] for n in graph.nodes if n.op == "call_module"}
    modules = dict(model.named_modules())
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        s = batch_norm_scale(bn)
        shift = -bn.running_mean * s + (bn.bias if bn.affine else 0)
        bias = shift if conv.bias is None else conv.bias * s + shift
        conv.weight.mul_(s.view(-1, 1, 1, 1))
        source = inputs[conv_name]
        feeding = modules.get(source.target) if isinstance(source, fx.Node) else None
        if conv.input_quant is None and isinstance(feeding, ActivationQuantizer):
            # Its quant_bias rounds the bias on that grid, in the dtype of each forward: once
            # in float32, a bias of many units would be off the grid in the float64 reference.
            object.__setattr__(conv, "arrives_through", feeding)
        conv.bias = nn.Parameter(bias.detach().clone())
        conv._folded = ()
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent), attr, nn.Identity())
    return pairs
