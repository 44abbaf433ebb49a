"""What a config field allows, declared once on the field (dataclass metadata) and checked by
one walk over the job (`check_fields`), by components built straight from a section
(`check_choice`), and named in every message by the field's key.

    mode: str = choice("stream", ("stream", "precompute", "cache"))
    lr: float = bounded(5e-6, above=0)
    actors: int = bounded(1, at_least=1)

Every float anywhere in a job must be finite, whether or not its field declares bounds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Optional

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A job config key has a bad value; the message names the key."""


def choice(default: Any, choices: Iterable[Any], **kwargs) -> Any:
    """A field whose value is one of `choices` (None also passes: an unset optional)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)}, **kwargs)


def bounded(default: Any = dataclasses.MISSING, *, above: Optional[float] = None,
            at_least: Optional[float] = None, at_most: Optional[float] = None,
            below: Optional[float] = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A number (or each number of a list or mapping) with bounds: `above` / `below`
    exclusive, `at_least` / `at_most` inclusive. None passes (an unset optional)."""
    meta = {k: v for k, v in (("above", above), ("at_least", at_least), ("at_most", at_most),
                              ("below", below)) if v is not None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(cls: type, name: str) -> tuple:
    """The allowed values the field `name` of dataclass `cls` declares."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


def check_choice(cls: type, name: str, value: Any, key: Optional[str] = None) -> None:
    """Raise ConfigError naming `key` (default: the field's name) unless `value` is allowed."""
    allowed = choices_of(cls, name)
    if value not in allowed:
        raise ConfigError(f"{key or name}: {value!r} is not one of "
                          f"{', '.join(map(str, allowed))}")


def check_fields(obj: Any, key: str = "") -> None:
    """Walk a config dataclass (and the dataclasses, lists and mappings inside it): every float
    is finite, every field with choices holds one of them, every bounded number is in range.
    A structured OmegaConf node is checked as the dataclass it stands for."""
    if not dataclasses.is_dataclass(obj):
        from omegaconf import OmegaConf

        obj = OmegaConf.to_object(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{key}.{f.name}" if key else f.name
        meta = f.metadata
        for item_key, item in _items(where, value):
            if "choices" in meta and item is not None and item not in meta["choices"]:
                raise ConfigError(f"{item_key}: {item!r} is not one of "
                                  f"{', '.join(map(str, meta['choices']))}")
            _check_number(item_key, item, meta)
            if dataclasses.is_dataclass(item):
                check_fields(item, item_key)


def _items(where: str, value: Any):
    """(key, value) of a value, of each list entry (`key[i]`) or mapping entry (`key.name`)."""
    if isinstance(value, (list, tuple)):
        return [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(f"{where}.{k}", v) for k, v in value.items()]
    return [(where, value)]


def _check_number(key: str, value: Any, meta: dict) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, (list, tuple, dict)):  # free-form nesting (e.g. train.deepspeed)
            for k, v in _items(key, value):
                _check_number(k, v, {})
        return
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if "above" in meta and not value > meta["above"]:
        raise ConfigError(f"{key}: must be > {meta['above']:g}, got {value!r}")
    if "at_least" in meta and not value >= meta["at_least"]:
        raise ConfigError(f"{key}: must be >= {meta['at_least']:g}, got {value!r}")
    if "at_most" in meta and not value <= meta["at_most"]:
        raise ConfigError(f"{key}: must be <= {meta['at_most']:g}, got {value!r}")
    if "below" in meta and not value < meta["below"]:
        raise ConfigError(f"{key}: must be < {meta['below']:g}, got {value!r}")
