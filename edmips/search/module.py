"""SearchModule: EdMIPS's differentiable search as a LightningModule.

Loss = cross-entropy + mu * the expected cost in its stated unit (edmips/cost/model.py; for
BitOps, the default, the expected equivalent bits sqrt(expected BitOps / FLOPs)). Weights
and architecture parameters (the selector logits alpha_w, alpha_a) have their own optimizers
and, by default, are both updated from one forward/backward pass (EdMIPS's single-pass
optimization). `alternating=True` alternates instead: even steps update the weights on the
classification loss, odd steps the architecture on the full loss.

The first `warmup_epochs` train the weights only: the selectors start to move once the network
computes something worth keeping bits for. From then on the selectors' sharpness (inverse
temperature) rises geometrically to `sharpness` at the last epoch, so the distributions the
network trains under end close to the winner-take-all network that is kept.

With budgets (`budgets`, edmips/search/budgets.py) there is no penalty weight: a price, solved
for before every forward pass (edmips/search/budget.py), tilts the selectors so that the
expected cost is the target; `mu` then records that price. With several budgets each is an
upper bound with a price of its own (edmips/search/joint.py); `mu` records the primary's.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edmips.core.classifier import Classifier, make_optimizer
from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost, searched
from edmips.nn.layers import is_selector
from edmips.search.budget import tilt_selectors
from edmips.search.budgets import Budgets
from edmips.search.discretize import choose_bits
from edmips.search.joint import JointPrice


class SearchModule(Classifier):
    def __init__(
        self,
        model: nn.Module,
        costs: list[LayerCost],
        num_classes: int,
        mu: float,
        optimizer,
        arch_optimizer,
        scheduler=None,
        alternating: bool = False,
        warmup_epochs: int = 0,
        sharpness: float = 1.0,
        channels_last: bool = False,
        compile: str | None = None,
        cost: "str | cost_models.CostModel" = "bitops",
        budgets: Budgets | None = None,
    ):
        super().__init__(model, num_classes, channels_last, compile)
        self.automatic_optimization = False
        self.layers = searched(model, costs)
        # by name, or configured (a latency table holds its file: programs.checks configures it)
        self.cost = cost_models.get(cost) if isinstance(cost, str) else cost
        if not self.layers:
            raise ValueError("the model has no searched layers: nothing to search")
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.optimizer, self.arch_optimizer, self.scheduler = optimizer, arch_optimizer, scheduler
        self.alternating = alternating
        self.wspaces = [m.wbits for _, m in self.layers]
        self.aspaces = [m.abits_space() for _, m in self.layers]
        self.budgets = budgets
        # the price (or prices) that hold the expected cost on the budgets; None: mu mode
        self.price = None if budgets is None else budgets.price()
        self.warmup_epochs, self.final_sharpness = warmup_epochs, sharpness
        # for the figures: the selectors at the start, then after each epoch ("epoch" counts
        # the epochs trained)
        self.history: list[dict] = []

    # -- the architecture, as it stands ------------------------------------------------------
    def probs(self) -> tuple[list[Tensor], list[Tensor]]:
        return [m.probs_w() for _, m in self.layers], [m.probs_a() for _, m in self.layers]

    def apply_budget(self) -> None:
        """Tilt the selectors so that the expected cost is on the budget (no-op without one)."""
        if self.price is not None:
            self.mu.copy_(tilt_selectors([m for _, m in self.layers], self.price))

    def sharpness_at(self, epoch: int) -> float:
        """1 until the selectors start to train, then geometric up to the final sharpness."""
        span = self.trainer.max_epochs - 1 - self.warmup_epochs
        if epoch <= self.warmup_epochs or span <= 0:
            return 1.0
        return self.final_sharpness ** ((epoch - self.warmup_epochs) / span)

    def expected_cost(self) -> Tensor:
        """The expected cost in its stated unit (equivalent bits for BitOps, ms for a latency
        table), differentiable: the penalty of mu mode."""
        return self.cost.expected(self.layers)

    def choose(self, mode: str = "argmax", trials: int = 100, seed: int = 0):
        """Discrete (wbits, abits) per searched layer; mode "budget" lands on the target."""
        self.apply_budget()
        pw, pa = self.probs()
        return choose_bits(pw, pa, self.wspaces, self.aspaces, mode, trials, seed, self.budgets)

    def discrete_bits(self) -> float:
        """The stated cost of the winner-take-all architecture."""
        wbits, abits = self.choose()
        costs = [c for c, _ in self.layers]
        return self.cost.stated_total(self.cost.total(costs, wbits, abits), costs)

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        opt_w, opt_a = self.optimizers()
        x, y = batch
        searching = self.current_epoch >= self.warmup_epochs
        update_w = not self.alternating or batch_idx % 2 == 0 or not searching
        update_a = searching and (not self.alternating or batch_idx % 2 == 1)
        loss, ce, logits = self.update(x, y, opt_w, opt_a, update_w, update_a, self.manual_backward)
        self.train_acc(logits.detach(), y)
        self.log_dict(
            {"train/loss": loss.detach(), "train/ce": ce.detach(), "train/acc": self.train_acc},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,  # at epoch end only: no per-step communication
        )
        return loss

    def update(self, x, y, opt_w, opt_a, update_w: bool, update_a: bool, backward):
        """One step of the search on a batch: forward, loss, `backward(loss)`, then the weights'
        and / or the selectors' optimizer step; returns the loss, its cross-entropy and the
        logits. Outside a Trainer (bench/step.py), `backward` is Tensor.backward."""
        self.apply_budget()
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        # under a budget the price already holds the bits on the target: no penalty term
        penalised = update_a and self.price is None
        loss = ce + self.mu * self.expected_cost() if penalised else ce
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        backward(loss)
        if update_w:
            opt_w.step()
        if update_a:
            opt_a.step()
        return loss, ce, logits

    def on_train_epoch_start(self) -> None:
        self._sharpen(self.current_epoch)

    def _sharpen(self, epoch: int) -> None:
        sharpness = self.sharpness_at(epoch)
        for _, m in self.layers:
            m.sharpness.fill_(sharpness)

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def history_entry(self, epochs_trained: int, val_acc: float | None) -> dict:
        self.apply_budget()
        pw, pa = self.probs()
        return {
            "epoch": epochs_trained,
            "mu": float(self.mu),
            "sharpness": float(self.layers[0][1].sharpness),
            # the file's key: the expected cost in its stated unit, whatever the cost
            "expected_bits": float(self.expected_cost().detach()),
            # before training the selectors are equal: there is no choice to discretize yet
            "discrete_bits": self.discrete_bits() if epochs_trained else None,
            "val_acc": val_acc,
            "probs_w": [p.tolist() for p in pw],
            "probs_a": [p.tolist() for p in pa],
        }

    def on_train_start(self) -> None:
        if not self.history:  # a resumed search keeps its own start
            self.history.append(self.history_entry(0, val_acc=None))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_acc = _maybe_float(self.trainer.callback_metrics.get("val/acc"))
        entry = self.history_entry(self.current_epoch + 1, val_acc)
        self.history.append(entry)
        # The selectors are the same on every rank (all-reduced gradients): log them once.
        arch = {
            "arch/mu": entry["mu"],
            "arch/expected_bits": entry["expected_bits"],
            "arch/discrete_bits": entry["discrete_bits"],
        }
        for (cost, layer), p_w, p_a in zip(self.layers, entry["probs_w"], entry["probs_a"]):
            arch.update({f"arch/{cost.name}/w{b}": p for b, p in zip(layer.wbits, p_w)})
            arch.update({f"arch/{cost.name}/a{b}": p for b, p in zip(layer.abits_space(), p_a)})
        self.log_dict(arch, rank_zero_only=True)

    def on_train_end(self) -> None:
        """Under DDP, check that every rank ends with the same architecture parameters."""
        if self.trainer.world_size == 1:
            return
        alphas = torch.cat(
            [p.detach().flatten() for n, p in self.model.named_parameters() if is_selector(n)]
        )
        gathered = self.all_gather(alphas)
        if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
            raise RuntimeError(
                "architecture parameters differ across ranks: their gradients were not synchronised"
            )

    def configure_optimizers(self):
        named = list(self.model.named_parameters())
        weights = [p for n, p in named if not is_selector(n)]
        arch = [p for n, p in named if is_selector(n)]
        optimizers = [
            make_optimizer(self.optimizer, weights),
            make_optimizer(self.arch_optimizer, arch),
        ]
        if self.scheduler is None:
            return optimizers
        # The selectors keep a constant rate: a decayed one freezes them before the weights
        # have settled, and the rising sharpness already makes their late steps decisive.
        return optimizers, [self.scheduler(optimizers[0])]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["arch_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("arch_history", [])
        state = checkpoint["state_dict"]
        if "budget.prices" in state:  # checkpoints that named the price module `budget`
            state["price.prices"] = state.pop("budget.prices")
        if isinstance(self.price, JointPrice):  # checkpoints before the prices were kept
            state.setdefault("price.prices", self.price.prices.clone())
        # The sharpness of the checkpoint's epoch (a buffer outside the state dict): a resume
        # after the last epoch starts no epoch that would set it, and discretizes with it.
        self._sharpen(checkpoint["epoch"])


def _maybe_float(x) -> float | None:
    return None if x is None else float(x)
