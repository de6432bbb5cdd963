"""Evaluation: Dice, IoU, HD95 (mm), lesion area (mm^2) per case and mean; ``fpn_evaluate``.

:mod:`fpnunet.evaluation.metrics` holds the per-mask metrics, :mod:`fpnunet.evaluation.evaluate`
pairs folders and writes nnU-Net-style ``summary.json`` plus a per-case CSV,
:mod:`fpnunet.evaluation.crossval` builds cross-validation summaries and
:mod:`fpnunet.evaluation.cli` is the ``fpn_evaluate`` command.
"""
from fpnunet.evaluation.crossval import evaluate_crossval, find_model_folder, gather_crossval_predictions
from fpnunet.evaluation.evaluate import (
    evaluate_folders,
    pair_files,
    per_case_table,
    read_label_map,
    summarize,
    write_summary,
)
from fpnunet.evaluation.metrics import METRIC_KEYS, area_mm2, case_metrics, dice, hd95, iou

__all__ = [
    "METRIC_KEYS",
    "area_mm2",
    "case_metrics",
    "dice",
    "evaluate_crossval",
    "evaluate_folders",
    "find_model_folder",
    "gather_crossval_predictions",
    "hd95",
    "iou",
    "pair_files",
    "per_case_table",
    "read_label_map",
    "summarize",
    "write_summary",
]
