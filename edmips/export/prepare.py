"""What a network must be before it is lowered, and the form the lowering reads: a float64
copy traced by torch.fx (a model converted by `edmips.nn.quantize` is traced already;
edmips's own ResNets are traced here, their quantized layers and quantizers kept whole)."""

import copy

import torch
from torch import fx, nn

from edmips.nn.fold import absorb_into_bias
from edmips.nn.layers import MIXED_LAYERS, QuantConv2d, QuantLinear
from edmips.quant import FULL_PRECISION, Quantizer
from edmips.quant.protocol import quantizers

# Kept whole when a model is traced here: what the lowering reads as one operation.
_LEAVES = (QuantConv2d, QuantLinear, *MIXED_LAYERS, Quantizer)


class ExportError(ValueError):
    """The network cannot be made integer-only; the message names the layer and the reason."""


def check_exportable(model: nn.Module) -> None:
    """Refuse, by name, a layer that is not a fixed integer one, then a quantizer that is not
    calibrated."""
    modules = list(model.named_modules())
    for name, layer in modules:
        if isinstance(layer, MIXED_LAYERS):
            raise ExportError(
                f"layer {name}: a composite search layer; give it fixed bit-widths "
                "(retrain the found architecture) before export"
            )
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            if layer.wbits >= FULL_PRECISION:
                raise ExportError(f"layer {name}: weights are not quantized (32 bits)")
            if layer.abits == FULL_PRECISION:
                raise ExportError(f"layer {name}: input activations are not quantized (32 bits)")
    for name, quantizer in quantizers(model):
        if quantizer.bits >= FULL_PRECISION:
            raise ExportError(f"quantizer {name}: values not quantized (32 bits)")
        if not quantizer.is_calibrated():
            raise ExportError(f"quantizer {name}: range never calibrated (train first)")


def reference_copy(model: nn.Module, dtype=torch.float64, device="cpu") -> nn.Module:
    """The float64 CPU copy, in eval mode, that the integer graph reproduces (or the same
    network in another type or on another device); in a network of quantizers that absorb batch
    norms (int8sim), those are the convs' weights and biases."""
    reference = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    absorb_into_bias(reference)
    return reference


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def traced(model: nn.Module) -> fx.GraphModule:
    """The model as a torch.fx graph (itself, if it is one already)."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same refusal
        raise ExportError(f"model {type(model).__name__}: torch.fx cannot trace it ({e})") from None
    gm = fx.GraphModule(model, graph)
    gm.name = getattr(model, "name", type(model).__name__)
    return gm
