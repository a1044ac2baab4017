"""Quantizers by name, and the families of them a network is built with.

A module of edmips.quant that defines a quantizer registers it with `@register("name")`; the
first lookup imports every module of the package, so a new quantizer is found without an edit
anywhere else. A family names the three kinds a network uses: the layers' activation and
weight quantizers, and the signed quantizer put where a layer's input can be negative (a
residual sum, a normalized image in a traced model). `conf/quant/<family>.yaml` holds one.
"""

from dataclasses import astuple, dataclass

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
        for kind, base in zip(KINDS, (ActivationQuantizer, WeightQuantizer, ActivationQuantizer)):
            if not issubclass(get(getattr(self, kind)), base):
                raise ValueError(f"quant.{kind}: {getattr(self, kind)!r} is no {base.__name__}")

    def int8(self) -> "Family":
        """Each member's int8 form (edmips.quant.pow2: the quantizer that computes what
        onnxruntime's int8 kernels compute), itself where it is one already."""
        forms = [int8_form(getattr(self, kind)) for kind in KINDS]
        for kind, name, form in zip(KINDS, astuple(self), forms):
            if not getattr(get(form), "int8_of", ""):
                raise ValueError(f"deploy=int8: quant.{kind} {name!r} has no int8 form")
        return Family(*forms)

    @classmethod
    def from_spec(cls, spec, deploy: str = "float") -> "Family":
        """The family `conf/quant/<name>.yaml` describes, its members checked; in their int8
        forms where `deploy` is int8."""
        if deploy not in DEPLOY:
            raise ValueError(f"deploy={deploy!r}: choose from {', '.join(DEPLOY)}")
        members = cls(spec["activation"], spec["weight"], spec["signed"])
        members.check()
        return members.int8() if deploy == "int8" else members

    @property
    def weight_bits(self) -> tuple[int, ...]:
        return get(self.weight).supported_bits

    @property
    def activation_bits(self) -> tuple[int, ...]:
        return get(self.activation).supported_bits


EDMIPS = Family()
KINDS = ("activation", "weight", "signed")
# float: the family's own quantizers; int8: their int8 forms, whose model_int8.onnx runs every
# conv on onnxruntime's QLinearConv
DEPLOY = ("float", "int8")


def int8_form(name: str) -> str:
    """The registry name of the quantizer's int8 form: itself where it is one or has none."""
    if getattr(get(name), "int8_of", ""):
        return name
    return next((n for n in names() if getattr(get(n), "int8_of", "") == name), name)
