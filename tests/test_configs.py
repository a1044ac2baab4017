"""The Hydra configs compose into what the entry points expect."""

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra


def _compose(name, overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


def test_the_default_search_is_the_paper_space_on_built_in_data():
    cfg = _compose("search")
    assert list(cfg.space.wbits) == [1, 2, 3, 4] and list(cfg.space.abits) == [2, 3, 4]
    assert cfg.data._target_.endswith("SyntheticDataModule")
    assert cfg.search.optimizer.lr == 0.1 and dict(cfg.quant) == {
        "activation": "hwgq",
        "weight": "gauss",
        "signed": "ema",
    }


def test_paper_recipes_keep_the_paper_architecture_step():
    cfg = _compose("search", ["experiment=imagenet_resnet18"])
    assert cfg.model.name == "resnet18" and cfg.trainer.max_epochs == 25
    assert cfg.search.arch_optimizer.lr == 0.01
    assert cfg.scheduler._target_.endswith("StepLR")


def test_retrain_requires_an_arch():
    from omegaconf.errors import MissingMandatoryValue

    cfg = _compose("retrain")
    with pytest.raises(MissingMandatoryValue):
        cfg.arch  # noqa: B018


def test_the_slurm_launcher_config_selects_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose("search", ["hydra/launcher=slurm"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
