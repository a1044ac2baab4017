"""The image's quantizer: [0, 1] images to 8-bit codes with the normalization folded in."""

import torch
from torch import Tensor, nn


class InputQuant(nn.Module):
    """Images in [0, 1] to centred 8-bit codes: (round(255 x) - zero_point_c) * scale.

    The per-channel mean becomes an integer zero point and the std one scalar scale, so the
    normalization needs no arithmetic beyond an integer subtraction at inference.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std)
        self.register_buffer("zero_point", torch.round(255 * mean).view(1, -1, 1, 1))
        self.scale = 1.0 / (255.0 * float(std.mean()))

    def codes(self, x: Tensor) -> Tensor:
        return torch.round(x.clamp(0, 1) * 255) - self.zero_point.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.codes(x) * self.scale
