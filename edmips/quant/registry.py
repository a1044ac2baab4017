"""Quantizers by name, and the families of them a network is built with.

A module of edmips.quant that defines a quantizer registers it with `@register("name")`; the
first lookup imports every module of the package, so a new quantizer is found without an edit
anywhere else. A family names the three kinds a network uses: the layers' activation and
weight quantizers, and the signed quantizer put where a layer's input can be negative (a
residual sum, a normalized image in a traced model). `conf/quant/<family>.yaml` holds one.
"""

from dataclasses import dataclass

from edmips import Registry
from edmips.quant.protocol import ActivationQuantizer, WeightQuantizer

# Modules of edmips.quant that define no quantizer: the Triton kernels need triton (and a GPU).
_QUANTIZERS = Registry("quantizer", __package__, skip=frozenset({"kernels"}))


def register(name: str):
    """Class decorator: the quantizer is found by `get(name)`."""

    def add(cls):
        _QUANTIZERS.add(name, cls)
        cls.name = name
        return cls

    return add


def get(name: str) -> type:
    return _QUANTIZERS.get(name)


def names() -> list[str]:
    return _QUANTIZERS.names()


@dataclass(frozen=True)
class Family:
    """The quantizers of a network, by registry name."""

    activation: str = "hwgq"
    weight: str = "gauss"
    signed: str = "ema"

    def check(self) -> None:
        """An unknown name, or one of the wrong kind, is one line naming the choices."""
        for kind, base in (
            ("activation", ActivationQuantizer),
            ("weight", WeightQuantizer),
            ("signed", ActivationQuantizer),
        ):
            if not issubclass(get(getattr(self, kind)), base):
                raise ValueError(f"quant.{kind}: {getattr(self, kind)!r} is no {base.__name__}")

    @property
    def weight_bits(self) -> tuple[int, ...]:
        return get(self.weight).supported_bits

    @property
    def activation_bits(self) -> tuple[int, ...]:
        return get(self.activation).supported_bits


EDMIPS = Family()


def family(cfg) -> Family:
    """The family a run's config names (`quant: {activation, weight, signed}`); a config that
    names none (a run recorded without the group) is built with edmips's."""
    quant = cfg.get("quant") if cfg is not None else None
    if quant is None:
        return EDMIPS
    return Family(quant.activation, quant.weight, quant.signed)
