"""Preprocessing (installed as ``fpnunet.preprocessing``): normalisation, depth reduction, storage.

``preprocess_volume`` turns raw channels ``(B, D, A)`` into the network input
``(C, B, depth, A)`` (also used by inference); ``preprocess_dataset`` writes a dataset's
training cases into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/`` (see docs/layout.md).

Names are imported lazily (:data:`_LAZY`, :mod:`fpnunet.lazy`): importing the package costs nothing heavy.
"""
from __future__ import annotations

from fpnunet.lazy import lazy_exports

_LAZY = {
    "load_case_raw": "fpnunet.preprocessing.preprocess",
    "preprocess_volume": "fpnunet.preprocessing.preprocess",
    "preprocess_case": "fpnunet.preprocessing.storage",
    "preprocess_dataset": "fpnunet.preprocessing.storage",
}
"""Public name -> module, imported on first use (:mod:`fpnunet.lazy`)."""

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
