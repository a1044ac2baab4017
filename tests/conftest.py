"""Shared fixtures: Hydra configs composed once, shrunk for the CPU, writing under tmp_path."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def _threads_per_worker() -> int | None:
    """Under pytest-xdist (pyproject's addopts: `-n 2`), a worker's share of the cores: the
    workers run at once, each with torch's default of a thread per core would oversubscribe."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not workers:
        return None
    return max(1, len(os.sched_getaffinity(0)) // int(workers))


# Set before torch is imported (none of the imports above imports it): its OpenMP pool, and
# that of every process a test starts (entry points, DDP ranks, forked runs), at the worker's
# share.
if _threads_per_worker() is not None:
    os.environ["OMP_NUM_THREADS"] = str(_threads_per_worker())

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_NPZ = ROOT.parent / "shared" / "data" / "cifar10-jpeg.npz"

# Small and quick: a tiny network, a few hundred synthetic images, two epochs, CPU.
QUICK = ["model=resnet_tiny", "trainer=cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"]
QUICK_SYNTHETIC = [
    "data.num_train=600",
    "data.val_size=200",
    "data.num_test=200",
    "data.batch_size=100",
]


def load_bench(name: str):
    """bench/<name>.py as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_config(name: str, tmp_path: Path, overrides=(), base=QUICK) -> DictConfig:
    """Compose conf/<name>.yaml as Hydra would, with its output under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        other_data = any(o.startswith("data=") for o in overrides)
        quick = list(base) if other_data else [*base, *QUICK_SYNTHETIC]
        cfg = compose(name, overrides=[*quick, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)  # resolves ${hydra:...} as in a real run
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
        if "trainer" in cfg:
            cfg.trainer.enable_progress_bar = False
    return cfg


def pytest_configure(config):
    threads = _threads_per_worker()
    if threads is not None:  # torch already imported (by a plugin): its pool too
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The long work first (tests marked slow, and the groups one worker runs in a row): the
    two workers then share out the short tests at the end instead of one waiting for the
    other's last long one."""
    items.sort(
        key=lambda item: (
            not (item.get_closest_marker("slow") or item.get_closest_marker("xdist_group"))
        )
    )


@pytest.fixture
def search_cfg(tmp_path):
    return lambda *overrides: make_config("search", tmp_path, overrides)


@pytest.fixture
def retrain_cfg(tmp_path):
    return lambda *overrides: make_config("retrain", tmp_path / "retrain", overrides)


@pytest.fixture
def ptq_cfg(tmp_path):
    """ptq.py's config (it trains nothing: no trainer), quick as the others."""
    return lambda *overrides: make_config("ptq", tmp_path / "ptq", overrides, ["model=resnet_tiny"])


@pytest.fixture(autouse=True)
def no_hydra_state_between_tests():
    """What make_config sets up for a test (Hydra's run config, relative paths resolved
    against its start directory) ends with it."""
    yield
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


@pytest.fixture
def no_search_figures(monkeypatch):
    """search() without its figures (bit_allocation.png, selector_evolution.png, ...), for a
    test that reads neither them nor their drawing: they are drawn from what found.json and
    history.json hold, after the search, and take seconds for a network of many layers (9 s
    for tv_mobilenet_v2's 52). tests/report draws them; test_search_program.py checks a
    search writes them."""
    import edmips.programs.search

    monkeypatch.setattr(edmips.programs.search, "write_search_figures", lambda *a, **k: [])


@pytest.fixture
def narrow_alexnet(monkeypatch):
    """tv_alexnet built and converted as ever, its classifier's two hidden linears 64 wide
    instead of 4096: the same graph (the adaptive pool repeating a 1 x 1 map to 6 x 6 at 64 px,
    dropouts, a flattened map into three linears) with 1/15 of the weights, whose 54 million
    otherwise take most of the time of every test of it."""
    from torch import nn

    from edmips.models import tv

    float_model = tv.float_model

    def narrowed(arch, num_classes=1000, **kw):
        net = float_model(arch, num_classes=num_classes, **kw)
        if arch == "alexnet":
            layers = net.body.classifier  # Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
            assert all(isinstance(layers[i], nn.Linear) for i in (1, 4, 6))
            layers[1] = nn.Linear(layers[1].in_features, 64)
            layers[4] = nn.Linear(64, 64)
            layers[6] = nn.Linear(64, num_classes)
        return net

    monkeypatch.setattr(tv, "float_model", narrowed)
