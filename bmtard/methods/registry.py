"""The one registry of the student's methods: ``distill.method`` -> how its method is built.

Each method's module (named in its row of ``bmtard.config.method_table``: ``MethodSpec.module``)
registers its ``from_config(build) -> Method`` with ``@register(name)``. ``builder(name)`` imports
that module alone (a stage runs, and is keyed by, only the code of its own method) and returns
what it registered; ``names()`` imports them all (the contract test is parametrized over it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bmtard.config import method_table
from bmtard.methods.contract import Build, Method

Builder = Callable[[Build], Method]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register the decorated ``from_config`` as the builder of method ``name`` (a name of the
    method table, registered once)."""
    method_table.method(name)  # a ValueError for a name the table does not know

    def record(build: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not build:
            raise ValueError(f"method {name!r} is registered twice")
        _BUILDERS[name] = build
        return build

    return record


def module_of(name: str) -> str:
    """The module that holds method ``name``."""
    return f"{__package__}.{method_table.method(name).module}"


def builder(name: str) -> Builder:
    """How method ``name`` is built, from its own module."""
    importlib.import_module(module_of(name))
    try:
        return _BUILDERS[name]
    except KeyError:
        raise LookupError(f"{module_of(name)} registers no method {name!r}") from None


def names() -> tuple[str, ...]:
    """Every registered method, in the table's order (each method's module imported)."""
    for name in method_table.NAMES:
        builder(name)
    return tuple(n for n in method_table.NAMES if n in _BUILDERS)
