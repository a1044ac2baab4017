"""Model registry: `@register_model` on a builder, `create_model(name, **kwargs)` to build."""

from collections.abc import Callable

from torch import nn

from edmips import Registry

_MODELS = Registry("model")


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return _MODELS.add(builder.__name__, builder)


def list_models() -> list[str]:
    return _MODELS.names()


def create_model(name: str, **kwargs) -> nn.Module:
    model = _MODELS.get(name)(**kwargs)
    model.name = name
    return model
