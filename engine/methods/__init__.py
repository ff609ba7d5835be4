"""The method registry: ``get_method(name)`` returns the module implementing :class:`engine.methods.base.Method`.

Each method is one module whose top-level functions (``fit``, ``resolve_spec``, ``candidate_specs``, ``expand``)
and attributes (``name``, ``supports_fit``) are the protocol. Modules are imported on first use, so listing the
names costs no torch import.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from engine.methods.base import Method

_MODULES = {
    "tleg": "tleg",
    "layers": "layers",
    "pool": "pool",
    "wave": "wave",
    "weight-selection": "weight_selection",
    "random": "random",
}
METHOD_NAMES: tuple[str, ...] = tuple(_MODULES)


def get_method(name: str) -> Method:
    """The method called ``name``; ``KeyError`` naming the known ones otherwise."""
    if name not in _MODULES:
        raise KeyError(f"unknown method {name!r}; known: {list(METHOD_NAMES)}")
    return cast("Method", importlib.import_module(f"engine.methods.{_MODULES[name]}"))
