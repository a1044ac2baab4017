"""The in-memory DataModules inside a real Lightning Trainer, and their device/rank wiring."""

from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from torch import nn

from edmips.data import SyntheticDataModule


def small(**kw):
    args = dict(num_train=200, num_test=60, val_size=40, batch_size=16, seed=0)
    return SyntheticDataModule(**{**args, **kw})


class Probe(pl.LightningModule):
    """A linear classifier that records what the loaders hand it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.seen = {"train": [], "val": [], "test": []}

    def _step(self, split, batch):
        x, y = batch
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= x.min() <= x.max() <= 1
        self.seen[split].append((self.current_epoch, y.clone()))
        return nn.functional.cross_entropy(self.fc(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._step("val", batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._step("test", batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_validate_test_on_cpu_trainer(tmp_path):
    dm, model = small(), Probe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=3,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    epochs = [[y for e, y in model.seen["train"] if e == epoch] for epoch in (0, 1)]
    assert [len(b) for b in epochs] == [3, 3]
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))  # reshuffled per epoch
    val_labels = torch.cat([y for e, y in model.seen["val"] if e == 0])
    assert torch.equal(val_labels, dm.splits["val"][1])  # every sample, in order
    trainer.validate(model, datamodule=dm, verbose=False)
    results = trainer.test(model, datamodule=dm, verbose=False)
    assert sum(len(y) for _, y in model.seen["test"]) == 60 and "test/loss" in results[0]


def fake_trainer(rank, world_size, epoch=0):
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    # epochs already trained, as Lightning counts them (also right after a resume)
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    return SimpleNamespace(
        strategy=strategy,
        global_rank=rank,
        world_size=world_size,
        fit_loop=SimpleNamespace(epoch_progress=progress),
    )


def test_setup_takes_device_rank_and_epoch_from_the_trainer():
    shards = []
    for rank in range(2):
        dm = small()
        dm.trainer = fake_trainer(rank, 2, epoch=3)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert (loader.rank, loader.world_size, loader.epoch) == (rank, 2, 3)
        assert loader.device == torch.device("cpu") and len(loader) == 80 // 16
        shards.append(torch.cat([x.flatten(1) for x, _ in dm.val_dataloader()]))
    assert len(shards[0]) == len(shards[1]) == 20
    # Disjoint validation shards: no image appears on both ranks.
    assert not (torch.cdist(shards[0], shards[1]).min() == 0)


def test_without_a_trainer_data_stays_on_cpu_single_rank():
    dm = small(on_device=False)
    dm.setup()
    loader = dm.train_dataloader()
    assert (loader.rank, loader.world_size, loader.device.type) == (0, 1, "cpu")
