"""conf/data/*.yaml: every key is a constructor argument and seed comes from the top level."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from edmips.data import CIFAR10DataModule, ImageNetDataModule, SyntheticDataModule

CONF = Path(__file__).parents[2] / "conf" / "data"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("synthetic", SyntheticDataModule),
        ("cifar10", CIFAR10DataModule),
        ("imagenet", ImageNetDataModule),
    ],
)
def test_config_instantiates(name, cls):
    cfg = OmegaConf.create({"seed": 3, "data": OmegaConf.load(CONF / f"{name}.yaml")})
    dm = instantiate(cfg.data)
    assert type(dm) is cls and dm.name == name and dm.seed == 3
    assert dm.batch_size == {"synthetic": 128, "cifar10": 128, "imagenet": 256}[name]
    if hasattr(dm, "path"):
        assert dm.path.is_absolute() and dm.path.parts[-2:] == ("data", name)
