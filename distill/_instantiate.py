"""Build components named by dotted path, torchtune style.

A config node `{"_component_": "losses.DDAT", "temperature": 2.0}` becomes
`losses.DDAT(temperature=2.0)`. Nested nodes are built first. There is no string
registry: the dotted path is the name, so grep finds the class.

A config is therefore code: `_component_: os.system` would run. To load configs you did
not write, set an allow-list of importable prefixes, either in the environment

    DISTILL_ALLOWED_COMPONENTS="distill.,losses.,teachers.,students.,torch."

or as `instantiate(node, allowed_prefixes=[...])` (the argument wins). `instantiate`
checks every path in the node before it imports any. Unset or empty, all are allowed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from distill.errors import DistillError

COMPONENT_KEY = "_component_"
ALLOW_ENV = "DISTILL_ALLOWED_COMPONENTS"


class ConfigError(DistillError, ValueError):
    """A configuration names something that does not exist or does not fit."""


def allowed_prefixes_from_env() -> tuple[str, ...] | None:
    """The comma-separated prefixes in `DISTILL_ALLOWED_COMPONENTS`; None when unset or empty."""
    found = tuple(p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip())
    return found or None


def is_allowed(path: str, prefixes: Sequence[str]) -> bool:
    """`torch.` and `torch` both allow `torch.optim.AdamW`, neither allows `torchvision.x`."""
    path = path.replace(":", ".")
    for prefix in prefixes:
        prefix = prefix.replace(":", ".")
        if prefix.endswith(".") and path.startswith(prefix):
            return True
        if path == prefix or path.startswith(prefix + "."):
            return True
    return False


def locate(
    path: str, *, allowed_prefixes: Sequence[str] | None = None, config_key: str = ""
) -> Any:
    """Import `pkg.module.Attr` (or `pkg.module:Attr`) and return the attribute.

    Args:
        allowed_prefixes: refuse paths outside these; None reads `DISTILL_ALLOWED_COMPONENTS`.
        config_key: where the path sits in the config, for the messages.
    """
    if allowed_prefixes is None:
        allowed_prefixes = allowed_prefixes_from_env()
    check_allowed(path, allowed_prefixes, config_key)
    return _import(path, config_key)


def check_allowed(path: Any, prefixes: Sequence[str] | None, config_key: str = "") -> None:
    """Raise `ConfigError` unless `path` is a dotted path under `prefixes` (None: any)."""
    at = f" at config key {config_key!r}" if config_key else ""
    if isinstance(prefixes, str):  # one string: "distill.,losses." or a single prefix
        prefixes = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{COMPONENT_KEY}{at} must be a dotted path string, got {path!r}")
    if prefixes is not None and not is_allowed(path, prefixes):
        raise ConfigError(
            f"{COMPONENT_KEY} {path!r}{at} is not under an allowed prefix "
            f"({', '.join(prefixes) or 'none'}); extend {ALLOW_ENV} or allowed_prefixes to permit it"
        )


def _import(path: str, config_key: str) -> Any:
    at = f" (config key {config_key!r})" if config_key else ""
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
            raise ConfigError(f"cannot locate {path!r}{at}: {err}") from None
        return obj
    raise ConfigError(f"cannot locate {path!r}{at}: no importable module prefix")


def instantiate(
    node: Any,
    *args: Any,
    allowed_prefixes: Sequence[str] | None = None,
    config_key: str = "",
    **overrides: Any,
) -> Any:
    """Recursively build `_component_` nodes; other values pass through unchanged.

    Args:
        node: a config value; mappings with `_component_` are built, nested ones first.
        *args, **overrides: extra arguments for the top node's target.
        allowed_prefixes: importable prefixes (see the module docstring); None reads
            `DISTILL_ALLOWED_COMPONENTS`, and when that is unset everything is allowed.
        config_key: the node's key in the whole config ("loss"), named in errors.
    """
    if allowed_prefixes is None:
        allowed_prefixes = allowed_prefixes_from_env()
    if allowed_prefixes is not None:  # check the whole tree before importing any of it
        _check_tree(node, config_key, allowed_prefixes)
    return _build(node, args, overrides, config_key, allowed_prefixes)


def _check_tree(node: Any, key: str, allowed: Sequence[str]) -> None:
    if isinstance(node, Mapping):
        if COMPONENT_KEY in node:
            check_allowed(node[COMPONENT_KEY], allowed, _join(key, COMPONENT_KEY))
        for k, v in node.items():
            _check_tree(v, _join(key, k), allowed)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_tree(v, f"{key}[{i}]", allowed)


def _build(node: Any, args: tuple, overrides: dict, key: str, allowed: Sequence[str] | None):
    if isinstance(node, Mapping):
        if COMPONENT_KEY in node:
            path = node[COMPONENT_KEY]
            where = _join(key, COMPONENT_KEY)
            check_allowed(path, allowed, where)
            target = _import(path, where)
            kwargs = {
                k: _build(v, (), {}, _join(key, k), allowed)
                for k, v in node.items()
                if k != COMPONENT_KEY
            }
            kwargs.update(overrides)
            try:
                return target(*args, **kwargs)
            except TypeError as err:
                raise ConfigError(f"cannot build {path}: {err}") from err
        return {k: _build(v, (), {}, _join(key, k), allowed) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_build(v, (), {}, f"{key}[{i}]", allowed) for i, v in enumerate(node))
    return node


def _join(key: str, child: Any) -> str:
    return f"{key}.{child}" if key else str(child)
