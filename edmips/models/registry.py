"""Model registry: `@register_model` on a builder, `create_model(name, **kwargs)` to build."""

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(list_models())}")
    model = _MODELS[name](**kwargs)
    model.name = name
    return model
