"""history.json: the search's selectors at the start and after every epoch, one entry each
(`epoch`: the epochs trained, `mu`, `sharpness`, `expected_bits`, `discrete_bits`, `val_acc`,
`probs_w` and `probs_a`: per searched layer, the probability of each candidate)."""

import json
from pathlib import Path

from edmips.records.files import write_text_atomic


def save(history: list[dict], path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(history) + "\n")


def load(path: str | Path) -> list[dict]:
    """The entries of a history file, each checked to be an object with an integer epoch."""
    try:
        history = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON history ({e})") from None
    if not isinstance(history, list):
        raise ValueError(f"{path}: expected a JSON list of epochs")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
            raise ValueError(f"{path}: entry {i} is not an epoch (an object with an integer epoch)")
    return history
