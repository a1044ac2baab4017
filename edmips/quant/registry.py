"""Quantizers by name, and the families of them a network is built with.

A module of edmips.quant that defines a quantizer registers it with `@register("name")`; the
first lookup imports every module of the package, so a new quantizer is found without an edit
anywhere else. A family names the three kinds a network uses: the layers' activation and
weight quantizers, and the signed quantizer put where a layer's input can be negative (a
residual sum, a normalized image in a traced model). `conf/quant/<family>.yaml` holds one.
"""

from dataclasses import dataclass

from edmips import import_submodules
from edmips.quant.protocol import ActivationQuantizer, WeightQuantizer

_QUANTIZERS: dict[str, type] = {}
# Modules of edmips.quant that define no quantizer: the Triton kernels need triton (and a GPU).
_SKIPPED = frozenset({"kernels"})


def register(name: str):
    """Class decorator: the quantizer is found by `get(name)`."""

    def add(cls):
        if _QUANTIZERS.get(name, cls) is not cls:
            raise ValueError(f"quantizer {name!r} is registered twice")
        cls.name = name
        _QUANTIZERS[name] = cls
        return cls

    return add


def _load_all() -> None:
    import_submodules(__package__, _SKIPPED)


def get(name: str) -> type:
    _load_all()
    if name not in _QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}: choose from {', '.join(names())}")
    return _QUANTIZERS[name]


def names() -> list[str]:
    _load_all()
    return sorted(_QUANTIZERS)


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
