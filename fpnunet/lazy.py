"""Lazy re-exports for package ``__init__``s: a public name's module is imported on its first use.

A package lists ``{public name: module}`` and takes its module-level ``__getattr__`` / ``__dir__``
from :func:`lazy_exports`, so that importing the package (and the command-line parsers next to it)
stays light: ``fpn_* --help`` never imports torch. This module imports nothing heavy itself.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``package`` (already in ``sys.modules``).

    ``__getattr__(name)`` imports ``names[name]``, caches the attribute in the package's namespace
    (so it is looked up once) and returns it; any other name raises ``AttributeError``.
    ``__dir__()`` lists the package's own names and the lazy ones.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(names))

    return __getattr__, __dir__
