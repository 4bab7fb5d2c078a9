"""Lazy public names of a package (PEP 562): a name loads its module on first use, so importing the package
stays cheap (``import fastprm`` and ``fastprm --help`` load no torch)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_attributes(
    package: str, sources: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    ``sources`` maps each lazy name to the module that defines it, relative to the package (``".prm"``).
    A name loaded once is kept in the package, so later lookups skip ``__getattr__``.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> object:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *sources})

    return __getattr__, __dir__
