"""What the readers of the run's JSON files check a value is: an integer that is no bool, a
finite number, a list of positive integers; where a document holds a non-finite number."""

import math


def int_list(x) -> bool:
    return isinstance(x, list) and bool(x) and all(is_int(v) and v > 0 for v in x)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
