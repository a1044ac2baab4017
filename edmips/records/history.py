"""history.json: the search's selectors at the start and after every epoch, one entry each
(`epoch`: the epochs trained, `mu`, `sharpness`, `expected_bits`, `discrete_bits`, `val_acc`,
`probs_w` and `probs_a`: per searched layer, the probability of each candidate).

Every problem with a file is a ValueError whose message is one line naming the file, the entry
and the field."""

import json
from pathlib import Path

from edmips.records.arch import Arch
from edmips.records.files import write_text_atomic
from edmips.records.json_values import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NUMBER,
    check_fields,
    is_probabilities,
    reject_constant,
)

FIELDS = {
    "epoch": COUNT,
    "mu": NUMBER,  # a budget's price can fall below zero
    "sharpness": NON_NEGATIVE,
    "expected_bits": NON_NEGATIVE,
    "discrete_bits": NON_NEGATIVE,
    "val_acc": FRACTION,
}
SELECTORS = ("probs_w", "probs_a")
SUM_TOLERANCE = 1e-4  # a layer's probabilities, float32 softmax outputs, sum to 1 within it


def save(history: list[dict], path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(history) + "\n")


def load(path: str | Path, arch: Arch | None = None) -> list[dict]:
    """The entries of a history file, each an object with an integer epoch and fields of their
    kinds. With `arch` (the search's found.json), every entry must hold a probability for each
    candidate of each of its layers, summing to 1 per layer: a history of another search, or
    one whose numbers are not a selector's, is refused."""
    try:
        history = json.loads(Path(path).read_text(), parse_constant=reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON history ({e})") from None
    except ValueError as e:  # NaN or Infinity
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(history, list):
        raise ValueError(f"{path}: expected a JSON list of epochs")
    previous = None
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
            raise ValueError(f"{path}: entry {i} is not an epoch (an object with an integer epoch)")

        def fail(problem: str, i=i):
            raise ValueError(f"{path}: entry {i}: {problem}")

        check_fields(entry, FIELDS, fail)
        if previous is not None and entry["epoch"] <= previous:
            fail(f"epoch {entry['epoch']} after epoch {previous} (each epoch once, in order)")
        previous = entry["epoch"]
        if arch is not None:
            _check_selectors(entry, arch, fail)
    return history


def _check_selectors(entry: dict, arch: Arch, fail) -> None:
    widths = {
        "probs_w": [len(arch.space["wbits"])] * len(arch.layers),
        "probs_a": [len(space) for space in arch.activation_spaces()],
    }
    for key in SELECTORS:
        probs = entry.get(key)
        if not isinstance(probs, list) or not all(is_probabilities(p) for p in probs):
            fail(f"{key} is not a list of probabilities per layer")
        if len(probs) != len(arch.layers):
            fail(f"{key} has {len(probs)} layers, the search's found.json {len(arch.layers)}")
        for layer, p, width in zip(arch.layers, probs, widths[key]):
            if len(p) != width:
                fail(
                    f"{key} of layer {layer.name!r} has {len(p)} candidates, the search's "
                    f"found.json {width}"
                )
            if abs(sum(p) - 1) > SUM_TOLERANCE:
                fail(f"{key} of layer {layer.name!r} sums to {sum(p):.6g}, not 1")
