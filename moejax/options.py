"""Options from config mappings: a frozen dataclass spec built from a dict, unknown keys named."""

from __future__ import annotations

import dataclasses
import math
import numbers


def check_known(cls, values, prefix: str) -> None:
    """Raises ValueError naming every key of `values` that is no field of dataclass `cls`.

    A key that `cls.renamed_options` (old name -> new name, where the spec has one) lists
    gets an error naming its new name.
    """
    known = {field.name for field in dataclasses.fields(cls)}
    renamed = getattr(cls, "renamed_options", {})
    for old in sorted(set(values) & set(renamed)):
        raise ValueError(f"{prefix}.{old} was renamed {prefix}.{renamed[old]}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(prefix + '.' + u for u in unknown)}; "
                         f"allowed: {', '.join(sorted(known))}")


def check_choice(name: str, value, allowed) -> None:
    """Raises `ValueError("{name}={value!r}; allowed: a, b, c")` unless `value` is in `allowed`
    (any collection; a mapping's keys are the choices)."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None, *,
              optional: bool = False) -> None:
    """Raises `ValueError("{name}={value!r}; allowed: an integer >= 1")` (or "in [a, b]")
    unless `value` is an integer (a bool is not) in [minimum, maximum]; `optional`: None is
    allowed too (", or None")."""
    if optional and value is None:
        return
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (is_int and value >= minimum and (maximum is None or value <= maximum)):
        allowed = (f"an integer >= {minimum}" if maximum is None
                   else f"an integer in [{minimum}, {maximum}]")
        raise ValueError(f"{name}={value!r}; allowed: {allowed}{', or None' if optional else ''}")


def check_range(name: str, value, low: float, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raises `ValueError("{name}={value!r}; allowed: a finite number > 0")` (or "in [a, b)")
    unless `value` is a finite real number (a bool is not) from `low` to `high`, each end
    excluded where `low_open` / `high_open`."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    inside = is_real and math.isfinite(value) and (
        (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
    if not inside:
        if high == math.inf:
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            allowed = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                       f"{')' if high_open else ']'}")
        raise ValueError(f"{name}={value!r}; allowed: {allowed}")


def spec_from_mapping(cls, mapping, prefix: str):
    """`cls(**mapping)` (None: the defaults) after `check_known`."""
    values = dict(mapping or {})
    check_known(cls, values, prefix)
    return cls(**values)


def flat_config(config) -> dict:
    """A nested mapping (ConfigDict or dict) as {dotted key: value}."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            out[key] = value
    return out
