"""Options from config mappings: a frozen dataclass spec built from a dict, unknown keys named."""

from __future__ import annotations

import dataclasses


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
