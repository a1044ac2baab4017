"""`with calibration(model):` quantizers that track a range from data update it in every
forward, in eval mode too, so ranges can be gathered with batch norm frozen. Outside it they
update in training mode only."""

from contextlib import contextmanager

from torch import nn

from edmips.quant.protocol import ActivationQuantizer


@contextmanager
def calibration(model: nn.Module):
    tracked = [m for m in model.modules() if isinstance(m, ActivationQuantizer) and m.calibrates]
    for m in tracked:
        m.calibrating = True
    try:
        yield model
    finally:
        for m in tracked:
            m.calibrating = False
