"""Checks of user-set values with one wording everywhere: `name=value must be ...`, naming what is allowed.

A leaf module: it imports nothing of lorarlhf, so every layer (model, data, training, methods) uses it.
`bool` is refused where a number is expected: True is an int to Python, never a step count to a user.
"""

from __future__ import annotations

import math
import numbers


def is_number(value) -> bool:
    """A finite real number that is not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def check_int(name: str, value, *, minimum: int | None = 1, hint: str = "") -> int:
    """`value` as an integer >= minimum (not a bool; any integer when minimum is None), else a ValueError."""
    integer = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    if not integer or (minimum is not None and value < minimum):
        allowed = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name}={value!r} must be {allowed}{hint}")
    return int(value)


def check_number(
    name: str, value, *, low: float | None = None, high: float | None = None, open_low=False, open_high=False, hint=""
) -> float:
    """`value` as a finite number within [low, high] (an end left out when None; open where asked)."""
    inside = is_number(value)
    if inside and low is not None:
        inside = value > low if open_low else value >= low
    if inside and high is not None:
        inside = value < high if open_high else value <= high
    if not inside:
        raise ValueError(f"{name}={value!r} must be {_interval(low, high, open_low, open_high)}{hint}")
    return float(value)


def check_optional_number(name: str, value, **bounds) -> float | None:
    """None, or a number as `check_number` accepts it."""
    if value is None:
        return None
    try:
        return check_number(name, value, **bounds)
    except ValueError as error:
        raise ValueError(f"{error} (or None)") from None


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def check_choice(name: str, value, choices: tuple) -> object:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")
    return value


def _interval(low, high, open_low: bool, open_high: bool) -> str:
    if low == 0 and open_low and high is None:
        return "a positive number"
    if high is None:
        return "a number" if low is None else f"{'>' if open_low else '>='} {low:g}"
    if low is None:
        return f"{'<' if open_high else '<='} {high:g}"
    return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
