"""On a GPU, a search training step never synchronises the host with the device."""

import pytest
import torch

from edmips.programs.builders import build_trainer
from edmips.programs.checks import check_search
from edmips.programs.search import build_search

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(
    "overrides",
    [
        ("search.compile=false",),  # eager: the Triton kernels
        ("search.compile=false", "target_bits=2.0"),  # the budget's price, solved on the device
        # several budgets: a price each, solved jointly on the device (2.5 bits per weight)
        ("search.compile=false", "target_bits=2.0", "budget.weight_size=23840B"),
        ("search.compile=false", "search.alternating=true"),
        ("search.compile=true",),
    ],
)
def test_search_training_step_has_no_host_sync(search_cfg, overrides):
    cfg = search_cfg(
        "model=resnet8",
        "trainer.accelerator=gpu",
        "trainer.max_epochs=1",
        "search.warmup_epochs=0",  # the selectors train from the first step
        "+trainer.limit_train_batches=6",
        "+trainer.limit_val_batches=0",
        *overrides,
    )
    datamodule, module = build_search(cfg, check_search(cfg))
    step = module.training_step
    steps = []
    warmup = 2 if "search.compile=true" in overrides else 0  # compiling may synchronise

    def checked_step(batch, batch_idx):
        if batch_idx >= warmup:
            torch.cuda.set_sync_debug_mode("error")  # any .item(), .cpu(), nonzero() raises
        try:
            return step(batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            steps.append(batch_idx)

    module.training_step = checked_step
    build_trainer(cfg, "search").fit(module, datamodule=datamodule)
    assert steps == list(range(6))
