"""One registry serves quantizers, cost models, models and ONNX forms: a name registers once (a
second builder under a model's name is refused, not swapped in), an unknown name is refused
with the choices."""

import pytest

from edmips import Registry
from edmips.models import create_model
from edmips.models.registry import list_models, register_model


def test_a_name_registers_once_and_an_unknown_one_lists_the_choices():
    registry = Registry("widget")
    registry.add("b", 2)
    registry.add("a", 1)
    assert registry.get("a") == 1 and registry.names() == ["a", "b"]
    with pytest.raises(ValueError, match="^widget 'a' is registered twice$"):
        registry.add("a", 1)
    with pytest.raises(ValueError, match="^unknown widget 'c': choose from a, b$"):
        registry.get("c")


def test_a_second_model_under_a_taken_name_is_refused():
    def resnet8(**kw):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="^model 'resnet8' is registered twice$"):
        register_model(resnet8)
    assert create_model("resnet8", num_classes=10).name == "resnet8"  # the original builder
    with pytest.raises(ValueError, match="^unknown model 'vgg7': choose from "):
        create_model("vgg7")
    assert "resnet8" in list_models()
