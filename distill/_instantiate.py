"""Build components named by dotted path, torchtune style.

A config node `{"_component_": "losses.DDAT", "temperature": 2.0}` becomes
`losses.DDAT(temperature=2.0)`. Nested nodes are built first. There is no string
registry: the dotted path is the name, so grep finds the class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

COMPONENT_KEY = "_component_"


class ConfigError(ValueError):
    """A configuration names something that does not exist or does not fit."""


def locate(path: str) -> Any:
    """Import `pkg.module.Attr` (or `pkg.module:Attr`) and return the attribute."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{COMPONENT_KEY} must be a dotted path string, got {path!r}")
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
        return obj
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name) or err.name == module_name:
                continue
            raise
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError as err:
            raise ConfigError(f"cannot locate {path!r}: {err}") from None
        return obj
    raise ConfigError(f"cannot locate {path!r}: no importable module prefix")


def instantiate(node: Any, *args: Any, **overrides: Any) -> Any:
    """Recursively build `_component_` nodes; other values pass through unchanged."""
    if isinstance(node, Mapping):
        if COMPONENT_KEY in node:
            target = locate(node[COMPONENT_KEY])
            kwargs = {k: instantiate(v) for k, v in node.items() if k != COMPONENT_KEY}
            kwargs.update(overrides)
            try:
                return target(*args, **kwargs)
            except TypeError as err:
                raise ConfigError(f"cannot build {node[COMPONENT_KEY]}: {err}") from err
        return {k: instantiate(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(instantiate(v) for v in node)
    return node


def component_path(obj: Any) -> str:
    """The dotted path that `locate` maps back to `type(obj)` (or `obj` if a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
