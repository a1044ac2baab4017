"""Every torchvision classifier as `tv_<name>` (tv_resnet18, tv_mobilenet_v2, ...).

The torchvision network is built without downloading anything (weights=None), optionally
loaded from a local full-precision state dict (`weights=/path/to/state_dict.pt`), put behind a
per-channel normalization of the [0, 1] image, and converted by `quantize`: the first conv
and the last linear get 8-bit weights (and 8-bit inputs where these are non-negative), the
rest 32 bits until a search or a retrain sets them.
"""

import torch
import torchvision
from torch import Tensor, nn

from edmips.models.registry import register_model
from edmips.models.weights import WEIGHTS_MODULE, load_weights
from edmips.nn.convert import fixed_ends, to_fixed
from edmips.nn.fx_quantize import quantize

# Networks whose auxiliary classifiers and input transform are off here: one output, the image
# as the data module normalizes it.
_NO_AUX = {"googlenet", "inception_v3"}


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NormalizedNet(nn.Module):
    """The float network: normalization, then the torchvision model (`body`)."""

    def __init__(self, body: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))


def float_model(
    arch: str,
    num_classes: int = 1000,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    weights: str | None = None,
    **kw,
) -> NormalizedNet:
    """The torchvision network `arch` in full precision, with its normalization."""
    if arch in _NO_AUX:
        kw = {"aux_logits": False, "init_weights": True, "transform_input": False, **kw}
    body = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kw)
    if weights is not None:
        load_weights(body, weights)
    return NormalizedNet(body, mean, std)


def quantized_model(arch: str, **kw) -> nn.Module:
    net = float_model(arch, **kw)
    model = quantize(net)
    setattr(model, WEIGHTS_MODULE, "body")  # a weights file holds the torchvision network's
    model.image_size = getattr(net.body, "image_size", None)  # a ViT's one size, else None
    return to_fixed(model, fixed_ends(model))


def check_image_size(model: nn.Module, input_size) -> None:
    """Refuse, in one line, data of another size than the one the network is built for (a
    torchvision ViT's `image_size`), before anything runs it."""
    size = getattr(model, "image_size", None)
    if size is not None and tuple(input_size[1:]) != (size, size):
        name = getattr(model, "name", type(model).__name__)
        height, width = input_size[1:]
        raise ValueError(f"model {name} needs {size}x{size} images, the data has {height}x{width}")


def _builder(arch: str):
    def build(**kw) -> nn.Module:
        return quantized_model(arch, **kw)

    build.__name__ = f"tv_{arch}"
    build.__doc__ = f"torchvision's {arch}, quantizable."
    return build


for _arch in torchvision.models.list_models(module=torchvision.models):
    register_model(_builder(_arch))
