"""Models: a registry of builders; importing this package registers the built-in ones."""

from edmips.models import resnet, tv  # noqa: F401  (registers the ResNets, torchvision's)
from edmips.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
