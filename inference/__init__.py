"""Inference: sliding window over the en-face plane, batched flip TTA, fold ensemble, export.

::

    from fpnunet.inference import Predictor
    predictor = Predictor.from_model_folder(model_dir)        # every fold_* of a model folder
    probs = predictor.predict_preprocessed(volume)            # (C, B, depth, A) -> (K, B, A)
    probs, props = predictor.predict_raw([oct_bda])           # raw (B, D, A) channels -> (K, B, A)

Inference never imports :mod:`fpnunet.training`: a model folder is all it needs.
"""
from .export import (
    label_values,
    lesion_areas,
    probabilities_to_segmentation,
    write_probabilities,
    write_segmentation,
)
from .fast import fold_batchnorm, prepare_for_inference
from .predictor import CHECKPOINTS, Predictor, list_folds, load_checkpoint
from .sliding_window import gaussian_weights, network_divisors, predict_sliding_window, window_starts
from .windows import WindowPlan, plan_windows

__all__ = [
    "CHECKPOINTS",
    "Predictor",
    "WindowPlan",
    "fold_batchnorm",
    "plan_windows",
    "prepare_for_inference",
    "gaussian_weights",
    "label_values",
    "lesion_areas",
    "list_folds",
    "load_checkpoint",
    "network_divisors",
    "predict_sliding_window",
    "probabilities_to_segmentation",
    "window_starts",
    "write_probabilities",
    "write_segmentation",
]
