"""Argument checks shared by every configuration: each error names the setting and what it got."""

from __future__ import annotations

import operator


def check_int(name: str, value: object, minimum: int | None = 1) -> int:
    """``value`` as an int (numpy integers too, bools never), or a ValueError naming the setting."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: object, positive: bool = True) -> float:
    """``value`` as a finite float (> 0 if ``positive``, else >= 0), or a ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value == float("inf") or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return float(value)


def check_share(name: str, value: object) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming the setting."""
    value = check_float(name, value, positive=False)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value
