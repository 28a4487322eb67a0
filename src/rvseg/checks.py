"""Checks of option values as Python, YAML and the command line give them, shared by every module.

``bool`` is an ``int`` to Python and NumPy numbers are not Python's: these say what a user means
by "a number" and "a whole number", and :func:`pick` looks a name up in a registry.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

from rvseg.errors import ConfigError, DataError

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
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def as_path(value: object, name: str) -> Path:
    """A path given as text or a path-like object (a list, say, is refused by ``name``)."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise ConfigError(f"{name} must be one path (text or pathlib.Path), not {type(value).__name__} {value!r:.80}")


def check_exists(path: Path) -> None:
    """Refuse a path that names nothing, with the one message every command gives for it."""
    if not path.exists():
        raise DataError("no such file or folder", path)


def as_paths(value: object, name: str) -> list[Path]:
    """One path, or any non-empty collection of them (a list, a tuple, a glob's generator ...)."""
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        paths = [as_path(item, name) for item in value]
        if paths:
            return paths
    raise ConfigError(f"{name} must be a path or a non-empty list of paths, not {type(value).__name__} "
                      f"{value!r:.80}")


def check_type(value: object, expected: type, name: str, hint: str = "") -> None:
    """A :class:`ConfigError` naming ``name`` unless ``value`` is an ``expected``: a dict where a
    dataclass of options belongs would otherwise fail deep inside with an AttributeError."""
    if not isinstance(value, expected):
        raise ConfigError(f"{name} must be a {expected.__name__}{hint}, not {type(value).__name__} {value!r:.80}")


def check_choice(value: object, choices, name: str) -> None:
    """A :class:`ConfigError` ``NAME must be one of A, B, not 'x'`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")


def pick(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or a :class:`ConfigError` listing the names there are."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]
