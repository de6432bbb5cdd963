"""Name -> object registries filled by a decorator (trainers, losses, optimizers, schedules,
augmentations), like :mod:`fpnunet.networks.registry` for networks.

::

    LOSSES = Registry("loss")

    @LOSSES.register("dice_ce")
    def dice_ce(num_outputs, params): ...

    LOSSES.get("dice_ce")       # an unknown name: one-line FPNError listing the registered ones

A registry may also know where its built-in entries live (``modules``: name -> the module that
registers it): such a module is imported when its name is first asked for, so that a run imports
the trainer it uses and not every other one. Plug-ins registered from elsewhere need no entry.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from fpnunet.errors import FPNError

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered objects of one kind (``kind`` names it in error messages)."""

    def __init__(self, kind: str, modules: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = dict(modules or {})
        """Built-in name -> the module that registers it, imported on first use."""

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``; a name taken by another object is an error."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items and name in self._modules:
            importlib.import_module(self._modules[name])  # its decorator registers it
            if name not in self._items:
                raise FPNError(f"{self._modules[name]} did not register the {self.kind} {name!r}")
        if name not in self._items:
            raise FPNError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._modules))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._modules
