"""Coerce config values to the declared types of their dataclass fields.

PyYAML reads YAML 1.1. Under it `3e-4` (no dot) is the string "3e-4", and `no`/`off`
are False. A config field declared `float` must not hand a string to the optimizer.
Each value is converted to its field's type, or refused with a `ConfigError` that names
the field and the value:

    int       int; an integral float (1000.0); a numeric string ("1000", "1e3")
    float     int, float; a numeric string ("3e-4", "inf")
    bool      bool; "true"/"false", "yes"/"no", "on"/"off" (any case)
    str       str; int or float (`name: 2024`); a bool is refused, it was a bare yes/no
    X | None  None, "null"/"none"/"~" when X is not str; else as X
    tuple[X, ...], tuple[X, Y], list[X]   each element as X; a lone string is a 1-list
    dict[K, V]   a mapping, each value as V

Any other declared type (`Any`, a class, a bare `dict`) passes the value unchanged.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from distill._instantiate import ConfigError

_NONE = {"null", "none", "~"}
_BOOL = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class _Mismatch(Exception):
    """The value does not convert to the type (internal; `coerce` names the field)."""


def coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` as type `hint`, for the field called `name`.

    Raises:
        ConfigError: `{name} must be {type}, got {value!r} ({its type})`.
    """
    try:
        return _to(value, hint)
    except _Mismatch:
        why = ""
        if isinstance(value, bool) and accepts_str(hint):
            why = "; YAML reads a bare yes/no/on/off/true/false as a bool, quote it"
        raise ConfigError(
            f"{name} must be {type_name(hint)}, got {value!r} ({type(value).__name__}){why}"
        ) from None


def type_name(hint: Any) -> str:
    """`float`, `str | None`, `tuple[float, float]`: the type as it is written."""
    if isinstance(hint, type) and not get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _to(value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return _union(value, get_args(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL:
            return _BOOL[value.strip().lower()]
        raise _Mismatch
    if hint is int:
        return _int(value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if origin in (list, tuple):
        return _sequence(value, origin, get_args(hint))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        args = get_args(hint)
        return {k: _to(v, args[1]) for k, v in value.items()} if len(args) == 2 else value
    if hint is dict or hint is list or hint is tuple:
        if not isinstance(value, hint if hint is dict else (list, tuple)):
            raise _Mismatch
        return hint(value)
    return value


def _union(value: Any, args: tuple[Any, ...]) -> Any:
    options = [a for a in args if a is not type(None)]
    optional = len(options) < len(args)
    if value is None:
        if optional:
            return None
        raise _Mismatch
    if optional and isinstance(value, str) and value.strip().lower() in _NONE:
        if not any(accepts_str(a) for a in options):
            return None
    for option in options:  # a value already of one of the types keeps it
        if isinstance(option, type) and type(value) is option:
            return value
    for option in options:
        try:
            return _to(value, option)
        except _Mismatch:
            continue
    raise _Mismatch


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Mismatch


def _sequence(value: Any, origin: type, args: tuple[Any, ...]) -> Any:
    if isinstance(value, str) and origin is list:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if origin is list:
        return [_to(v, args[0]) for v in value] if args else list(value)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_to(v, args[0]) for v in value)
    if len(value) != len(args):
        raise _Mismatch
    return tuple(_to(v, a) for v, a in zip(value, args))


def accepts_str(hint: Any) -> bool:
    """Whether `hint` is `str` or a union holding it."""
    if hint is str:
        return True
    if get_origin(hint) is Union or get_origin(hint) is types.UnionType:
        return any(accepts_str(a) for a in get_args(hint))
    return False
