"""Preprocessing (installed as ``fpnunet.preprocessing``): normalisation, depth reduction, storage.

``preprocess_volume`` turns raw channels ``(B, D, A)`` into the network input
``(C, B, depth, A)`` (also used by inference); ``preprocess_dataset`` writes a dataset's
training cases into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/`` (see docs/layout.md).

Names are imported lazily (:data:`_LAZY`): importing the package costs nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_case_raw": "fpnunet.preprocessing.preprocess",
    "preprocess_volume": "fpnunet.preprocessing.preprocess",
    "preprocess_case": "fpnunet.preprocessing.storage",
    "preprocess_dataset": "fpnunet.preprocessing.storage",
}
"""Public name -> module: imported on first use, so that the command-line parsers of this package
stay light (``fpn_* --help`` never imports torch)."""

__all__ = [
    "load_case_raw",
    "preprocess_case",
    "preprocess_dataset",
    "preprocess_volume",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
