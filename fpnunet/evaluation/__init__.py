"""Evaluation: Dice, IoU, HD95 (mm), lesion area (mm^2) per case and mean; ``fpn_evaluate``.

:mod:`fpnunet.evaluation.metrics` holds the per-mask metrics, :mod:`fpnunet.evaluation.evaluate`
pairs folders and writes nnU-Net-style ``summary.json`` plus a per-case CSV,
:mod:`fpnunet.evaluation.crossval` builds cross-validation summaries and
:mod:`fpnunet.evaluation.cli` is the ``fpn_evaluate`` command.

Names are imported lazily (:data:`_LAZY`, :mod:`fpnunet.lazy`): importing the package costs nothing heavy.
"""
from __future__ import annotations

from fpnunet.lazy import lazy_exports

_LAZY = {
    "evaluate_crossval": "fpnunet.evaluation.crossval",
    "find_model_folder": "fpnunet.evaluation.crossval",
    "gather_crossval_predictions": "fpnunet.evaluation.crossval",
    "evaluate_folders": "fpnunet.evaluation.evaluate",
    "pair_files": "fpnunet.evaluation.evaluate",
    "per_case_table": "fpnunet.evaluation.evaluate",
    "summarize": "fpnunet.evaluation.evaluate",
    "write_summary": "fpnunet.evaluation.evaluate",
    "METRIC_KEYS": "fpnunet.evaluation.metrics",
    "area_mm2": "fpnunet.evaluation.metrics",
    "case_metrics": "fpnunet.evaluation.metrics",
    "dice": "fpnunet.evaluation.metrics",
    "hd95": "fpnunet.evaluation.metrics",
    "iou": "fpnunet.evaluation.metrics",
}
"""Public name -> module, imported on first use (:mod:`fpnunet.lazy`)."""

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
