"""Checks of option values as Python, YAML and the command line give them, shared by every module.

``bool`` is an ``int`` to Python and NumPy numbers are not Python's: these say what a user means
by "a number" and "a whole number", and :func:`pick` looks a name up in a registry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TypeVar

import numpy as np

from rvseg.errors import ConfigError

T = TypeVar("T")


def is_real_number(value: object) -> bool:
    """A real number, Python's or NumPy's, but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_finite_number(value: object) -> bool:
    """A real number (:func:`is_real_number`) that is neither infinite nor NaN."""
    return is_real_number(value) and math.isfinite(value)


def is_whole_number(value: object) -> bool:
    """An integer, Python's or NumPy's, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def finite_or_none(value: object) -> float | None:
    """``value`` (a number, or text as a CSV cell holds it) as a finite float; None if it is not one."""
    try:
        number = float(value if value is not None else "")
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pick(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or a :class:`ConfigError` listing the names there are."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]
