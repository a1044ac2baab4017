"""The float network (`retrain.py arch=float`): the accuracy ceiling of every quantized one, and
the start of post-training quantization and of `init=float` fine-tuning.

Every conv/linear at 32-bit weights and inputs and every other quantizer at full precision
(edmips.nn.convert.to_float), trained with the retrain recipe. Nothing is quantized, so
nothing is exported to integers: the run writes the weights (`weights.pt`, what
`model.weights=` loads into the same model) and the test accuracy of the float network.
"""

from pathlib import Path

import torch
from torch import nn

from edmips.cost.layers import LayerCost
from edmips.models.weights import float_state
from edmips.quant import FULL_PRECISION
from edmips.records import arch as arch_file
from edmips.records.files import save_state_dict_atomic

KIND = "float"
WEIGHTS = "weights.pt"


def float_arch(model_name: str, costs: list[LayerCost], quantizers, data: str) -> arch_file.Arch:
    """The record of the float network: every conv/linear (the first and the last included, the
    image's input too) at 32 bits."""
    bits = [FULL_PRECISION] * len(costs)
    space = {"wbits": [FULL_PRECISION], "abits": [FULL_PRECISION]}
    return arch_file.build(model_name, space, costs, bits, bits, None, None, quantizers, data=data)


def save_weights(model: nn.Module, out: Path) -> Path:
    """`weights.pt` in the run directory, atomically."""
    return save_state_dict_atomic(float_state(model), Path(out) / WEIGHTS)


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> dict:
    """Top-1 and top-5 accuracy of the network (in eval mode, in float32, on its device) over
    the loader's images, as metrics.json records them."""
    was_training = model.training
    network = model.eval()
    device = next(network.parameters()).device
    right = right5 = total = 0
    for x, y in loader:
        logits = network(x.to(device)).float().cpu()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        right += int((logits.argmax(1) == y).sum())
        right5 += int((top5 == y[:, None]).any(1).sum())
        total += len(y)
    model.train(was_training)
    return {"test_acc": right / total, "test_acc_top5": right5 / total, "test_images": total}
