"""Float weights from a local state-dict file, for any model of the registry.

The file holds a state dict, a dict with one under "state_dict", or a Lightning checkpoint
(whose network's entries carry the "model." prefix of edmips's modules). A file that is not a
state dict, is one of another network or holds a NaN or an infinite value, is refused in one
line naming the file (and the tensor).
`float_state(model)` is what such a file of a model holds, so the float network's weights load
back into the model they came from.
"""

import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor, nn

from edmips.quant.protocol import quantizers

PREFIX = "model."  # where edmips's LightningModules keep the network
# A builder whose file holds one submodule's state dict (a converted torchvision model: the
# torchvision network's) names it in this attribute of the model.
WEIGHTS_MODULE = "weights_module"
PICKLE = b"\x80"  # how a pickle begins: torch.save's files are zip archives or pickles


def network_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's entries of a LightningModule's state dict, the "model." prefix stripped
    (the module's own entries, like the search's mu, dropped)."""
    return {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict a file holds (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path}: no such file")

    def fail(reason: str):
        raise ValueError(f"model weights {path}: not a state dict ({reason})")

    state = load_torch_file(path, fail)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"model weights {path}: not a state dict (names to tensors)")
    if any(k.startswith(PREFIX) for k in state):
        state = network_state(state)
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            what = "NaN" if bool(tensor.isnan().any()) else "an infinite value"
            raise ValueError(f"model weights {path}: {name!r} holds {what}")
    return state


def load_torch_file(path: Path, fail: Callable[[str], NoReturn]):
    """What torch.load (weights only) reads from a local file; `fail(reason)`, one line, where
    torch.save did not write the file or it does not load."""
    with open(path, "rb") as f:
        first = f.read(1)
    if not (zipfile.is_zipfile(path) or first == PICKLE):
        fail("not a file torch.save wrote")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds; one line says which file
        lines = str(e).strip().splitlines()
        fail(f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)


def load_weights(model: nn.Module, path: str | Path, optional: Iterable[str] = ()) -> nn.Module:
    """Load the state dict of `path` into `model`, which must have every entry of the file, of
    the same shape, and find in it each of its own entries but those named in `optional`."""
    state = read_state_dict(path)
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and k not in set(optional)]
    shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    problem = None
    if unexpected:
        problem = f"unexpected entry {unexpected[0]!r} ({len(unexpected)} in all)"
    elif missing:
        problem = f"missing entry {missing[0]!r} ({len(missing)} in all)"
    elif shape:
        k = shape[0]
        problem = f"{k!r} has shape {list(state[k].shape)}, the model {list(own[k].shape)}"
    if problem:
        raise ValueError(f"model weights {path}: not a state dict of this model: {problem}")
    model.load_state_dict(state, strict=False)
    return model


def float_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict `model.weights=` reads back into this model (on the CPU): the network's
    (or the submodule's its builder names in WEIGHTS_MODULE) without the quantizers' entries,
    which a float network has no use for and which the builders take as optional."""
    root = model.get_submodule(getattr(model, WEIGHTS_MODULE, ""))
    skipped = {f"{name}." for name, _ in quantizers(root)}
    return {
        k: v.detach().cpu().contiguous()
        for k, v in root.state_dict().items()
        if not any(k.startswith(prefix) for prefix in skipped)
    }
