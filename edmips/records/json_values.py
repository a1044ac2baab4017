"""What the readers of the run's JSON files check a value is: an integer that is no bool, a
finite number, a list of positive integers; where a document holds a non-finite number; and
the kind of every field a file may hold (`check_fields`), so that a reader refuses a wrong
value in one line naming the field instead of passing it on."""

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass


def int_list(x) -> bool:
    return isinstance(x, list) and bool(x) and all(is_int(v) and v > 0 for v in x)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_probabilities(x) -> bool:
    return isinstance(x, list) and all(is_number(p) and 0 <= p <= 1 for p in x)


def non_finite(x, where="") -> str | None:
    """The path of the first non-finite number inside x, or None."""
    if isinstance(x, float) and not math.isfinite(x):
        return repr(where or "value")
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for key, value in items:
        found = non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def reject_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


@dataclass(frozen=True)
class Kind:
    """What a field's value must be (null aside: every field may be null)."""

    ok: Callable[[object], bool]
    what: str


NUMBER = Kind(is_number, "a finite number")
NON_NEGATIVE = Kind(lambda x: is_number(x) and x >= 0, "a non-negative number")
POSITIVE = Kind(lambda x: is_number(x) and x > 0, "a positive number")
FRACTION = Kind(lambda x: is_number(x) and 0 <= x <= 1, "a fraction in [0, 1]")
INTEGER = Kind(is_int, "an integer")
COUNT = Kind(lambda x: is_int(x) and x >= 0, "a non-negative integer")
TEXT = Kind(lambda x: isinstance(x, str), "a string")
FLAG = Kind(lambda x: isinstance(x, bool), "true or false")
OBJECT = Kind(lambda x: isinstance(x, dict), "a JSON object")


def check_fields(d: dict, kinds: dict[str, Kind], fail: Callable[[str], None]) -> None:
    """Every field of `kinds` that `d` holds is null or of its kind; `fail(problem)` raises."""
    for key, kind in kinds.items():
        value = d.get(key)
        if value is not None and not kind.ok(value):
            fail(f"{key}={reprlib.repr(value)} is not {kind.what}")
